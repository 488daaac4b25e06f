"""Demo photo set, made offline from real photographs that ship inside installed packages.

Training set (`write_demo_images`): seeded random crops of the colour photos of `skimage.data`
(astronaut, coffee, chelsea, rocket, hubble_deep_field, immunohistochemistry, retina, the left view
of stereo_motorcycle; plus matplotlib's grace_hopper.jpg when matplotlib happens to be installed),
each crop rescaled to an ImageNet-like size (longer side 300–500 px), sometimes mirrored, saved as
JPEG in one class folder per source photo: `DIR/astronaut/0000.jpg`, … — the layout
`colorize-shards build` reads as classes. Same `count` and `seed` → byte-identical files.

Held-out set (`write_heldout_photos`, a separate folder so the build does not shard it): pictures
the training set never shows — the right view of stereo_motorcycle in colour (a ground truth for
comparing colourisations) and the true black-and-white photos camera, coins and moon, the kind of
picture the model exists for.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from configs.atomic import write_bytes_atomic
from shards.convert import encode_jpeg


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])

    return load


def _motorcycle(view: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[view])

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return np.asarray(Image.open(file).convert("RGB"))


def colour_sources() -> dict[str, Callable[[], np.ndarray]]:
    """Class name → loader of an H×W×3 uint8 sRGB photo, in class order."""
    sources = {
        name: _skimage(name)
        for name in ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
    }
    sources["stereo_motorcycle"] = _motorcycle(0)
    try:
        import matplotlib  # noqa: F401  (optional: only used when already installed)

        sources["grace_hopper"] = _grace_hopper
    except ImportError:
        pass
    return sources


@functools.cache
def _photo(name: str) -> Image.Image:
    return Image.fromarray(colour_sources()[name]())


def random_crop(
    photo: Image.Image,
    rng: np.random.Generator,
    long_side: tuple[int, int] = (300, 500),
    jitter: float = 0.0,
    grain: float = 0.0,
) -> Image.Image:
    """A random crop (25–100 % of the area, aspect 3:4–4:3) of an RGB `photo`, rescaled so its longer
    side is in `long_side`, mirrored half the time; `jitter` > 0 varies brightness and saturation by up
    to ±jitter (fraction); `grain` > 0 adds Gaussian sensor-like noise of that σ (0–255 levels), which
    upscaled crops lack (it brings JPEG sizes up to camera photos')."""
    width, height = photo.size
    area = rng.uniform(0.25, 1.0) * width * height
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    target = int(rng.integers(long_side[0], long_side[1] + 1))
    scale = target / max(crop_w, crop_h)
    crop = crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if jitter > 0:
        crop = ImageEnhance.Brightness(crop).enhance(1 + rng.uniform(-jitter, jitter))
        crop = ImageEnhance.Color(crop).enhance(1 + rng.uniform(-jitter, jitter))
    if grain > 0:
        noisy = np.asarray(crop, dtype=np.float32) + rng.normal(0.0, grain, (crop.height, crop.width, 1))
        crop = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    return crop


def _write_crop(job: tuple) -> Path:
    directory, name, number, seed, quality, long_side, jitter, grain = job
    # One generator per image, seeded by (seed, number): any image can be made alone, in any process.
    rng = np.random.default_rng([seed, number])
    path = directory / name / f"{number // len(colour_sources()):04d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, encode_jpeg(random_crop(_photo(name), rng, long_side, jitter, grain), quality))
    return path


def write_photo_crops(
    directory,
    count: int,
    seed: int = 0,
    quality: int = 90,
    long_side: tuple[int, int] = (300, 500),
    jitter: float = 0.0,
    grain: float = 0.0,
    workers: int = 1,
) -> list[Path]:
    """Write `count` random crops as `directory/<class>/<nnnn>.jpg`, classes taking turns; return paths.

    The files depend on `count`, `seed` and the look options only, not on `workers`."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    names = list(colour_sources())
    jobs = [(Path(directory), names[i % len(names)], i, seed, quality, long_side, jitter, grain) for i in range(count)]
    if workers <= 1:
        return [_write_crop(job) for job in jobs]
    with multiprocessing.Pool(workers) as pool:
        return pool.map(_write_crop, jobs, chunksize=8)


def write_demo_images(directory, count: int = 400, seed: int = 0, workers: int = 1) -> list[Path]:
    """The demo training photos (see module doc) in `directory`; returns the written paths."""
    return write_photo_crops(
        directory, count, seed=seed, quality=90, long_side=(300, 500), jitter=0.05, workers=workers
    )


def write_heldout_photos(directory) -> list[Path]:
    """Held-out photos in `directory`: `stereo_motorcycle_right.jpg` (colour) and the black-and-white
    `camera.png`, `coins.png`, `moon.png` (8-bit greyscale). Returns the written paths."""
    import skimage.data

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    colour = directory / "stereo_motorcycle_right.jpg"
    write_bytes_atomic(colour, encode_jpeg(Image.fromarray(_motorcycle(1)()), 95))
    paths.append(colour)
    for name in ("camera", "coins", "moon"):
        path = directory / f"{name}.png"
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buffer, "PNG")
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths
