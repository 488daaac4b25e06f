"""The critic warm-up step and the generator's average (EMA), on the CPU.

Small networks (width 8) at 256², the generator's smallest input side; the EMA's arithmetic on a toy
model against its closed form.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from configs import load_config
from launch.bench.step import synthetic_batch
from launch.training.ema import GeneratorEMA, ema_decay_at

from _train_helpers import small_gan


@pytest.fixture
def gan():
    return small_gan("model.ema_decay=0.9", "schedule.critic_steps=2")


@pytest.fixture
def batch():
    return synthetic_batch(2, 256, torch.device("cpu"))


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics and batch counts), copied."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def same_optimiser_state(a: dict, b: dict) -> bool:
    """Equal optimiser state_dicts: the same per-parameter tensors (Adam's moments and step) bit for bit."""
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(
        a["state"][i].keys() == b["state"][i].keys()
        and all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])
        for i in a["state"]
    )


def test_critic_step_changes_only_d(gan, batch):
    gan.nogan_step(*batch)  # G as NoGAN leaves it: trained running statistics, an average of one update
    G_before, D_before, ema_before = state(gan.G_module), state(gan.D_module), state(gan.ema.module)
    G_grads = [p.grad.clone() for p in gan.G_module.parameters()]  # the NoGAN step's
    optimisers_before = [copy.deepcopy(opt.state_dict()) for opt in (gan.opt_nogan, gan.opt_G)]
    updates_before = gan.ema.updates

    terms = gan.critic_step(*batch)
    terms_again = gan.critic_step(*batch)

    # G: every parameter and buffer bit-identical, no gradient added, still in train mode (as GAN runs it).
    G_after = state(gan.G_module)
    assert G_after.keys() == G_before.keys()
    for name, value in G_before.items():
        assert torch.equal(value, G_after[name]), name
    assert all(torch.equal(p.grad, g) for p, g in zip(gan.G_module.parameters(), G_grads, strict=True))
    assert gan.G_module.training
    assert all(m.track_running_stats for m in gan.G_module.modules() if isinstance(m, nn.BatchNorm2d))
    # Neither G optimiser took a step, and the average did not move: G did not change.
    for opt, before in zip((gan.opt_nogan, gan.opt_G), optimisers_before, strict=True):
        assert same_optimiser_state(opt.state_dict(), before)
    assert gan.ema.updates == updates_before
    assert all(torch.equal(value, gan.ema.module.state_dict()[name]) for name, value in ema_before.items())
    # D learned: its weights moved and its loss on the same batch went down.
    D_after = state(gan.D_module)
    assert any(not torch.equal(D_before[name], D_after[name]) for name in D_before)
    assert terms_again["train/d_total"] < terms["train/d_total"]
    assert set(terms) == {
        "train/d_total",
        "train/d_real",
        "train/d_fake",
        "train/d_out_real",
        "train/d_out_fake",
        "train/d_acc_real",
        "train/d_acc_fake",
    }
    assert 0 <= terms["train/d_acc_fake"] <= 1 and 0 <= terms["train/d_acc_real"] <= 1


def d_forwards(gan, step, L: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `step(L, ab)` and return D's patch logits in it on the real pairs (L, ab) and on the others
    (L, G's colours), told apart by D's inputs, whatever order D saw them in."""
    seen = []
    hook = gan.D_module.register_forward_hook(lambda _, inputs, out: seen.append((*inputs, out.detach())))
    try:
        step(L, ab)
    finally:
        hook.remove()
    real, fake = [], []
    for lightness, colour, logits in seen:
        for i in range(len(colour)):
            is_real = any(torch.equal(colour[i], ab[j]) and torch.equal(lightness[i], L[j]) for j in range(len(ab)))
            (real if is_real else fake).append(logits[i])
    return torch.stack(real), torch.stack(fake)


@pytest.mark.parametrize("undecided", [False, True], ids=["initial-D", "undecided-D"])
def test_ds_logged_terms_are_those_of_its_outputs_on_the_real_and_the_fake_half(undecided):
    """A batch of 3 (not 1, 2: the channel counts of L and ab). The undecided D (last layer zero: every
    logit exactly 0, probability ½) is right on no patch, on either side."""
    gan = small_gan("schedule.critic_steps=2")
    L, ab = synthetic_batch(3, 256, torch.device("cpu"))
    if undecided:
        last = [m for m in gan.D_module.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 1]
        assert len(last) == 1
        nn.init.zeros_(last[0].weight), nn.init.zeros_(last[0].bias)
    terms = {}
    real, fake = d_forwards(gan, lambda L, ab: terms.update(gan.critic_step(L, ab)), L, ab)
    assert real.shape[0] == fake.shape[0] == 3
    bce = nn.functional.binary_cross_entropy_with_logits
    expected = {
        "train/d_real": bce(real, torch.ones_like(real)),
        "train/d_fake": bce(fake, torch.zeros_like(fake)),
        "train/d_out_real": torch.sigmoid(real).mean(),
        "train/d_out_fake": torch.sigmoid(fake).mean(),
        "train/d_acc_real": (real > 0).float().mean(),
        "train/d_acc_fake": (fake < 0).float().mean(),
    }
    expected["train/d_total"] = (expected["train/d_real"] + expected["train/d_fake"]) / 2
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
    if undecided:
        assert terms["train/d_acc_real"].item() == terms["train/d_acc_fake"].item() == 0
    else:  # logits on both sides of 0 and within ±1 on the fake side: the thresholds are tested
        assert 0 < expected["train/d_acc_real"] < 1 and 0 < expected["train/d_acc_fake"] < 1
        assert ((fake > -1) & (fake < 0)).any() and ((fake >= 0) & (fake < 1)).any()


def test_the_average_follows_each_g_update_and_only_those(gan, batch):
    gan.nogan_step(*batch)
    gan.critic_step(*batch)
    gan.gan_step(*batch)
    assert gan.ema.updates == 2
    # Two updates from a copy of G's initial weights: the average lies between them and G's now.
    assert not torch.equal(gan.ema.module.initial_down[0].weight, gan.G_module.initial_down[0].weight)
    assert not gan.ema.module.training and not any(p.requires_grad for p in gan.ema.module.parameters())


def test_d_warms_up_once_from_the_critic_phase_and_g_at_gan(gan):
    """D's Adam starts at the critic warm-up and keeps going into GAN (its warm-up is not restarted
    there); G's GAN Adam starts, and warms up, at GAN."""
    gan.cfg = load_config(
        None,
        [
            "schedule.nogan_steps=10",
            "schedule.critic_steps=2",
            "schedule.gan_steps=10",
            "optim.warmup_steps=4",
            "optim.generator.lr=4e-4",
            "optim.discriminator.lr=8e-4",
        ],
    )
    rates = [gan.set_learning_rates(step) for step in range(10, 16)]
    assert [r["train/lr_d"] for r in rates] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 8e-4, 8e-4])
    assert ["train/lr_g" in r for r in rates] == [False, False, True, True, True, True]
    assert [r["train/lr_g"] for r in rates[2:]] == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4])
    assert gan.opt_D.param_groups[0]["lr"] == pytest.approx(8e-4)


