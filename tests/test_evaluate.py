"""`colorize-eval` and its metrics: checked against skimage and hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from launch.eval import evaluate
from launch.eval.fid import FidError, frechet_distance
from launch.eval.metrics import ab_l1_lab_units, colourfulness, psnr_rgb, ssim_rgb
from pipeline.lab import rgb_to_network

from _colorize_helpers import make_weights
from _loader_helpers import write_test_shards


def _batch(photos: dict[str, np.ndarray], size: int = 96) -> torch.Tensor:
    """Crops of real photos as sRGB B×3×size×size in [0, 1]."""
    crops = [torch.from_numpy(p[:size, :size].astype(np.float32) / 255).permute(2, 0, 1) for p in photos.values()]
    return torch.stack(crops)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def test_psnr_and_ssim_match_skimage(colour_photos):
    truth = _batch(colour_photos)
    noisy = (truth + 0.06 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    psnr = psnr_rgb(noisy, truth, reduction="none")
    ssim = ssim_rgb(noisy, truth, reduction="none")
    for i in range(len(truth)):
        expected_psnr = peak_signal_noise_ratio(_hwc(truth[i]), _hwc(noisy[i]), data_range=1)
        expected_ssim = structural_similarity(
            _hwc(noisy[i]),
            _hwc(truth[i]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=2,
        )
        assert psnr[i].item() == pytest.approx(expected_psnr, abs=1e-3)
        assert ssim[i].item() == pytest.approx(expected_ssim, abs=1e-4)
    assert psnr_rgb(noisy, truth).item() == pytest.approx(psnr.mean().item())
    assert math.isinf(psnr_rgb(truth, truth).item())
    assert ssim_rgb(truth, truth).item() == pytest.approx(1.0, abs=1e-5)


def test_ab_l1_is_in_lab_units():
    true_ab = torch.rand(2, 2, 8, 8) - 0.5
    assert ab_l1_lab_units(true_ab + 0.1, true_ab).item() == pytest.approx(12.8, rel=1e-5)  # 0.1 × 128
    per_image = ab_l1_lab_units(torch.cat([true_ab[:1], true_ab[1:] - 0.25]), true_ab, reduction="none")
    assert per_image.tolist() == pytest.approx([0.0, 32.0], abs=1e-4)


def test_colourfulness_hand_computed_and_grey_is_zero(colour_photos):
    # Two pixels, pure red and pure green: rg = ±255, yb = 127.5 for both.
    rgb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).reshape(1, 3, 1, 2)
    expected = math.sqrt(255.0**2 + 0.0) + 0.3 * math.sqrt(0.0 + 127.5**2)
    assert colourfulness(rgb).item() == pytest.approx(expected, rel=1e-6)
    grey = torch.rand(2, 1, 16, 16).expand(2, 3, 16, 16)
    assert colourfulness(grey, reduction="none").tolist() == [0.0, 0.0]
    photos = _batch(colour_photos)
    washed = photos.mean(dim=1, keepdim=True) * 0.7 + photos * 0.3
    assert (colourfulness(washed, reduction="none") < colourfulness(photos, reduction="none")).all()


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(0.0, 1.0, (4000, 3)))
    b = torch.from_numpy(rng.normal(0.5, 2.0, (4000, 3)))
    var_a, var_b = a.var(0).numpy(), b.var(0).numpy()
    mean_diff = (a.mean(0) - b.mean(0)).numpy()
    expected = (mean_diff**2).sum() + (var_a + var_b - 2 * np.sqrt(var_a * var_b)).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=2e-2)  # off-diagonal noise is small
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # A full covariance against scipy's general matrix square root.
    from scipy import linalg

    c = torch.from_numpy(rng.normal(0, 1, (500, 6)) @ rng.normal(0, 1, (6, 6)))
    d = torch.from_numpy(rng.normal(0, 1, (500, 6)) @ rng.normal(0, 1, (6, 6)))
    sc, sd = np.cov(c.numpy(), rowvar=False), np.cov(d.numpy(), rowvar=False)
    mean_diff = (c.mean(0) - d.mean(0)).numpy()
    expected = mean_diff @ mean_diff + np.trace(sc + sd - 2 * linalg.sqrtm(sc @ sd).real)
    assert frechet_distance(c, d) == pytest.approx(expected, rel=1e-6)  # N > D: eigendecomposition path
    few_c, few_d = c[:5], d[:4]  # N ≤ D: the singular-value path, same formula
    sc, sd = np.cov(few_c.numpy(), rowvar=False), np.cov(few_d.numpy(), rowvar=False)
    mean_diff = (few_c.mean(0) - few_d.mean(0)).numpy()
    expected = mean_diff @ mean_diff + np.trace(sc + sd - 2 * linalg.sqrtm(sc @ sd).real)
    assert frechet_distance(few_c, few_d) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_truth_double_scores_perfectly_and_grey_baseline_is_colourless(colour_photos):
    rgb = _batch(colour_photos)
    lightness, ab = rgb_to_network(rgb)
    truth_by_input = {lightness[i].numpy().tobytes(): ab[i] for i in range(len(ab))}

    def oracle(batch_l: torch.Tensor) -> torch.Tensor:  # a "generator" that knows the answers
        return torch.stack([truth_by_input[x.numpy().tobytes()] for x in batch_l])

    batches = [(lightness[:4], ab[:4]), (lightness[4:], ab[4:])]
    result = evaluate.evaluate_batches(oracle, batches)
    m = result["metrics"]
    assert result["images"] == len(rgb)
    assert (
        m["ab_l1"]["model"] == 0.0
        and math.isinf(m["psnr"]["model"])
        and m["ssim"]["model"] == pytest.approx(1.0, abs=1e-5)
    )
    assert m["colourfulness"]["model"] == pytest.approx(m["colourfulness"]["truth"])
    # ab = 0 gives R ≈ G ≈ B; skimage's rounded matrix leaves channel differences of ~1e-5, so the
    # colourfulness is a few thousandths on the 0–255 scale, not exactly 0.
    assert m["colourfulness"]["grey"] < 0.02
    assert m["ab_l1"]["grey"] > 5 and m["psnr"]["grey"] < 40
    limited = evaluate.evaluate_batches(oracle, batches, limit=5)
    assert limited["images"] == 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory, colour_photos):
    folder = tmp_path_factory.mktemp("eval")
    write_test_shards(folder / "shards", colour_photos, train=(2,), val=(6,))
    return folder


@pytest.mark.slow
def test_colorize_eval_cli_table_matches_json(shards, capsys):
    weights = make_weights(shards / "g.safetensors")
    out = shards / "eval.json"
    code = evaluate.main(
        [
            "--weights",
            str(weights),
            "--shards",
            str(shards / "shards"),
            "--json",
            str(out),
            "--batch-size",
            "4",
            "--limit",
            "5",
            "--device",
            "cpu",
            "--workers",
            "1",
        ]
    )
    table = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 5 and result["split"] == "val" and result["model"]["features"] == 8
    rows = {line.split("  ")[0]: line.split()[-3:] for line in table.splitlines()[3:]}
    for name, values in result["metrics"].items():
        row = rows[evaluate.LABELS[name]]
        assert row[0] == f"{values['model']:.4f}" and row[1] == f"{values['grey']:.4f}", name
        assert row[2] == (f"{values['truth']:.4f}" if "truth" in values else "-"), name
    assert result["metrics"]["colourfulness"]["grey"] < 0.02
    # The test generator's orange cast (a*, b* ≈ +43) is far more colourful than grey.
    assert result["metrics"]["colourfulness"]["model"] > 20


def test_colorize_eval_errors_are_one_line(shards, tmp_path, capsys):
    weights = make_weights(tmp_path / "g.safetensors")
    assert evaluate.main(["--weights", str(weights), "--shards", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'}: shards directory not found"
    assert evaluate.main(["--weights", str(weights), "--shards", str(shards / "shards"), "--split", "test"]) == 2
    assert "no shards for split 'test'" in capsys.readouterr().err
    junk = tmp_path / "inception.pth"
    junk.write_text("not weights")
    assert (
        evaluate.main(["--weights", str(weights), "--shards", str(shards / "shards"), "--fid-inception", str(junk)])
        == 2
    )
    assert capsys.readouterr().err.startswith(f"error: {junk}: not a PyTorch state_dict")


@pytest.mark.slow
def test_fid_with_local_inception_weights(shards, tmp_path):
    from torchvision.models import inception_v3

    from launch.eval.fid import InceptionFeatures

    torch.manual_seed(0)
    torch.save(
        inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), tmp_path / "inception.pth"
    )
    features = InceptionFeatures(tmp_path / "inception.pth")
    rgb = torch.rand(3, 3, 64, 80)
    assert features(rgb).shape == (3, 2048)
    weights = make_weights(tmp_path / "g.safetensors")
    out = tmp_path / "fid.json"
    assert (
        evaluate.main(
            [
                "--weights",
                str(weights),
                "--shards",
                str(shards / "shards"),
                "--json",
                str(out),
                "--limit",
                "3",
                "--batch-size",
                "3",
                "--workers",
                "1",
                "--fid-inception",
                str(tmp_path / "inception.pth"),
            ]
        )
        == 0
    )
    fid = json.loads(out.read_text())["metrics"]["fid"]
    assert fid["model"] > 0 and fid["grey"] > 0 and all(math.isfinite(v) for v in fid.values())
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(FidError, match="wrong.pth: not a torchvision inception_v3 state_dict"):
        InceptionFeatures(tmp_path / "wrong.pth")
