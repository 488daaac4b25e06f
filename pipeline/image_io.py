"""Reading user photos into float sRGB arrays and writing results, for the colorize tools.

`read_image` turns whatever a user hands us into one H×W×3 float32 sRGB array in [0, 1], upright:
    - EXIF orientation is applied (`PIL.ImageOps.exif_transpose`), so phone photos come out upright;
    - greyscale (1, L, I;16, …) is replicated to three equal channels;
    - transparency (RGBA, LA, P with a transparent colour) is composited on WHITE: a transparent
      background becomes white paper rather than black, which is what people expect of cut-outs;
    - 16-bit greyscale keeps its 16-bit precision. 16-bit colour PNGs are read by Pillow at 8 bits
      per channel (only their lightness is used, and it moves by less than 0.4 L* unit);
    - CMYK, YCbCr, palette and other modes go through Pillow's conversion to RGB.
Anything Pillow cannot decode raises `ImageReadError` with a one-line reason.

`write_image` stores an H×W×3 array atomically (temp name, then `os.replace`) as PNG or JPEG.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from configs.atomic import atomic_path

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
)
"""File endings (lower case) read as images, by `colorize` and by the shard builder's scan."""
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95

_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """An input that is not a decodable image; the message is one line, without the path."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the upright image, read from the header only (no pixel decode)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
    except UnidentifiedImageError:
        raise ImageReadError("cannot identify image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(_reason(exc)) from None
    # Orientations 5–8 turn the picture by 90°, swapping width and height.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" '", 1)[0] if "cannot identify image file" in text else text


def flatten_rgb(im: Image.Image, uint8: bool = False) -> np.ndarray:
    """Decoded upright PIL image (any mode) → H×W×3 sRGB: float32 in [0, 1], or uint8 (rounded to
    nearest) with `uint8`. Alpha is composited on white, greyscale replicated to three channels,
    16-bit greyscale read at full precision. The one flattener: `colorize` reads through it, and the
    shard builder re-encodes through it."""
    if im.mode in _SIXTEEN_BIT_GREY:
        grey = np.asarray(im, dtype=np.float32) / 65535.0
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif im.mode == "I":  # 32-bit integer greyscale: Pillow's mode for some 16-bit files
        raw = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if raw.max(initial=0) > 255 else 255.0
        grey = np.clip(raw / scale, 0.0, 1.0).astype(np.float32)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif im.mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[:, :, 3:4]
        rgb = rgba[:, :, :3] * alpha + (1.0 - alpha)
    elif uint8:
        return np.asarray(im.convert("RGB"))  # already 8-bit levels: no round trip through float
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return to_uint8(rgb) if uint8 else rgb


def read_image(path: str | Path) -> np.ndarray:
    """Decode `path` into an upright H×W×3 float32 sRGB array in [0, 1] (see the module docstring).

    Raises ImageReadError (e.g. "cannot identify image file") for anything that is not a readable image.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns about large images and odd EXIF; a real problem still raises below.
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                upright = ImageOps.exif_transpose(im)
                return np.ascontiguousarray(flatten_rgb(upright))
    except UnidentifiedImageError:
        raise ImageReadError("cannot identify image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(_reason(exc)) from None


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 float sRGB in [0, 1] → uint8, rounded to nearest."""
    return np.clip(np.rint(np.asarray(rgb, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write H×W×3 sRGB (float in [0, 1] or uint8) to `path`, format from its extension (.png, .jpg,
    .jpeg; JPEG at quality 95). Atomic: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: output must end in one of {', '.join(OUTPUT_FORMATS)}")
    pixels = rgb if rgb.dtype == np.uint8 else to_uint8(rgb)
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, "RGB").save(tmp, format=fmt, **options)
    return path