def test_ema_after_n_updates_equals_the_closed_form():
    """ema_n = Π_{k<n} d_k · w_0 + Σ_{k<n} (1 − d_k) Π_{k<j<n} d_j · w_{k+1}, d_k = min(decay, (1+k)/(10+k)),
    for the weights and the BatchNorm running statistics of a toy model whose values the test sets at
    each step; the integer batch count is copied."""
    decay, n = 0.5, 12  # the warm-up caps d for the first 8 updates, then d = decay
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    history = [{name: t.detach().double().clone() for name, t in source.state_dict().items()}]
    average = GeneratorEMA(source, copy.deepcopy(source), decay)
    for step in range(n):
        with torch.no_grad():
            for tensor in source.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn_like(tensor))
                else:
                    tensor.add_(step + 1)
        history.append({name: t.detach().double().clone() for name, t in source.state_dict().items()})
        average.update()

    decays = [ema_decay_at(decay, k) for k in range(n)]
    assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12]) and decays[-1] == decay
    got = average.module.state_dict()
    for name, tensor in got.items():
        if not tensor.is_floating_point():
            assert torch.equal(tensor, source.state_dict()[name]), name
            continue
        expected = torch.prod(torch.tensor(decays, dtype=torch.float64)) * history[0][name]
        for k in range(n):
            tail = torch.prod(torch.tensor(decays[k + 1 :], dtype=torch.float64))
            expected = expected + (1 - decays[k]) * tail * history[k + 1][name]
        torch.testing.assert_close(tensor.double(), expected, rtol=1e-6, atol=1e-6, msg=name)
    assert average.updates == n
    # The checkpointed state restores the same average and count.
    restored = GeneratorEMA(source, copy.deepcopy(source), decay)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == n
    assert all(torch.equal(got[k], v) for k, v in restored.module.state_dict().items())


@pytest.mark.slow
def test_the_demo_trains_a_generator_and_an_average_that_both_beat_grey(tmp_path):
    """`make demo`'s data and `configs/demo.yaml` (critic warm-up and EMA on), shortened to fit a test:
    width 8, batch 4, 60 NoGAN + 5 critic + 15 GAN steps. The demo report's checks hold: NoGAN's L1
    falls, and the generator and its average each score a val ab-L1 below the grey baseline's."""
    from _train_helpers import REPO, VENV_BIN, run_train, subprocess_env

    data = tmp_path / "demo-data"
    shards_cli = str(VENV_BIN / "colorize-shards")
    subprocess.run([shards_cli, "demo-images", str(data / "photos")], check=True, capture_output=True)
    build = [shards_cli, "build", str(data / "photos"), str(data / "shards"), "--shard-samples", "64"]
    subprocess.run([*build, "--val-fraction", "0.1", "--quiet"], check=True, capture_output=True)
    steps = ["schedule.nogan_steps=60", "schedule.critic_steps=5", "schedule.gan_steps=15"]
    small = ["model.features=8", "model.disc_features=8", "data.batch_size=4", "data.shuffle_buffer=64"]
    logs = ["logging.wandb=disabled", "logging.every_steps=5", "logging.sample_every_steps=1000"]
    args = [f"data.shards={data / 'shards'}", f"run.out_dir={tmp_path / 'runs'}", "run.device=cpu", *steps, *small]
    result = run_train(["--config", "configs/demo.yaml", *args, *logs], env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    report = subprocess.run(
        [sys.executable, str(REPO / "launch" / "demo_report.py"), str(tmp_path / "runs" / "demo")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    scores = re.search(r"generator ([\d.]+), EMA generator ([\d.]+) vs grey baseline ([\d.]+)", report.stdout)
    assert scores, report.stdout + report.stderr
    raw, ema, grey = map(float, scores.groups())
    assert ema < grey and raw < grey, report.stdout
    assert report.returncode == 0, report.stdout
    assert "critic warm-up: D's accuracy on G's colours" in report.stdout
