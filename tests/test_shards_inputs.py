"""The shard builder on every kind of input file: kept byte-exact, converted upright RGB, colourless, skipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shards.build import BuildOptions, build_shards
from shards.convert import jpeg_frame_marker
from shards.keys import sample_key

from _shards_helpers import crops, jpeg_bytes, png16_bytes, read_samples, write


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory, colour_photos):
    """A flat folder holding one file of every awkward kind; returns (root, {name: original RGB})."""
    root = tmp_path_factory.mktemp("mixed")
    rgb = crops(colour_photos["astronaut"], 1, seed=1)[0]  # 120×160×3
    coffee = crops(colour_photos["coffee"], 1, seed=2)[0]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    originals = {}

    write(root / "rgb_baseline.jpg", jpeg_bytes(rgb))
    write(root / "rgb_progressive.jpeg", jpeg_bytes(coffee, progressive=True))
    write(root / "cmyk.jpg", jpeg_bytes(Image.fromarray(coffee).convert("CMYK")))
    originals["cmyk.jpg"] = coffee
    write(root / "png_named.JPEG", _png(Image.fromarray(rgb)))
    originals["png_named.JPEG"] = rgb
    rgba = np.dstack([coffee, np.full(coffee.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # left quarter fully transparent → white after compositing
    write(root / "rgba.png", _png(Image.fromarray(rgba, "RGBA")))
    originals["rgba.png"] = np.where(np.arange(160)[None, :, None] < 40, 255, coffee).astype(np.uint8)
    write(root / "palette.gif", _gif(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)))
    originals["palette.gif"] = np.asarray(Image.open(root / "palette.gif").convert("RGB"))
    rgb16 = coffee.astype(np.uint16) * 257 + 100
    write(root / "rgb16.png", png16_bytes(rgb16))
    originals["rgb16.png"] = coffee
    write(root / "grey16.png", png16_bytes(grey.astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)  # what a camera held upright writes
    write(root / "rotated.jpg", jpeg_bytes(stored, quality=95, exif=exif.tobytes()))
    originals["rotated.jpg"] = rgb
    write(root / "grey_mode_L.jpg", jpeg_bytes(Image.fromarray(grey)))
    write(root / "grey_as_rgb.jpg", jpeg_bytes(np.dstack([grey] * 3), quality=50))
    whole = jpeg_bytes(rgb)
    write(root / "truncated.jpg", whole[: len(whole) // 2])
    write(root / "empty.jpg", b"")
    write(root / "notes.jpg", b"these are not pixels\n")
    write(root / "readme.txt", b"not an image, not a problem")
    write(root / "labels.csv", b"a,b\n1,2\n")
    return root, originals


def _gif(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed_build(mixed_source, tmp_path_factory):
    root, originals = mixed_source
    out = tmp_path_factory.mktemp("mixed-shards")
    manifest = build_shards(root, out, BuildOptions(val_fraction=0.0, workers=1), progress=False)
    return root, out, manifest, read_samples(out, manifest), originals


def test_every_kind_of_file_is_kept_converted_dropped_or_reported(mixed_build):
    root, _, manifest, samples, _ = mixed_build
    skipped = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {"truncated.jpg", "empty.jpg", "notes.jpg"}
    assert "truncated" in skipped["truncated.jpg"]
    assert skipped["empty.jpg"] == "empty file"
    assert skipped["notes.jpg"].startswith("undecodable: UnidentifiedImageError")
    assert manifest["colourless"] == ["grey16.png", "grey_as_rgb.jpg", "grey_mode_L.jpg"]
    kept = {
        "rgb_baseline.jpg",
        "rgb_progressive.jpeg",
        "cmyk.jpg",
        "png_named.JPEG",
        "rgba.png",
        "palette.gif",
        "rgb16.png",
        "rotated.jpg",
    }
    assert set(samples) == {sample_key(name) for name in kept}
    assert manifest["splits"] == {"train": 8, "val": 0}
    assert manifest["totals"] == {
        "images": 14,
        "kept": 8,
        "converted": 6,
        "colourless": 3,
        "skipped": 3,
        "bytes": manifest["shards"][0]["bytes"],
    }
    assert manifest["classes"] is None and all(set(s) == {"jpg"} for s in samples.values())  # flat: no cls


def test_rgb_baseline_and_progressive_jpegs_are_stored_byte_for_byte(mixed_build):
    root, _, _, samples, _ = mixed_build
    for name in ("rgb_baseline.jpg", "rgb_progressive.jpeg"):
        assert samples[sample_key(name)]["jpg"] == (root / name).read_bytes()


@pytest.mark.parametrize("name", ["cmyk.jpg", "png_named.JPEG", "rgba.png", "palette.gif", "rgb16.png", "rotated.jpg"])
def test_converted_files_become_upright_rgb_baseline_jpegs_with_the_same_picture(mixed_build, name):
    _, _, _, samples, originals = mixed_build
    data = samples[sample_key(name)]["jpg"]
    image = _decode(data)
    assert (image.format, image.mode) == ("JPEG", "RGB")
    assert jpeg_frame_marker(data) == 0xC0  # baseline
    assert image.getexif().get(0x0112) is None  # nothing left for a reader to rotate
    original = originals[name]
    assert image.size == (original.shape[1], original.shape[0])  # 160×120: the rotated one stands upright
    error = np.abs(np.asarray(image, np.float32) - original.astype(np.float32)).mean()
    assert error < 6.0, f"{name}: mean abs error {error:.1f} levels vs the original picture"


def test_keep_colourless_stores_them_as_three_channel_jpegs(mixed_source, tmp_path):
    root, _ = mixed_source
    manifest = build_shards(
        root, tmp_path, BuildOptions(val_fraction=0.0, workers=1, keep_colourless=True), progress=False
    )
    samples = read_samples(tmp_path, manifest)
    assert manifest["options"]["keep_colourless"] is True
    assert manifest["colourless"] == ["grey16.png", "grey_as_rgb.jpg", "grey_mode_L.jpg"]
    assert manifest["totals"]["kept"] == 11
    for name in manifest["colourless"]:
        image = _decode(samples[sample_key(name)]["jpg"])
        assert image.mode == "RGB"
    # An RGB-coded grey JPEG is already what readers need: its bytes are kept.
    assert samples[sample_key("grey_as_rgb.jpg")]["jpg"] == (root / "grey_as_rgb.jpg").read_bytes()


def test_short_side_downsizes_larger_images_only_keeping_aspect(tmp_path, colour_photos):
    src = tmp_path / "src"
    big, small = crops(colour_photos["rocket"], 2, seed=3, size=(400, 300))
    write(src / "big.jpg", jpeg_bytes(big))
    small_bytes = jpeg_bytes(np.asarray(Image.fromarray(small).resize((120, 90))))
    write(src / "small.jpg", small_bytes)
    manifest = build_shards(
        src, tmp_path / "out", BuildOptions(val_fraction=0.0, workers=1, short_side=150, quality=80), progress=False
    )
    samples = read_samples(tmp_path / "out", manifest)
    assert _decode(samples[sample_key("big.jpg")]["jpg"]).size == (200, 150)
    assert samples[sample_key("small.jpg")]["jpg"] == small_bytes
    assert manifest["totals"]["converted"] == 1


def test_a_folder_of_only_bad_files_finishes_with_everything_listed(tmp_path):
    src = tmp_path / "src"
    write(src / "a.jpg", b"")
    write(src / "b.png", b"\x89PNG\r\n\x1a\n broken")
    manifest = build_shards(src, tmp_path / "out", BuildOptions(workers=1), progress=False)
    assert manifest["shards"] == [] and manifest["splits"] == {"train": 0, "val": 0}
    assert [s["path"] for s in manifest["skipped"]] == ["a.jpg", "b.png"]
    assert not list((tmp_path / "out").glob("*.tar"))


def test_frame_marker_tells_baseline_from_progressive(colour_photos):
    rgb = crops(colour_photos["chelsea"], 1, seed=0)[0]
    assert jpeg_frame_marker(jpeg_bytes(rgb)) == 0xC0
    assert jpeg_frame_marker(jpeg_bytes(rgb, progressive=True)) == 0xC2
    assert jpeg_frame_marker(b"\xff\xd8\xff\xda") is None
