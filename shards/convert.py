"""Inspect one source file and turn it into the bytes a shard stores: an upright RGB JPEG.

- A file that is already an RGB (YCbCr-coded) baseline or progressive JPEG, needs no EXIF rotation and
  no downsizing is kept byte-for-byte. It is still decoded, at 1/8 scale with PIL's `draft` mode:
  that runs the whole entropy-coded stream through libjpeg (so truncated or corrupt files fail
  here, not in training) while skipping most of the inverse DCT, and it yields the thumbnail the
  colourless check needs.
- Anything else that decodes (CMYK or greyscale JPEG, PNG/GIF/WebP/… even under a `.JPEG` name, RGBA,
  palette, 16-bit, EXIF-rotated, too large for `short_side`) is fully decoded, rotated upright, made
  8-bit sRGB (alpha composited over white) and re-encoded as a baseline JPEG at `quality`, without
  EXIF.
- Files that do not decode are reported with a reason, never raised: one bad file must not stop a
  build of a million.

Memory: a worker holds at most one decoded image at its file's own bit depth, plus its 8-bit RGB
copy. Everything is decided before any full-size conversion: a file in a greyscale mode is colourless
from its header alone (nothing decoded unless it is kept on request); an image of more than
`max_pixels` pixels is skipped from its header (reason "too large"), before decoding; the colourless
check of a decoded image looks at its 1/8-scale reduction. The 8-bit conversion (`pipeline.image_io.
flatten_rgb`, which works in float32) runs over strips of ~1 M pixels, so its float copies never
exceed a few tens of MB whatever the image's size (a 350 KB, 13,000² 16-bit grey PNG once cost 6.8 GB
converted whole).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from pipeline.image_io import flatten_rgb
from shards.archives import UnreadableMember
from shards.colourless import is_colourless
from shards.options import DEFAULT_MAX_PIXELS

KEPT, COLOURLESS, SKIPPED = "kept", "colourless", "skipped"
# PIL modes that cannot hold colour: such files are colourless without looking at their pixels.
GREYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# JPEG frame markers every decoder, nvJPEG included, handles: SOF0 baseline, SOF2 progressive (Huffman).
_PORTABLE_JPEG_FRAMES = (0xC0, 0xC2)
# The colourless check looks at images shrunk ~8×: JPEG decodes that directly (DCT scaling), and 8×8
# averaging washes out pixel noise that is not colour.
THUMBNAIL_FACTOR = 8
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")
# Pixels per strip of the 8-bit conversion: bounds flatten_rgb's float32 copies to tens of MB.
_STRIP_PIXELS = 1 << 20
# Modes whose pixel values are palette indices, which PIL's `reduce` would average as numbers.
_INDEXED_MODES = frozenset({"P", "PA"})


@dataclass(frozen=True)
class Inspection:
    """Outcome for one file. `status`: KEPT (`jpeg` holds the sample bytes), COLOURLESS (dropped,
    `jpeg` None) or SKIPPED (`reason` says why). `colourless` is also True for colourless images kept on
    request; `converted` is True when `jpeg` was re-encoded rather than copied from the source."""

    status: str
    jpeg: bytes | None = None
    reason: str | None = None
    colourless: bool = False
    converted: bool = False


def inspect_read(
    read: Callable[[], bytes],
    short_side: int | None,
    quality: int,
    keep_colourless: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Inspection:
    """Inspect the bytes `read()` returns (a file, an archive member); never raises for a bad file."""
    try:
        data = read()
    except OSError as error:
        return Inspection(SKIPPED, reason=f"unreadable: {error.strerror or error}")
    except UnreadableMember as error:
        return Inspection(SKIPPED, reason=str(error))
    if not data:
        return Inspection(SKIPPED, reason="empty file")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is not a reason to skip; a decompression-bomb error is.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return inspect_bytes(data, short_side, quality, keep_colourless, max_pixels)
    except Exception as error:  # noqa: BLE001 - any decoder failure means "this file is not a usable image"
        message = str(error).splitlines()[0] if str(error) else ""
        # PIL names the in-memory file by its address ("<_io.BytesIO object at 0x7f…>"): drop it, so
        # the reason (and the manifest holding it) is the same in every run.
        message = _OBJECT_REPR.sub("", message).rstrip()
        return Inspection(SKIPPED, reason=f"undecodable: {type(error).__name__}: {message}".rstrip(": "))


def inspect_bytes(
    data: bytes, short_side: int | None, quality: int, keep_colourless: bool, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Inspection:
    """Inspect an encoded image held in memory; raises whatever PIL raises for undecodable data."""
    image: Image.Image = Image.open(io.BytesIO(data))
    width, height = image.size
    greyscale_file = image.mode in GREYSCALE_MODES
    if greyscale_file and not keep_colourless:  # decided by the header: nothing to decode
        return Inspection(COLOURLESS, colourless=True)
    if width * height > max_pixels:
        return Inspection(
            SKIPPED,
            reason=f"too large: {width}×{height} = {width * height / 1e6:.1f} M pixels, more than the "
            f"{max_pixels / 1e6:g} M a worker decodes (--max-pixels)",
        )
    needs_resize = short_side is not None and min(width, height) > short_side
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)

    if (
        image.format == "JPEG"
        and image.mode == "RGB"
        and image.info.get("adobe_transform", 1) != 0  # 0 = components stored as RGB, not YCbCr
        and jpeg_frame_marker(data) in _PORTABLE_JPEG_FRAMES
        and orientation in (0, 1)
        and not needs_resize
    ):
        image.draft("RGB", (math.ceil(width / THUMBNAIL_FACTOR), math.ceil(height / THUMBNAIL_FACTOR)))
        image.load()
        colourless = is_colourless(np.asarray(image))
        if colourless and not keep_colourless:
            return Inspection(COLOURLESS, colourless=True)
        return Inspection(KEPT, jpeg=data, colourless=colourless)

    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
    if image.mode in _INDEXED_MODES:  # palette indices cannot be averaged: convert (in strips) first
        image = to_rgb8(image)
    colourless = greyscale_file or is_colourless(np.asarray(thumbnail(image)))
    if colourless and not keep_colourless:
        return Inspection(COLOURLESS, colourless=True)
    rgb = to_rgb8(image)  # the same image when it is RGB already
    del image  # the decoded original: only its 8-bit RGB copy is needed from here
    if needs_resize:
        assert short_side is not None  # needs_resize implies it
        rgb = downsize(rgb, short_side)
    return Inspection(KEPT, jpeg=encode_jpeg(rgb, quality), colourless=colourless, converted=True)


def jpeg_frame_marker(data: bytes) -> int | None:
    """The SOFn marker byte (0xC0 baseline, 0xC2 progressive, …) of JPEG `data`, None if not found."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            position += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # not DHT, JPG, DAC
            return marker
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any decoded PIL image → 8-bit "RGB" (`pipeline.image_io.flatten_rgb`: alpha over white, 16-bit
    grey scaled), converted in strips of ~1 M pixels so that no full-size float copy is made."""
    if image.mode == "RGB":
        return image
    if image.mode == "I":  # flatten_rgb scales 32-bit grey by its maximum: pick it for the whole image
        top = image.getextrema()[1]  # (min, max) for a one-band image
        image = image.convert("I;16" if isinstance(top, int | float) and top > 255 else "L")
    width, height = image.size
    rows = max(1, _STRIP_PIXELS // width)
    rgb = Image.new("RGB", image.size)
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        rgb.paste(Image.fromarray(flatten_rgb(strip, uint8=True), "RGB"), (0, top))
    return rgb


def thumbnail(image: Image.Image) -> Image.Image:
    """The ~1/8-scale 8-bit RGB image the colourless check looks at (never smaller than a few pixels a
    side), reduced from the decoded image (any mode but palette) before any conversion of it."""
    factor = max(1, min(THUMBNAIL_FACTOR, min(image.size) // 4))
    small = image.reduce(factor) if factor > 1 else image
    return small if small.mode == "RGB" else Image.fromarray(flatten_rgb(small, uint8=True), "RGB")


def downsize(rgb: Image.Image, short_side: int) -> Image.Image:
    """Shrink so the shorter side is `short_side` pixels, keeping the aspect ratio (Lanczos)."""
    width, height = rgb.size
    scale = short_side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_jpeg(rgb: Image.Image, quality: int) -> bytes:
    """Baseline JPEG bytes (4:2:0, no EXIF) of an "RGB" image; deterministic for equal input."""
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
