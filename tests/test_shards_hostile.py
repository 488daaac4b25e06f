"""Shard builds from hostile sources: names that are not UTF-8, colliding keys, damaged tar headers,
link and special members, empty sources and FIFOs, images that would exhaust a worker's memory.

Each test drives the builder through real files, real archives (written with `tarfile`, read back by
GNU tar where it matters) and the real CLI; the fault of issue #21 it covers is named in its docstring.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shards.keys
from shards.build import BuildOptions, build_shards
from shards.errors import BuildError
from shards.keys import sample_key
from shards.scan import scan_source
from shards.verify import verify_shards

from _shards_helpers import crops, jpeg_bytes, png16_bytes, read_samples, shard_digests, tar_bytes, write

CLI = [sys.executable, "-m", "shards.cli"]
OPTIONS = dict(shard_samples=4, val_fraction=0.0, seed=1, workers=1)


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess, returncode: int = 2) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == returncode and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


@pytest.fixture(scope="module")
def photos(colour_photos) -> list[bytes]:
    """Eight small colour JPEGs (64×48)."""
    return [jpeg_bytes(c) for c in crops(colour_photos["coffee"], 8, seed=7, size=(64, 48))]


# Fault 4: names that are not UTF-8 --------------------------------------------------------------

LATIN1 = b"caf\xe9.jpg"  # "café.jpg" as ISO-8859-1 wrote it: not UTF-8
CLASS = b"cl\xe4ss"  # a class folder with such a name too
BROKEN = b"bro\xffken.jpg"


def _write_bytes_named(root: Path, relative: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


def test_names_that_are_not_utf8_build_from_folder_tar_and_zip_alike(photos, tmp_path):
    """#21 fault 4: a non-UTF-8 file name crashed the build (folder and archive) with a
    UnicodeEncodeError traceback. Now every such name gets a valid key, the manifest keeps the raw
    bytes losslessly, and folder, tar and zip give the same shards."""
    names = {
        b"plain/a.jpg": photos[0],
        b"plain/" + LATIN1: photos[1],
        CLASS + b"/" + LATIN1: photos[2],
        CLASS + b"/" + BROKEN: photos[3][:200],
        CLASS + b"/ok.jpg": photos[4],
    }
    folder = tmp_path / "folder"
    for relative, data in names.items():
        _write_bytes_named(folder, relative, data)
    tar_path = tmp_path / "names.tar"
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for relative, data in names.items():
            info = tarfile.TarInfo(os.fsdecode(relative))  # the raw bytes go into the header
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    zip_path = tmp_path / "names.zip"  # zip tools store such names as raw bytes, without the UTF-8 flag
    placeholders = {relative: (b"Q%dZ" % i).ljust(len(relative), b"Z") for i, relative in enumerate(names)}
    with zipfile.ZipFile(zip_path, "w") as archive:
        for relative, data in names.items():
            archive.writestr(placeholders[relative].decode("ascii"), data)
    raw = zip_path.read_bytes()
    for relative, placeholder in placeholders.items():
        assert raw.count(placeholder) == 2  # local header and central directory
        raw = raw.replace(placeholder, relative)
    zip_path.write_bytes(raw)

    builds = {}
    for kind, src in (("folder", folder), ("tar", tar_path), ("zip", zip_path)):
        result = _cli("build", str(src), str(tmp_path / kind), "--shard-samples", "4", "--workers", "2", "--quiet")
        assert result.returncode == 0, result.stderr
        assert "skipped cl\\xe4ss/bro\\xffken.jpg: undecodable" in result.stdout  # printable, no UnicodeEncodeError
        builds[kind] = json.loads((tmp_path / kind / "manifest.json").read_text())
        assert verify_shards(tmp_path / kind) == []
    assert shard_digests(tmp_path / "folder") == shard_digests(tmp_path / "tar") == shard_digests(tmp_path / "zip")
    manifest = builds["folder"]
    assert [os.fsencode(item["path"]) for item in manifest["skipped"]] == [CLASS + b"/" + BROKEN]  # lossless
    assert b"\\udcff" in (tmp_path / "folder" / "manifest.json").read_bytes()  # as a JSON escape
    assert [os.fsencode(name) for name in manifest["classes"]] == [CLASS, b"plain"]
    samples = read_samples(tmp_path / "folder", manifest)
    assert len(samples) == 4 and all(key.isascii() and "." not in key for key in samples)
    assert samples[sample_key(os.fsdecode(b"plain/" + LATIN1))]["jpg"] == photos[1]


# Fault 10: keys that collide ----------------------------------------------------------------------

# Under the old key (80 readable characters, then 8 hex digits of the path's SHA-1) these two paths
# got the same key: found by a birthday search over "p" * 80 + f"{i}.jpg" (~87,000 tries).
OLD_COLLISION = ("p" * 80 + "11580.jpg", "p" * 80 + "86168.jpg")


def test_paths_whose_old_keys_collided_keep_both_samples(photos, tmp_path):
    """#21 fault 10: keys were 80 readable characters and a 32-bit hash, unchecked; two paths sharing
    a long prefix could get one key and a sample silently disappeared (verify counted one fewer)."""
    import hashlib

    old = {path[:80] + "-" + hashlib.sha1(path.encode()).hexdigest()[:8] for path in OLD_COLLISION}
    assert len(old) == 1  # a real collision of the old scheme
    src = tmp_path / "src"
    for path, data in zip(OLD_COLLISION, photos, strict=False):
        write(src / path, data)
    manifest = build_shards(src, tmp_path / "out", BuildOptions(**OPTIONS), progress=False)
    samples = read_samples(tmp_path / "out", manifest)
    assert set(samples) == {sample_key(path) for path in OLD_COLLISION} and len(samples) == 2
    assert [samples[sample_key(path)]["jpg"] for path in OLD_COLLISION] == photos[:2]
    assert verify_shards(tmp_path / "out") == []
    assert all(len(key.rsplit("-", 1)[1]) == 16 for key in samples)  # 64 bits of SHA-256


def test_colliding_keys_are_widened_never_dropped(monkeypatch, tmp_path):
    """#21 fault 10: duplicates are detected while planning. With the hash cut to 8 bits (so that
    collisions are certain), colliding paths get 128-bit keys; if even those collide the build stops
    naming both paths."""
    src = tmp_path / "src"
    paths = [f"{'q' * 70}{i:03d}.jpg" for i in range(60)]  # same readable part; 60 paths in 256 hashes
    for path in paths:
        write(src / path, b"x")
    monkeypatch.setattr(shards.keys, "KEY_HASH_DIGITS", 2)
    keys = [image.key for image in scan_source(src).images]
    assert len(set(keys)) == 60
    widened = [key for key in keys if len(key.rsplit("-", 1)[1]) == 32]  # 128 bits of SHA-256
    assert 2 <= len(widened) < 60  # only the colliding ones
    assert all(len(key) == 93 for key in widened)  # 60 readable + "-" + 32: "<key>.jpg" fits a USTAR name
    monkeypatch.setattr(shards.keys, "WIDE_KEY_HASH_DIGITS", 2)
    with pytest.raises(BuildError, match=r"source files '.*\.jpg' and '.*\.jpg' get the same sample key"):
        scan_source(src)


# Fault 7: a damaged header in the middle of a tar ---------------------------------------------------


def _header_offsets(data: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: member.offset for member in tar}


def test_damaged_header_mid_tar_is_reported_and_listing_resynchronises(photos, tmp_path):
    """#21 fault 7: a bad header in the middle of an inner tar silently ended that listing, losing
    every image after it with no skipped entry. Now the header is reported with its byte offset and
    listing goes on at the next valid header, as GNU tar does."""
    names = [f"img_{i}.jpg" for i in range(6)]
    inner = bytearray(tar_bytes(dict(zip(names, photos, strict=False))))
    damaged_at = _header_offsets(bytes(inner))["img_2.jpg"]
    inner[damaged_at] ^= 0x20  # the name's first byte: the header checksum no longer matches
    plain = write(tmp_path / "plain.tar", bytes(inner))
    gnu = subprocess.run(["tar", "-tf", str(plain)], capture_output=True, text=True)
    assert "Skipping to next header" in gnu.stderr
    assert gnu.stdout.split() == [n for n in names if n != "img_2.jpg"]  # what GNU tar recovers

    nested = write(
        tmp_path / "nested.tar", tar_bytes({"a.tar": tar_bytes({"x.jpg": photos[6]}), "b.tar": bytes(inner)})
    )
    inner_start = _header_offsets(nested.read_bytes())["b.tar"] + 512
    for archive, prefix, where in ((plain, "", damaged_at), (nested, "b/", inner_start + damaged_at)):
        manifest = build_shards(archive, tmp_path / archive.stem, BuildOptions(**OPTIONS), progress=False)
        kept = set(read_samples(tmp_path / archive.stem, manifest))
        expected = {sample_key(prefix + n) for n in names if n != "img_2.jpg"}
        assert expected <= kept and len(kept) == len(expected) + (prefix != "")
        [problem] = manifest["skipped"]
        assert problem["path"] == ("plain.tar" if not prefix else "b.tar")
        assert problem["reason"].startswith(f"damaged tar header at byte {where} (after member 'img_1.jpg'): ")
        assert (
            f"skipped to the next valid header at byte {where + 512 + len(photos[2]) + 511 & ~511}" in problem["reason"]
        )


# Fault 8: link and special members -----------------------------------------------------------------


def _member(tar: tarfile.TarFile, name: str, kind=tarfile.REGTYPE, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mtime = kind, link, len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_link_members_build_as_their_extraction_does(photos, tmp_path):
    """#21 fault 8: symlink and hardlink members were dropped without a skipped entry, while the
    folder GNU tar extracts keeps them, so archive ≠ folder. Now links are followed inside the
    archive as `tar -x` would; links out of it, broken links, links to folders and FIFOs are
    skipped with a reason, and the archive gives its extracted folder's shards."""
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        _member(tar, "cls/b.jpg", data=photos[7])  # an older version, replaced below (tar -u does that)
        _member(tar, "cls/a.jpg", data=photos[0])
        _member(tar, "cls/b.jpg", data=photos[1])
        _member(tar, "cls/sym.jpg", tarfile.SYMTYPE, link="a.jpg")
        _member(tar, "cls/hard.jpg", tarfile.LNKTYPE, link="cls/b.jpg")
        _member(tar, "cls/chain.jpg", tarfile.SYMTYPE, link="sym.jpg")
        _member(tar, "cls/up.jpg", tarfile.SYMTYPE, link="../top.jpg")
        _member(tar, "top.jpg", data=photos[2])
        _member(tar, "cls/out.jpg", tarfile.SYMTYPE, link="../../nowhere.jpg")
        _member(tar, "cls/broken.jpg", tarfile.SYMTYPE, link="missing.jpg")
        _member(tar, "more/dir_link", tarfile.SYMTYPE, link="../cls")
        _member(tar, "cls/fifo.jpg", tarfile.FIFOTYPE)
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(extracted)], check=True)
    assert (extracted / "cls" / "fifo.jpg").is_fifo() and (extracted / "cls" / "sym.jpg").is_symlink()

    from_tar = build_shards(archive, tmp_path / "from_tar", BuildOptions(**OPTIONS), progress=False)
    from_folder = build_shards(extracted, tmp_path / "from_folder", BuildOptions(**OPTIONS), progress=False)
    assert shard_digests(tmp_path / "from_tar") == shard_digests(tmp_path / "from_folder")
    samples = read_samples(tmp_path / "from_tar", from_tar)
    for link, target in (("sym", 0), ("hard", 1), ("chain", 0), ("up", 2), ("b", 1)):
        assert samples[sample_key(f"cls/{link}.jpg")]["jpg"] == photos[target], link
    tar_reasons = {item["path"]: item["reason"] for item in from_tar["skipped"]}
    assert tar_reasons == {
        "cls/out.jpg": "link to a path outside the archive: not followed",
        "cls/broken.jpg": "broken symbolic link: nothing at its target in the archive",
        "more/dir_link": "symbolic link to a folder: not followed",
        "cls/fifo.jpg": "not a regular file (FIFO)",
        "cls/b.jpg": "replaced by a later member of the same path",
    }
    folder_reasons = {item["path"]: item["reason"] for item in from_folder["skipped"]}
    assert set(folder_reasons) == set(tar_reasons) - {"cls/b.jpg"}  # nowhere.jpg is outside: broken once extracted
    assert folder_reasons["cls/fifo.jpg"] == tar_reasons["cls/fifo.jpg"]

    zipped = tmp_path / "links.zip"  # a zip made on Unix stores a symlink as its target path
    with zipfile.ZipFile(zipped, "w") as archive_zip:
        archive_zip.writestr("cls/a.jpg", photos[0])
        link = zipfile.ZipInfo("cls/sym.jpg")
        link.create_system, link.external_attr = 3, (0o120777 << 16)
        archive_zip.writestr(link, "a.jpg")
    zip_manifest = build_shards(zipped, tmp_path / "from_zip", BuildOptions(**OPTIONS), progress=False)
    zip_samples = read_samples(tmp_path / "from_zip", zip_manifest)
    assert zip_samples[sample_key("cls/sym.jpg")]["jpg"] == photos[0] and len(zip_samples) == 2


