"""Resize one decoded image to the S×S training square with torch's uint8 resampler (CPU path).

DALI's CPU `fn.resize` costs about as much as the JPEG decode itself (BENCHMARKS.md, loader probes),
while torch's antialiased bilinear kernel for uint8 channels-last images is several times cheaper.
So on the CPU the DALI pipeline stops after the decode (of the random crop only, for training), and
this resizes each image before the loader flips it and converts it to Lab; on the GPU everything
stays inside DALI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_to_square(image_hwc: torch.Tensor, size: int, centre_crop: bool) -> torch.Tensor:
    """H×W×3 uint8 sRGB → 3×S×S uint8 sRGB (bilinear, antialiased).

    `centre_crop=False` squashes the whole image to S×S (the seed's resize, or an already cropped
    random region); `centre_crop=True` takes the centred square of side min(H, W) first (the
    evaluation view: shorter side to S, centre S×S).
    """
    height, width = image_hwc.shape[:2]
    if centre_crop:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image_hwc = image_hwc[top : top + side, left : left + side]
    # A dense HWC tensor, permuted, is a channels-last NCHW view: the layout of torch's fast uint8
    # kernel. A strided view (the centre crop above) would fall back to a much slower path.
    chw = image_hwc.contiguous().permute(2, 0, 1).unsqueeze(0)
    if chw.shape[-2:] == (size, size):
        return chw[0]
    return F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def resize_all_to_square(images: list[torch.Tensor], size: int, centre_crop: bool) -> list[torch.Tensor]:
    """`resize_to_square` for each H×W×3 uint8 image, on one intra-op thread.

    One small image is too little work to split across threads: the fork/join and the OpenMP
    threads' spinning take cores from DALI's decoders (≈ 6 % more images/s this way on 2 cores).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [resize_to_square(image, size, centre_crop) for image in images]
    finally:
        torch.set_num_threads(threads)
