"""`colorize`, the export format and seed import: full-resolution output that keeps the input's L*."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from launch.apps import colorize, import_seed
from models import Generator
from models.export import WeightsError, legacy_sidecar, load_generator, read_metadata, save_generator
from pipeline.image_io import read_image
from pipeline.inference import Colorizer, lab_to_rgb_in_gamut, model_shape
from pipeline.lab import lab_to_rgb, rgb_to_lab

from _colorize_helpers import chroma, console_script, lightness, make_weights, subprocess_env

# Output L* vs input L*: 8-bit rounding of the output moves L* by at most ~0.4 (steepest near black),
# and out-of-gamut colours are desaturated at constant L*, so 1 Lab unit bounds every pixel.
L_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights") / "generator.safetensors")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, colour_photos):
    """A folder of awkward inputs: name → expected upright (height, width)."""
    folder = tmp_path_factory.mktemp("inputs")
    chelsea = colour_photos["chelsea"]  # 300×451 landscape
    Image.fromarray(chelsea).save(folder / "landscape.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(np.rot90(colour_photos["coffee"]))).save(folder / "portrait.png")
    Image.fromarray(colour_photos["astronaut"][200:207, 200:205]).save(folder / "tiny.png")  # 7×5
    grey = np.asarray(Image.fromarray(colour_photos["rocket"]).convert("L"))
    Image.fromarray(grey).save(folder / "grey.png")
    rgba = np.dstack([colour_photos["astronaut"][:300, :200], np.full((300, 200), 255, np.uint8)])
    rgba[:, :50, 3] = 0  # a fully transparent left strip
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    grey16 = (np.linspace(0, 65535, 64 * 96).reshape(64, 96)).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored 451 wide, shown 451 tall
    Image.fromarray(chelsea).save(folder / "phone.jpg", exif=exif, quality=92)
    return folder, {
        "landscape": (300, 451),
        "portrait": (600, 400),
        "tiny": (7, 5),
        "grey": (427, 640),
        "cutout": (300, 200),
        "grey16": (64, 96),
        "phone": (451, 300),
    }


def test_model_shape_keeps_aspect_in_256_steps():
    assert model_shape(3000, 2000) == (512, 256)  # 341 px short side rounds to 256
    assert model_shape(2000, 3000) == (256, 512)
    assert model_shape(1000, 1000) == (512, 512)
    assert model_shape(7, 5) == (512, 256)  # tiny images are upsampled, at least 256 a side
    assert model_shape(3000, 4000, size=768) == (512, 768)
    assert model_shape(600, 1800, size=700) == (256, 768)  # size rounds to the nearest multiple


def test_out_of_gamut_colour_keeps_lightness():
    pixels = torch.tensor([[50.0, 120.0, 120.0], [90.0, -90.0, 80.0], [5.0, 30.0, -60.0]])  # (L*, a*, b*) rows
    lab = pixels.T.reshape(3, 1, 3)  # 3×H×W with H = 1, W = 3: every one far outside sRGB
    clipped = lab_to_rgb(lab, clip=True)
    assert (clipped != lab_to_rgb(lab, clip=False)).any(dim=0).all()
    assert (rgb_to_lab(clipped)[0] - lab[0]).abs().max() > 2  # what per-channel clipping does to L*
    rgb = lab_to_rgb_in_gamut(lab)
    back = rgb_to_lab(rgb)
    assert torch.allclose(back[0], lab[0], atol=0.01)
    # Desaturated only as far as needed: on the cube's surface, and still colourful.
    assert ((rgb < 1e-6) | (rgb > 1 - 1e-6)).any(dim=0).all()
    assert (back[1] ** 2 + back[2] ** 2).sqrt().min() > 5
    inside = torch.tensor([[60.0], [10.0], [-20.0]]).reshape(3, 1, 1)
    assert torch.equal(lab_to_rgb_in_gamut(inside), lab_to_rgb(inside))  # in-gamut colours untouched


@pytest.mark.slow
def test_colorize_folder_keeps_size_and_lightness(inputs, weights, tmp_path):
    folder, shapes = inputs
    out = tmp_path / "out"
    assert colorize.main([str(folder), "--weights", str(weights), "--out", str(out), "--device", "cpu"]) == 0
    for name, (height, width) in shapes.items():
        result = np.asarray(Image.open(out / f"{name}.png"))
        assert result.shape == (height, width, 3), name
        expected_l = lightness(read_image(next(folder.glob(f"{name}.*"))))
        assert np.abs(lightness(result) - expected_l).max() <= L_TOLERANCE, name
        if min(height, width) > 50:
            assert np.median(chroma(result)) > 10, f"{name}: the generator's colour cast is missing"
    # The EXIF-rotated phone photo is the landscape photo turned upright (clockwise).
    upright = np.rot90(np.asarray(Image.open(folder / "landscape.jpg")), k=-1)
    phone_l = lightness(np.asarray(Image.open(out / "phone.png")))
    assert np.abs(phone_l - lightness(np.ascontiguousarray(upright))).mean() < 1.5  # two JPEG encodes apart
    # Transparent pixels are composited on white: the cut-out's strip comes out at L* ≈ 100.
    cutout_l = lightness(np.asarray(Image.open(out / "cutout.png")))
    assert cutout_l[:, :50].min() > 99


@pytest.mark.slow
def test_huge_image_keeps_full_resolution(weights, colour_photos, tmp_path):
    big = np.asarray(Image.fromarray(colour_photos["astronaut"]).resize((3000, 2000), Image.BICUBIC))
    Image.fromarray(big).save(tmp_path / "big.png")
    assert colorize.main([str(tmp_path / "big.png"), "--weights", str(weights), "--out", str(tmp_path / "o")]) == 0
    result = np.asarray(Image.open(tmp_path / "o" / "big.png"))
    assert result.shape == (2000, 3000, 3)
    # Full-resolution L*: fine detail survives (a 512-px round trip would blur it away).
    assert np.abs(lightness(result) - lightness(big)).max() <= L_TOLERANCE


def test_bad_input_is_skipped_by_name_and_exit_is_1(inputs, weights, tmp_path, capsys):
    folder, _ = inputs
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    out = tmp_path / "out"
    code = colorize.main(
        [str(bad), str(folder / "tiny.png"), str(tmp_path / "nope.png"), "--weights", str(weights), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"skipped {bad}: cannot identify image file" in err
    assert "nope.png: no such file or folder" in err
    assert (out / "tiny.png").is_file() and not (out / "notes.png").exists()
    assert "Traceback" not in err


def test_two_runs_give_identical_bytes(inputs, weights, tmp_path):
    folder, _ = inputs
    for run in ("a", "b"):
        assert (
            colorize.main(
                [
                    str(folder / "landscape.jpg"),
                    str(folder / "portrait.png"),
                    "--weights",
                    str(weights),
                    "--out",
                    str(tmp_path / run),
                    "--batch-size",
                    "2",
                ]
            )
            == 0
        )
    for name in ("landscape.png", "portrait.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_batched_equals_one_at_a_time(weights, colour_photos):
    generator, _ = load_generator(weights)
    colorizer = Colorizer(generator, size=256)
    images = [colour_photos[n][:256, :256].astype(np.float32) / 255 for n in ("astronaut", "coffee", "rocket")]
    together = colorizer.colorize(images, batch_size=3)
    alone = [colorizer.colorize([im], batch_size=1)[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.rgb, b.rgb, atol=1e-5)  # eval mode: no batch statistics


def test_console_script_writes_jpeg_and_side_by_side(inputs, weights, tmp_path):
    folder, shapes = inputs
    target = tmp_path / "result.jpg"
    proc = subprocess.run(
        [
            console_script("colorize"),
            str(folder / "portrait.png"),
            "--weights",
            str(weights),
            "--out",
            str(target),
            "--side-by-side",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(target) as im:
        assert im.format == "JPEG" and im.size == (400, 600)
    with Image.open(tmp_path / "result_side_by_side.jpg") as im:
        assert im.size == (800, 600)
        pair = np.asarray(im)
    assert np.median(chroma(pair[:, :400])) < 3 < np.median(chroma(pair[:, 400:]))  # grey | colour


def test_usage_mistakes_are_one_line(inputs, weights, tmp_path, capsys):
    folder, _ = inputs
    assert colorize.main([str(folder), "--weights", str(weights), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "names one file" in capsys.readouterr().err
    assert colorize.main([str(folder / "tiny.png"), "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.safetensors'}: no such weights file"


# ---------------------------------------------------------------------------------------------------
# Export format and seed import.


def test_export_round_trip_with_metadata_in_the_header(tmp_path):
    torch.manual_seed(1)
    generator = Generator(features=8)
    generator.train()(torch.randn(2, 1, 256, 256))  # move the BatchNorm running stats off their init
    path = save_generator(
        tmp_path / "g.safetensors", generator, {"generator": "seed_unet", "features": 8}, {"step": 7, "phase": "gan"}
    )
    with safe_open(str(path), framework="pt") as handle:  # any safetensors reader sees it
        meta = json.loads(handle.metadata()["colorization"])
    assert meta == read_metadata(path)
    assert meta["format"] == "colorization-generator/1"
    assert meta["model"] == {"generator": "seed_unet", "features": 8}
    assert meta["input_multiple"] == 256 and meta["step"] == 7 and meta["phase"] == "gan"
    assert meta["normalisation"]["ab"] == "ab*/128"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"]  # no sidecar, no temp files
    loaded, loaded_meta = load_generator(path)
    assert not loaded.training and loaded_meta["step"] == 7
    for key, value in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key  # BN buffers included


def test_earlier_exports_metadata_file_is_still_read(tmp_path):
    """Exports of earlier versions kept the metadata in generator.json beside the weights."""
    save_file(Generator(features=4).state_dict(), str(tmp_path / "generator.safetensors"))
    sidecar = legacy_sidecar(tmp_path / "generator.safetensors")
    assert sidecar == tmp_path / "generator.json"
    sidecar.write_text(json.dumps({"format": "colorization-generator/1", "model": {"features": 4}, "step": 9}))
    generator, meta = load_generator(tmp_path / "generator.safetensors")
    assert meta["step"] == 9 and generator.initial_down[0].weight.shape[0] == 4
    sidecar.write_text("[1, 2]")
    with pytest.raises(WeightsError, match=r"generator\.json: metadata file must hold a JSON object"):
        load_generator(tmp_path / "generator.safetensors")


def test_safetensors_without_metadata_infers_features(tmp_path):
    generator = Generator(features=4)
    save_file(generator.state_dict(), str(tmp_path / "bare.safetensors"))
    loaded, meta = load_generator(tmp_path / "bare.safetensors")
    assert meta["model"]["features"] == 4
    assert loaded.initial_down[0].weight.shape[0] == 4


@pytest.mark.slow
def test_seed_checkpoint_loads_and_matches_safetensors(tmp_path):
    torch.manual_seed(2)
    generator = Generator(features=8).eval()
    torch.save(generator.state_dict(), tmp_path / "G_1_2000000_gan.pth")
    assert import_seed.main([str(tmp_path / "G_1_2000000_gan.pth"), str(tmp_path / "seed.safetensors")]) == 0
    from_pth, meta = load_generator(tmp_path / "G_1_2000000_gan.pth")
    from_st, st_meta = load_generator(tmp_path / "seed.safetensors")
    assert meta["source"] == "pytorch" and meta["model"]["features"] == 8
    assert st_meta["imported_from"] == "G_1_2000000_gan.pth"
    x = torch.rand(1, 1, 256, 512) * 2 - 1
    with torch.inference_mode():
        expected = generator(x)
        assert torch.equal(from_pth(x), expected)
        assert torch.equal(from_st(x), expected)
    # A {"state_dict": ...} wrapper and DDP's "module." prefixes are accepted too.
    torch.save({"state_dict": {f"module.{k}": v for k, v in generator.state_dict().items()}}, tmp_path / "wrapped.pth")
    assert torch.equal(load_generator(tmp_path / "wrapped.pth")[0](x), expected)


def test_bad_weights_give_one_clear_line(tmp_path, capsys):
    junk = tmp_path / "x.bin"
    junk.write_bytes(b"\x00junk" * 100)
    with pytest.raises(WeightsError, match=r"x\.bin: not a safetensors file or a PyTorch state_dict"):
        load_generator(junk)
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"missing 'initial_down\.0\.weight'"):
        load_generator(tmp_path / "other.pth")
    state = Generator(features=8).state_dict()
    state["up1.conv.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bent.pth")
    with pytest.raises(
        WeightsError,
        match=r"bent\.pth: does not fit generator 'seed_unet' with features=8 \(size mismatch for up1\.conv\.0\.weight",
    ) as bent:
        load_generator(tmp_path / "bent.pth")
    assert "\n" not in str(bent.value)
    del state["up1.conv.0.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(
        WeightsError, match=r"short\.pth: does not fit .* \(Missing key\(s\) in state_dict: \"up1\.conv\.0\.weight\""
    ):
        load_generator(tmp_path / "short.pth")
    assert import_seed.main([str(junk), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {junk}: ") and err.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.gpu
def test_cuda_colorizing_matches_cpu(weights, colour_photos):
    generator, _ = load_generator(weights)
    photo = colour_photos["chelsea"].astype(np.float32) / 255.0
    on_cpu = Colorizer(generator, "cpu", size=512).colorize([photo])[0].rgb
    generator, _ = load_generator(weights)
    on_cuda = Colorizer(generator, "cuda", size=512).colorize([photo])[0].rgb
    assert on_cuda.shape == photo.shape
    assert np.abs(on_cuda - on_cpu).max() < 2 / 255  # TF32/cuDNN kernels differ from CPU by rounding only
