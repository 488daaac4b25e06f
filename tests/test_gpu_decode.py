"""Region-of-interest JPEG decode: DALI's random-crop decode against a full decode cut to the same window.

Training decodes only a random crop of each JPEG (`fn.decoders.image_random_crop`: on the GPU nvJPEG's
region-of-interest decode, with fancy chroma upsampling as `pipeline/dali_pipeline.py` asks). At the
crop's edges the 4:2:0 chroma must be interpolated from samples outside the window; CUDA 13.3's
release notes list a fix for exactly these boundaries under NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION,
and the GPU kit pins an nvJPEG with it. The window comes from `fn.random_crop_generator` with the
decoder's seed and settings (the same generator draws both), so the full decode can be cut to
exactly that window. The CPU decoder (libjpeg-turbo) runs here too: it shows the windows match.
"""

from __future__ import annotations

import numpy as np
import pytest

from shards.demo_images import write_photo_crops

PHOTOS = 8
SEED = 1234
AREA = [0.35, 1.0]  # configs/imagenet.yaml's crop_scale and crop_ratio
RATIO = [0.75, 1.3333333]


def decode_windows(files, device: str, hw_decoder_load: float | None):
    """(ROI-decoded crops, full decodes, anchors [y, x], window shapes [h, w]) of `files`, as numpy
    H×W×3 uint8 sRGB images, decoded on `device` ("cpu" or "mixed")."""
    from nvidia.dali import fn, pipeline_def, types

    options = {"hw_decoder_load": hw_decoder_load, "jpeg_fancy_upsampling": True} if device == "mixed" else {}

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=0 if device == "mixed" else None)
    def windows():
        jpegs, _ = fn.readers.file(files=[str(path) for path in files])
        anchor, shape = fn.random_crop_generator(
            fn.peek_image_shape(jpegs), random_area=AREA, random_aspect_ratio=RATIO, num_attempts=10, seed=SEED
        )
        crop = fn.decoders.image_random_crop(
            jpegs,
            device=device,
            output_type=types.RGB,
            random_area=AREA,
            random_aspect_ratio=RATIO,
            num_attempts=10,
            seed=SEED,
            **options,
        )
        full = fn.decoders.image(jpegs, device=device, output_type=types.RGB, **options)
        return crop, full, anchor, shape

    pipe = windows()
    pipe.build()
    outputs = pipe.run()
    host = [out.as_cpu() if hasattr(out, "as_cpu") else out for out in outputs]
    return [[np.array(batch[i]) for i in range(len(files))] for batch in host]


@pytest.mark.parametrize(
    ("device", "hw_decoder_load"),
    [
        ("cpu", None),
        pytest.param("mixed", 0.0, marks=pytest.mark.gpu, id="mixed-cuda-cores"),
        pytest.param("mixed", 0.65, marks=pytest.mark.gpu, id="mixed-training-share"),
        pytest.param("mixed", 1.0, marks=pytest.mark.gpu, id="mixed-hardware-decoder"),
    ],
)
def test_random_crop_decode_matches_the_full_decode_cut_to_its_window(tmp_path, device, hw_decoder_load):
    files = write_photo_crops(tmp_path, PHOTOS, seed=3, quality=90, long_side=(450, 500), jitter=0.1, grain=12)
    crops, fulls, anchors, shapes = decode_windows(files, device, hw_decoder_load)
    # Windows that start on an odd row and an odd column (mid chroma sample) and are smaller than
    # the image: the boundary the nvJPEG fix is about is exercised.
    assert any(int(a[0]) % 2 for a in anchors) and any(int(a[1]) % 2 for a in anchors), anchors
    assert any(tuple(s) != full.shape[:2] for s, full in zip(shapes, fulls, strict=True))
    for crop, full, anchor, shape, path in zip(crops, fulls, anchors, shapes, files, strict=True):
        (y, x), (h, w) = (int(v) for v in anchor), (int(v) for v in shape)
        assert crop.shape == (h, w, 3), f"{path.name}: the decoder's window {crop.shape} is not the generator's {h}×{w}"
        difference = np.abs(crop.astype(np.int16) - full[y : y + h, x : x + w].astype(np.int16))
        edges = np.concatenate([difference[0], difference[-1], difference[:, 0], difference[:, -1]])
        assert edges.max() <= 1, f"{path.name} window y={y} x={x} {h}×{w}: edge pixels differ by {edges.max()}"
        assert difference.max() <= 1, (
            f"{path.name} window y={y} x={x} {h}×{w}: inner pixels differ by {difference.max()}"
        )
