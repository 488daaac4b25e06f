"""pipeline/lab.py against skimage.color (float64 reference) and its own inverse."""

import warnings

import numpy as np
import pytest
import torch
from skimage import color

from pipeline.lab import (
    denormalize_lab,
    lab_to_rgb,
    network_to_rgb,
    normalize_lab,
    rgb_to_lab,
    rgb_to_network,
)


def to_chw(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))).float()


def test_rgb_to_lab_matches_skimage_on_random_colours():
    rng = np.random.default_rng(0)
    rgb = rng.random((64, 64, 3))
    # Include the exact corners of the cube and values either side of the sRGB knee.
    rgb[0, :8] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.04, 0.04, 0.04], [0.05] * 3, [1, 1, 0]]
    ours = rgb_to_lab(to_chw(rgb)).numpy().transpose(1, 2, 0)
    ref = color.rgb2lab(rgb)
    assert np.abs(ours - ref).max() < 1e-3


def test_rgb_to_lab_matches_skimage_on_real_photos(colour_photos):
    for name, photo in colour_photos.items():
        rgb = photo[::4, ::4] / 255.0
        ours = rgb_to_lab(to_chw(rgb)).numpy().transpose(1, 2, 0)
        err = np.abs(ours - color.rgb2lab(rgb)).max()
        assert err < 1e-3, f"{name}: max |ΔLab| = {err}"


def test_lab_to_rgb_matches_skimage():
    rng = np.random.default_rng(1)
    lab = color.rgb2lab(rng.random((32, 32, 3)))
    ours = lab_to_rgb(to_chw(lab)).numpy().transpose(1, 2, 0)
    assert np.abs(ours - color.lab2rgb(lab)).max() < 1e-4


def test_lab_to_rgb_clips_out_of_gamut_colours_as_skimage_does():
    # A grid over the network's whole range (L* 0–100, a* and b* −128–127): most of it lies outside
    # sRGB, and where b* is large z would be negative (skimage clips it to 0 before cubing).
    axes = np.linspace(0, 100, 11), np.linspace(-128, 127, 16), np.linspace(-128, 127, 16)
    lab = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 16, 3)  # H×W×3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the negative z it clips
        reference = color.lab2rgb(lab)
    lab_chw = torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 0, 1)))
    clipped = lab_to_rgb(lab_chw)
    assert np.abs(clipped.numpy().transpose(1, 2, 0) - reference).max() < 1e-6
    unclipped = lab_to_rgb(lab_chw, clip=False)
    assert unclipped.min() < -0.5 and unclipped.max() > 1.5  # really out of gamut, and left so
    assert torch.equal(unclipped.clamp(0.0, 1.0), clipped)


def test_round_trip_in_gamut_within_one_level():
    levels = torch.linspace(0, 1, 18)
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, 18 * 18, 18)
    back = lab_to_rgb(rgb_to_lab(grid))
    assert (back - grid).abs().max() < 1 / 255


def test_batched_and_unbatched_agree():
    batch = torch.rand(4, 3, 8, 8)
    assert torch.allclose(rgb_to_lab(batch)[2], rgb_to_lab(batch[2]))


def test_network_normalisation_is_the_seeds_scaling():
    lab = torch.tensor([100.0, 64.0, -128.0]).view(3, 1, 1)
    lightness, ab = normalize_lab(lab)
    assert lightness.item() == pytest.approx(1.0)
    assert ab.flatten().tolist() == pytest.approx([0.5, -1.0])
    assert torch.allclose(denormalize_lab(lightness, ab), lab)
    black_l, _ = normalize_lab(torch.zeros(3, 1, 1))
    assert black_l.item() == pytest.approx(-1.0)


def test_network_round_trip_and_shapes():
    rgb = torch.rand(2, 3, 16, 16)
    lightness, ab = rgb_to_network(rgb)
    assert lightness.shape == (2, 1, 16, 16) and ab.shape == (2, 2, 16, 16)
    assert lightness.min() >= -1 and lightness.max() <= 1
    assert (network_to_rgb(lightness, ab) - rgb).abs().max() < 1 / 255


def test_gradients_are_finite_everywhere():
    # Black, the sRGB knee and pure primaries hit the masked branches of both directions.
    rgb = torch.tensor([[0.0, 0.04045, 1.0, 0.5], [0.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.5]]).view(3, 1, 4)
    rgb.requires_grad_(True)
    lightness, ab = rgb_to_network(rgb)
    (lightness.sum() + ab.sum() + network_to_rgb(lightness, ab).sum()).backward()
    assert torch.isfinite(rgb.grad).all()
    assert rgb.grad.abs().sum() > 0


def test_float64_input_stays_float64():
    assert rgb_to_lab(torch.rand(3, 2, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.gpu
def test_cuda_matches_cpu():
    rgb = torch.rand(2, 3, 32, 32)
    assert torch.allclose(rgb_to_lab(rgb.cuda()).cpu(), rgb_to_lab(rgb), atol=1e-3)


def test_lab_to_rgb_inverts_no_matrix_and_makes_no_constant_tensors_per_call(monkeypatch):
    """The colour constants are built once per device and dtype: after the first call, neither
    `lab_to_rgb` nor `rgb_to_lab` inverts a matrix or turns Python numbers into a tensor (on CUDA
    each of those is a host → device copy that stalls the training step)."""
    lab = rgb_to_lab(torch.rand(2, 3, 8, 8))
    lab_to_rgb(lab)  # first use may build the constants

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} called at run time")

        return fail

    monkeypatch.setattr(torch.linalg, "inv", forbidden("torch.linalg.inv"))
    monkeypatch.setattr(torch, "tensor", forbidden("torch.tensor"))
    monkeypatch.setattr(torch, "as_tensor", forbidden("torch.as_tensor"))
    rgb = lab_to_rgb(lab)
    assert torch.allclose(rgb_to_lab(rgb), lab, atol=1e-3)


def test_constants_built_under_inference_mode_still_train(monkeypatch):
    """Constants first built under `inference_mode` (colourising) must not be inference tensors:
    a later training step saves them for backward."""
    import pipeline.lab

    monkeypatch.setattr(pipeline.lab, "_CONSTANTS", {})
    with torch.inference_mode():
        lab_to_rgb(torch.zeros(1, 3, 2, 2, dtype=torch.float64))
    lab = torch.rand(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    lab_to_rgb(lab, clip=False).sum().backward()
    assert lab.grad is not None and torch.isfinite(lab.grad).all()
