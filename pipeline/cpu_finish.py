"""The DALI CPU path's last steps, in torch: each decoded image → S×S square → flip → one Lab batch.

DALI's CPU `fn.resize` costs about as much as the JPEG decode itself (BENCHMARKS.md, loader probes),
while torch's antialiased bilinear kernel for uint8 channels-last images is several times cheaper.
So on the CPU the DALI pipeline stops after the decode (of the random crop only, for training), and
this resizes each image, flips it when DALI's coin flip says so, stacks the batch and converts it to
Lab (`pipeline/lab_uint8.py`); on the GPU everything stays inside DALI.

All of it runs on one intra-op thread. The work is already parallel across DALI's decoder threads
and this thread, and an OpenMP team here would only add its fork/join and, worse, an idle worker
that spins for a while after every parallel region, a large share of the whole path's CPU time
(BENCHMARKS.md has the profile).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torchvision.transforms.v2.functional import resize

from pipeline.lab_uint8 import LabStep


def resize_to_square(image_hwc: torch.Tensor, size: int, centre_crop: bool) -> torch.Tensor:
    """H×W×3 uint8 sRGB → 3×S×S uint8 sRGB (bilinear, antialiased; a channels-last view).

    `centre_crop=False` squashes the whole image to S×S (the seed's resize, or an already cropped
    random region); `centre_crop=True` takes the centred square of side min(H, W) first (the
    evaluation view: shorter side to S, centre S×S). Called through torchvision's `resize`, which
    keeps a single image's output channels-last (torch alone repacks it to planar inside the
    kernel: ≈ 30 % slower).
    """
    height, width = image_hwc.shape[:2]
    if centre_crop:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image_hwc = image_hwc[top : top + side, left : left + side]
    # A dense HWC tensor, permuted, is a channels-last CHW view: the layout of torch's fast uint8
    # kernel. A strided view (the centre crop above) would fall back to a much slower path.
    chw = image_hwc.contiguous().permute(2, 0, 1)
    return resize(chw, [size, size], antialias=True)


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the enclosed torch ops on the calling thread only; restores the thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decoded_to_network(
    images: Sequence[torch.Tensor], mirrors: Sequence, size: int, centre_crop: bool, lab_step: LabStep
) -> tuple[torch.Tensor, torch.Tensor]:
    """B decoded H×W×3 uint8 sRGB images (sizes may differ) → (L_net B×1×S×S, ab_net B×2×S×S) float32.

    `mirrors` holds a truthy value for each image to flip left-right (empty: no flips). The images
    may be views of DALI's buffers: they are read here and not kept.
    """
    with one_intra_op_thread():
        squares = [resize_to_square(image, size, centre_crop) for image in images]
        for i, mirror in enumerate(mirrors):
            if mirror:
                squares[i] = squares[i].flip(-1)
        # The stack also turns the channels-last squares into the planar batch the Lab kernel
        # vectorises over (interleaved channels defeat its vectorisation).
        return lab_step(torch.stack(squares))
