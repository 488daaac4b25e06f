"""The colourless criterion on real photos: grey files go, sepia, night shots and colour stay."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import skimage.data
from PIL import Image

from shards.colourless import CHROMA_THRESHOLD, chroma, is_colourless
from shards.convert import COLOURLESS, KEPT, inspect_bytes

from _shards_helpers import jpeg_bytes


def _status(data: bytes) -> str:
    return inspect_bytes(data, short_side=None, quality=95, keep_colourless=False).status


def _grey(rgb: np.ndarray) -> np.ndarray:
    return (skimage.color.rgb2gray(rgb) * 255).round().astype(np.uint8)


def test_chroma_matches_skimage_lab(colour_photos):
    rgb = colour_photos["astronaut"][::4, ::4]
    lab = skimage.color.rgb2lab(rgb)
    expected = np.hypot(lab[..., 1], lab[..., 2])
    np.testing.assert_allclose(chroma(rgb), expected, atol=2e-3)


@pytest.mark.parametrize("name", ["camera", "moon", "coins", "page"])
@pytest.mark.parametrize("quality", [50, 95])
def test_grey_photo_saved_as_rgb_jpeg_is_colourless(name, quality):
    grey = getattr(skimage.data, name)()
    assert _status(jpeg_bytes(np.dstack([grey] * 3), quality=quality)) == COLOURLESS


def test_true_greyscale_file_is_colourless(colour_photos):
    grey = Image.fromarray(_grey(colour_photos["chelsea"]), "L")
    assert _status(jpeg_bytes(grey)) == COLOURLESS


@pytest.mark.parametrize(
    "name", ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
)
def test_colour_photos_and_their_sepia_versions_stay(colour_photos, name):
    rgb = colour_photos[name]
    assert _status(jpeg_bytes(rgb)) == KEPT
    level = _grey(rgb).astype(np.float32)[..., None] / 255.0
    sepia = (level * np.array([255, 220, 170], np.float32)).astype(np.uint8)  # brown-toned monochrome
    assert _status(jpeg_bytes(sepia)) == KEPT


def test_dark_night_shot_with_a_few_coloured_lights_stays():
    rng = np.random.default_rng(0)
    night = rng.integers(0, 12, (375, 500, 1)).repeat(3, axis=2).astype(np.uint8)  # near-black grey sky
    yy, xx = np.mgrid[:375, :500]
    for (y, x), colour in zip(
        [(60, 80), (200, 300), (300, 420)], [(255, 180, 60), (255, 40, 40), (60, 200, 255)], strict=True
    ):
        night[(yy - y) ** 2 + (xx - x) ** 2 < 8**2] = colour  # three street lights, 0.3 % of the frame
    assert _status(jpeg_bytes(night)) == KEPT
    lit = night.copy()
    lit[:] = night.min(axis=2, keepdims=True)  # the same scene with the lights turned white
    assert _status(jpeg_bytes(lit)) == COLOURLESS


def test_a_single_coloured_speck_does_not_make_a_grey_image_colour():
    grey = np.dstack([_grey(skimage.data.astronaut())] * 3)
    grey[100:104, 100:104] = (255, 0, 0)  # one 4×4 speck: < 0.1 % of the 1/8-scale thumbnail
    assert _status(jpeg_bytes(grey, quality=95)) == COLOURLESS


def test_threshold_sits_between_faint_cast_and_real_colour():
    grey = skimage.data.camera().astype(np.float32)
    faint = np.clip(np.dstack([grey + 1.5, grey, grey - 1.5]), 0, 255).astype(np.uint8)  # scanner cast
    assert is_colourless(faint)
    tinted = np.clip(np.dstack([grey + 8, grey, grey - 8]), 0, 255).astype(np.uint8)
    assert not is_colourless(tinted)
    assert np.mean(chroma(tinted) >= CHROMA_THRESHOLD) > 0.5 and CHROMA_THRESHOLD == 4.0


@pytest.mark.parametrize("every", [16, 7], ids=["subsampled-pixels", "other-pixels"])
def test_exactly_a_tenth_of_a_percent_of_coloured_pixels_is_still_colourless(every):
    # 10,000 grey pixels allow 10 coloured ones (0.1 %); an 11th makes the image colour. Placed on
    # every 16th pixel the coloured ones are all in the quick first look; on every 7th, mostly not.
    grey = np.full((100 * 100, 3), 128, np.uint8)
    for coloured, expected in ((10, True), (11, False)):
        image = grey.copy()
        image[np.arange(coloured) * every] = (200, 60, 60)
        assert is_colourless(image.reshape(100, 100, 3)) is expected, (every, coloured)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)]
)
def test_chroma_takes_only_three_channel_uint8_images(image):
    with pytest.raises(ValueError, match="expected an H×W×3 uint8 image"):
        chroma(image)