# Fault 9: empty sources and files that are not regular ------------------------------------------------


def test_empty_and_image_free_sources_fifos_and_devices_are_one_line_errors(photos, tmp_path):
    """#21 fault 9: an empty folder, a folder of text files, a zero-member tar or zip exited 0 with
    0 shards (and verify passed); a FIFO named x.tar hung. Now each is one error line and exit 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "text"
    write(text / "notes.txt", b"no pixels")
    write(text / "a" / "readme.md", b"none here either")
    zero_tar = write(tmp_path / "zero.tar", tar_bytes({}))
    zero_zip = tmp_path / "zero.zip"
    zipfile.ZipFile(zero_zip, "w").close()
    fifo = tmp_path / "x.tar"
    os.mkfifo(fifo)
    out = str(tmp_path / "out")
    for src, says in (
        (empty, "holds no image files: it is empty"),
        (text, "holds no image files: 2 file(s), none with an image extension (.jpg"),
        (zero_tar, "holds no image files: it is empty"),
        (zero_zip, "holds no image files: it is empty"),
        (fifo, "is a FIFO, not a folder or an archive file"),
        (Path("/dev/null"), "is a character device, not a folder or an archive file"),
    ):
        line = _one_error_line(_cli("build", str(src), out, "--quiet", timeout=30))
        assert says in line, (src, line)
    assert not Path(out).exists()


def test_a_fifo_named_like_an_image_is_skipped_and_an_all_bad_build_fails(photos, tmp_path):
    """#21 fault 9: a FIFO inside a source folder is listed as skipped (reading it would hang a
    worker); a build that keeps no image at all ends with an error line, exit 1, and verify fails."""
    src = tmp_path / "src"
    write(src / "good.jpg", photos[0])
    os.mkfifo(src / "pipe.jpg")
    result = _cli("build", str(src), str(tmp_path / "out"), "--workers", "2", "--quiet", timeout=30)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped"] == [{"path": "pipe.jpg", "reason": "not a regular file (FIFO)"}]
    assert manifest["totals"]["kept"] == 1

    bad = tmp_path / "bad"
    write(bad / "a.jpg", b"")
    write(bad / "b.jpg", photos[1][:100])
    line = _one_error_line(_cli("build", str(bad), str(tmp_path / "bad_out"), "--quiet"), returncode=1)
    assert "no image of the source was kept (2 skipped, 0 colourless)" in line
    verify = _cli("verify", str(tmp_path / "bad_out"))
    assert verify.returncode == 1 and "lists no shards" in verify.stderr


# Fault 2: memory -----------------------------------------------------------------------------------


# Runs the build from a small Python process: a child forked from pytest itself would count pytest's
# own pages in its peak RSS (Linux carries the high-water mark across exec).
_PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _build_peak_rss_mb(src: Path, out: Path) -> float:
    """Peak RSS (MB) of a one-process CLI build of `src` (what `/usr/bin/time -v` reports)."""
    command = [*CLI, "build", str(src), str(out), "--workers", "1", "--quiet"]
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


@pytest.mark.slow
def test_huge_grey_and_palette_images_cost_a_worker_no_full_size_conversion(photos, tmp_path):
    """#21 fault 2: a 350 KB, 13,000² 16-bit grey PNG cost 6.8 GB RSS, converted to float32 RGB before
    the colourless test dropped it. Now a greyscale file is colourless from its header, and an image
    above the pixel cap is skipped from its header: neither is converted, so the build's peak RSS is
    that of a build of one small JPEG, give or take a few tens of MB."""
    small = tmp_path / "small"
    write(small / "colour.jpg", photos[0])
    baseline = _build_peak_rss_mb(small, tmp_path / "small_out")

    huge = tmp_path / "huge"
    write(huge / "colour.jpg", photos[0])
    write(huge / "grey16.png", png16_bytes(np.zeros((8000, 8000), np.uint16) + 4000))  # 64 M pixels, ~0.2 MB
    palette = Image.new("P", (10_500, 10_000))  # 105 M pixels: above the 100 M cap
    palette.putpalette([0, 0, 0, 200, 30, 30] * 128)
    palette.save(huge / "palette.png")
    peak = _build_peak_rss_mb(huge, tmp_path / "huge_out")
    manifest = json.loads((tmp_path / "huge_out" / "manifest.json").read_text())
    assert manifest["colourless"] == ["grey16.png"]
    assert manifest["skipped"] == [
        {
            "path": "palette.png",
            "reason": "too large: 10500×10000 = 105.0 M pixels, more than the 100 M a worker decodes (--max-pixels)",
        }
    ]
    assert peak - baseline < 60, f"peak RSS {peak:.0f} MB vs {baseline:.0f} MB for one small JPEG"


def test_strip_conversion_equals_converting_the_whole_image(colour_photos, monkeypatch):
    """The 8-bit conversion runs in strips (#21 fault 2); its pixels equal `flatten_rgb` on the whole
    image for every mode it handles (alpha, palette with transparency, 16/32-bit and float grey, CMYK)."""
    from pipeline.image_io import flatten_rgb
    from shards import convert

    rgb = crops(colour_photos["astronaut"], 1, seed=3, size=(300, 200))[0]
    alpha = np.linspace(0, 255, 300 * 200).reshape(200, 300).astype(np.uint8)
    grey16 = (np.arange(300 * 200).reshape(200, 300) * 11 % 65536).astype(np.uint16)
    images = {
        "RGBA": Image.fromarray(np.dstack([rgb, alpha])),
        "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha])),
        "P": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "I;16": Image.fromarray(grey16),
        "I (16-bit range)": Image.fromarray(grey16.astype(np.int32) - 500),
        "I (8-bit range)": Image.fromarray((grey16 % 256).astype(np.int32)),
        "F": Image.fromarray(grey16.astype(np.float32) / 40000.0),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
    }
    images["P"].info["transparency"] = 3
    for name, image in images.items():
        for rows in (7, 200):  # 29 strips of 7 rows, and one strip
            monkeypatch.setattr(convert, "_STRIP_PIXELS", rows * 300)
            ours = np.asarray(convert.to_rgb8(image))
            np.testing.assert_array_equal(ours, flatten_rgb(image, uint8=True), err_msg=name)


def test_max_pixels_is_an_option_recorded_only_when_changed(photos, tmp_path):
    src = tmp_path / "src"
    write(src / "a.jpg", photos[0])
    write(src / "b.jpg", jpeg_bytes(np.full((90, 120, 3), (200, 40, 40), np.uint8)))
    manifest = build_shards(src, tmp_path / "o1", BuildOptions(**OPTIONS), progress=False)
    assert "max_pixels" not in manifest["options"] and manifest["totals"]["kept"] == 2
    capped = build_shards(src, tmp_path / "o2", BuildOptions(**OPTIONS, max_pixels=64 * 48), progress=False)
    assert capped["options"]["max_pixels"] == 3072
    assert [item["path"] for item in capped["skipped"]] == ["b.jpg"] and capped["totals"]["kept"] == 1
    shutil.rmtree(tmp_path / "o2")
