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

KEPT, COLOURLESS, SKIPPED = "kept", "colourless", "skipped"
# PIL modes that cannot hold colour: such files are colourless without looking at their pixels.
GREYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# JPEG frame markers every decoder, nvJPEG included, handles: SOF0 baseline, SOF2 progressive (Huffman).
_PORTABLE_JPEG_FRAMES = (0xC0, 0xC2)
# The colourless check looks at images shrunk ~8×: JPEG decodes that directly (DCT scaling), and 8×8
# averaging washes out pixel noise that is not colour.
THUMBNAIL_FACTOR = 8
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")


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


def inspect_read(read: Callable[[], bytes], short_side: int | None, quality: int, keep_colourless: bool) -> Inspection:
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
            return inspect_bytes(data, short_side, quality, keep_colourless)
    except Exception as error:  # noqa: BLE001 - any decoder failure means "this file is not a usable image"
        message = str(error).splitlines()[0] if str(error) else ""
        # PIL names the in-memory file by its address ("<_io.BytesIO object at 0x7f…>"): drop it, so
        # the reason (and the manifest holding it) is the same in every run.
        message = _OBJECT_REPR.sub("", message).rstrip()
        return Inspection(SKIPPED, reason=f"undecodable: {type(error).__name__}: {message}".rstrip(": "))


def inspect_bytes(data: bytes, short_side: int | None, quality: int, keep_colourless: bool) -> Inspection:
    """Inspect an encoded image held in memory; raises whatever PIL raises for undecodable data."""
    image: Image.Image = Image.open(io.BytesIO(data))
    width, height = image.size
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

    greyscale_file = image.mode in GREYSCALE_MODES
    image.load()
    image = ImageOps.exif_transpose(image)
    rgb = to_rgb8(image)
    colourless = greyscale_file or is_colourless(np.asarray(thumbnail(rgb)))
    if colourless and not keep_colourless:
        return Inspection(COLOURLESS, colourless=True)
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
    grey scaled)."""
    return image if image.mode == "RGB" else Image.fromarray(flatten_rgb(image, uint8=True), "RGB")


def thumbnail(rgb: Image.Image) -> Image.Image:
    """The ~1/8-scale image the colourless check looks at (never smaller than a few pixels a side)."""
    factor = max(1, min(THUMBNAIL_FACTOR, min(rgb.size) // 4))
    return rgb.reduce(factor) if factor > 1 else rgb


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
