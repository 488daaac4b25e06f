"""The DALI pipeline: webdataset shards → JPEG decode → crop → flip → (Lab on the GPU) batches.

One definition serves both devices. With a GPU (`device_id` set) JPEGs are decoded by nvJPEG
(`device="mixed"`, using the hardware decoder where the chip has one), every later op runs on the GPU
and RGB → CIELAB is computed inside the pipeline from DALI arithmetic with the constants of
`pipeline/colour_constants.py`, folded as in `pipeline/lab_uint8.py`; the output is `lab`, B×3×S×S float32
in network units (L_net, a_net, b_net). Without a GPU (`device_id=None`) every op runs on DALI's CPU
threads and stop after decode: the output `rgb` holds each image as decoded (H×W×3 uint8 sRGB, sizes
differ within a batch; `pipeline/dali_cpu_runner.py` hands them over), and `mirror` the coin flip
of each (training with flips only). The loader then resizes each image to S×S with torch's uint8
resampler (`pipeline/cpu_finish.py`), flips it when told, and does the Lab step in torch: DALI's
CPU resize, padding, flip and arithmetic cost more than those torch kernels (see BENCHMARKS.md), and
on 2 cores every fraction of a millisecond per image counts.

Crops: training with `crop="random_resized"` decodes only a random region of area fraction
`crop_scale` and aspect ratio `crop_ratio` (`decoders.image_random_crop`, the ROI decode skips the
rest of the JPEG) and resizes it to S×S; `crop="resize"` squashes the whole image to S×S (the seed);
evaluation with `random_resized` takes the centred square of side min(H, W) — rows
[(H − side) // 2, … + side), columns [(W − side) // 2, … + side), the window `pipeline/cpu_finish.py`
takes on the CPU — and resizes it to S×S (on the GPU in one `fn.resize` with that window as its ROI;
on the CPU path the resizing is the loader's, see above). On the GPU the flip and the HWC→CHW transpose are one
`crop_mirror_normalize`; on the CPU the loader flips. Either way the coin flips are DALI's, so its
checkpoints cover them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nvidia.dali.math as dmath
from nvidia.dali import fn, pipeline_def, types

from pipeline.colour_constants import EPSILON, F_OFFSET, KAPPA_SLOPE, SRGB_LINEAR_THRESHOLD
from pipeline.lab_uint8 import lab_matrix, xyz_matrix

READER_NAME = "Reader"
READ_AHEAD_REMOTE = 8


def _lab_on_device(rgb_hwc_float):
    """HWC float sRGB in [0, 1] → HWC float (L_net, a_net, b_net), as DALI arithmetic (GPU path)."""
    v = rgb_hwc_float
    high = v > SRGB_LINEAR_THRESHOLD
    # Clamp inside pow so the unused branch stays finite.
    lin = high * dmath.pow((dmath.max(v, SRGB_LINEAR_THRESHOLD) + 0.055) / 1.055, 2.4) + (1 - high) * (v / 12.92)
    t = fn.coord_transform(lin, M=[x for row in xyz_matrix() for x in row])
    cube = t > EPSILON
    f = cube * dmath.cbrt(dmath.max(t, EPSILON)) + (1 - cube) * (t * KAPPA_SLOPE + F_OFFSET)
    m, offset = lab_matrix()
    return fn.coord_transform(f, M=[x for row in m for x in row], T=offset)


def centre_square_roi(jpegs):
    """(roi_start, roi_end): per-sample [row, col] float corners of the centred min(H, W) square.

    The same integer window as `pipeline.cpu_finish.resize_to_square(centre_crop=True)`: side =
    min(H, W), top = (H − side) // 2, left = (W − side) // 2. Resizing the shorter side to S and then
    cropping the centre S×S (the earlier GPU view) rounds the resized length and the crop anchor
    separately and lands up to a source pixel away from it. H and W come from the JPEG header
    (`peek_image_shape`, with the EXIF orientation the decoders also apply), on the CPU, because
    `fn.resize` takes its ROI as CPU argument inputs.
    """
    shape = fn.peek_image_shape(jpegs)  # H, W, C (int64)
    height, width = shape[0], shape[1]
    side = dmath.min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    start = fn.cast(fn.stack(top, left), dtype=types.FLOAT)
    end = fn.cast(fn.stack(top + side, left + side), dtype=types.FLOAT)
    return start, end


@pipeline_def(enable_checkpointing=True)
def colorization_pipeline(
    *,
    tar_paths: Sequence[Path],
    index_paths: Sequence[Path],
    size: int,
    crop: str,
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    flip: bool,
    train: bool,
    shard_id: int,
    num_shards: int,
    shuffle_buffer: int,
    gpu: bool,
):
    """Outputs `lab` (GPU: B×3×S×S float32 network Lab) or `rgb` (CPU: B images H×W×3 uint8) and, for
    CPU training with flips, `mirror` (B int32 0/1)."""
    jpegs = fn.readers.webdataset(
        paths=[str(p) for p in tar_paths],
        index_paths=[str(p) for p in index_paths],
        ext=["jpg"],
        missing_component_behavior="error",
        random_shuffle=train,
        initial_fill=shuffle_buffer,
        shard_id=shard_id,
        num_shards=num_shards,
        # One-pass evaluation: pad the rank's slice with its last sample so that epochs stay aligned;
        # the iterator trims the padding (LastBatchPolicy.PARTIAL).
        pad_last_batch=not train,
        # ... and read the same share on every pass (by default the shards rotate between ranks).
        stick_to_shard=not train,
        # Shards in an object store arrive one ranged GET per sample, each a network round trip: the
        # reader's own thread reads this many batches ahead of the decoders to hide that latency.
        prefetch_queue_depth=READ_AHEAD_REMOTE if any(str(p).startswith("s3://") for p in tar_paths) else 1,
        name=READER_NAME,
    )
    decoder = "mixed" if gpu else "cpu"
    # On GPUs with a hardware JPEG decoder (A100, H100) it takes this share of the batch. Fancy
    # upsampling makes nvJPEG upsample chroma as libjpeg-turbo (the CPU decoder) does, so the GPU and
    # CPU paths see the same pixels up to rounding.
    hw = {"hw_decoder_load": 0.65, "jpeg_fancy_upsampling": True} if gpu else {}
    random_crop = train and crop == "random_resized"
    if random_crop:
        images = fn.decoders.image_random_crop(
            jpegs,
            device=decoder,
            output_type=types.RGB,
            random_area=list(crop_scale),
            random_aspect_ratio=list(crop_ratio),
            num_attempts=10,
            **hw,
        )
    else:
        images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **hw)
    mirror = fn.random.coin_flip(probability=0.5) if (train and flip) else 0
    if gpu:
        if random_crop or crop == "resize":
            images = fn.resize(images, size=[size, size])
        else:  # deterministic evaluation view of a random_resized model: the centre square, to S×S
            roi_start, roi_end = centre_square_roi(jpegs)
            images = fn.resize(images, size=[size, size], roi_start=roi_start, roi_end=roi_end)
        hwc = fn.crop_mirror_normalize(
            images, mirror=mirror, mean=[0.0], std=[255.0], dtype=types.FLOAT, output_layout="HWC"
        )
        outputs = [fn.transpose(_lab_on_device(hwc), perm=[2, 0, 1], output_layout="CHW")]
    else:
        # The loader flips after resizing (a 256² copy instead of one of the whole decoded crop), with
        # DALI's coin flips so that DALI's checkpoints still cover them.
        outputs = [images, mirror] if train and flip else [images]
    return tuple(outputs)
