"""The two updates of `ColorizationGAN` on the CPU: each changes only what it should, and each
trains the right way: D learns to tell real from fake, the NoGAN step follows its whole loss.

Small networks (width 8) at 256², the generator's smallest input side.
"""

from __future__ import annotations

import copy

import pytest
import torch

from configs import load_config

from _train_helpers import small_gan


def tiny_gan(*overrides: str):
    """`small_gan` with gradients clipped at 1 and VGG (when used) with random weights: nothing is
    downloaded."""
    return small_gan("loss.vgg_weights=none", "optim.grad_clip=1.0", *overrides)


@pytest.fixture
def gan():
    return tiny_gan("loss.feature_weight_nogan=0")


@pytest.fixture
def batch():
    from launch.bench.step import synthetic_batch

    return synthetic_batch(2, 256, torch.device("cpu"))


def snapshot(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    return {
        name: (p.detach().clone(), None if p.grad is None else p.grad.clone()) for name, p in module.named_parameters()
    }


def same(before: dict, module: torch.nn.Module) -> bool:
    now = snapshot(module)
    return all(
        torch.equal(before[k][0], now[k][0])
        and (before[k][1] is None) == (now[k][1] is None)
        and (before[k][1] is None or torch.equal(before[k][1], now[k][1]))
        for k in before
    )


def record_updates(gan, monkeypatch) -> list[tuple[str, dict, dict]]:
    """Wrap `gan._update`: for each call, which optimiser stepped and snapshots of G and D after it."""
    names = {id(gan.opt_nogan): "nogan", id(gan.opt_G): "G", id(gan.opt_D): "D"}
    calls, real = [], gan._update

    def update(loss, optimizer, module):
        real(loss, optimizer, module)
        calls.append((names[id(optimizer)], snapshot(gan.G), snapshot(gan.D_module)))

    monkeypatch.setattr(gan, "_update", update)
    return calls


@pytest.mark.slow
def test_gan_step_d_update_leaves_g_and_g_update_leaves_d_bit_identical(gan, batch, monkeypatch):
    gan.gan_step(*batch)  # a first step gives every parameter a gradient and Adam state
    calls = record_updates(gan, monkeypatch)
    G_before, nogan_state = snapshot(gan.G), copy.deepcopy(gan.opt_nogan.state_dict())
    terms = gan.gan_step(*batch)
    assert [name for name, _, _ in calls] == ["D", "G"]
    (_, G_after_D, D_after_D), (_, G_after_G, D_after_G) = calls
    # The D update moved D and left G (values and gradients) as it was.
    assert all(torch.equal(G_before[k][0], G_after_D[k][0]) for k in G_before)
    # The G update moved G and left D's parameters and gradients bit-identical to after the D update.
    for key, (value, grad) in D_after_D.items():
        assert torch.equal(value, D_after_G[key][0]) and torch.equal(grad, D_after_G[key][1]), key
    assert any(not torch.equal(G_after_D[k][0], G_after_G[k][0]) for k in G_after_D)
    assert all(p.requires_grad for p in gan.D_module.parameters())  # unfrozen again
    assert gan.opt_nogan.state_dict() == nogan_state  # the NoGAN optimiser took no part
    assert set(terms) >= {"train/d_total", "train/g_adv", "train/l1", "train/d_out_real", "train/d_out_fake"}


def test_d_update_changes_d(gan, batch, monkeypatch):
    D_before = snapshot(gan.D_module)
    calls = record_updates(gan, monkeypatch)
    gan.gan_step(*batch)
    _, _, D_after_D = calls[0]
    assert any(not torch.equal(D_before[k][0], D_after_D[k][0]) for k in D_before)


def test_nogan_step_leaves_d_and_its_optimiser_untouched(gan, batch, monkeypatch):
    gan.gan_step(*batch)
    D_before = snapshot(gan.D_module)
    opt_D_state, opt_G_state = copy.deepcopy(gan.opt_D.state_dict()), copy.deepcopy(gan.opt_G.state_dict())
    G_before = snapshot(gan.G)
    calls = record_updates(gan, monkeypatch)
    gan.nogan_step(*batch)
    assert [name for name, _, _ in calls] == ["nogan"]
    assert same(D_before, gan.D_module)
    assert str(gan.opt_D.state_dict()) == str(opt_D_state) and str(gan.opt_G.state_dict()) == str(opt_G_state)
    assert any(not torch.equal(G_before[k][0], p.detach()) for k, p in gan.G.named_parameters())


def test_learning_rates_follow_the_phase(gan):
    gan.cfg = load_config(
        None,
        [
            "schedule.nogan_steps=2",
            "schedule.gan_steps=2",
            "optim.nogan.lr=1e-3",
            "optim.generator.lr=2e-3",
            "optim.discriminator.lr=3e-3",
        ],
    )
    assert gan.set_learning_rates(1) == {"train/lr_g": 1e-3}
    assert gan.opt_nogan.param_groups[0]["lr"] == 1e-3
    assert gan.set_learning_rates(2) == {"train/lr_g": 2e-3, "train/lr_d": 3e-3}
    assert (gan.opt_G.param_groups[0]["lr"], gan.opt_D.param_groups[0]["lr"]) == (2e-3, 3e-3)


# ------------------------------------------------------------------------ does each update learn right?


def d_outputs(gan, L: torch.Tensor, ab: torch.Tensor) -> tuple[float, float]:
    """D's mean probability of "real" on the real colours and on G's colours of one batch, read from
    copies of G and D in training mode (batch statistics, as in the update), leaving the GAN as it was."""
    G, D = copy.deepcopy(gan.G), copy.deepcopy(gan.D_module)
    with torch.no_grad():
        fake = G(L)
        probabilities = torch.sigmoid(D(torch.cat([L, L]), torch.cat([fake, ab])))
    batch = L.shape[0]
    return probabilities[batch:].mean().item(), probabilities[:batch].mean().item()


def test_a_few_gan_steps_teach_d_to_tell_real_from_fake(gan, batch):
    real_before, fake_before = d_outputs(gan, *batch)
    for _ in range(4):
        gan.gan_step(*batch)
    real_after, fake_after = d_outputs(gan, *batch)
    # D learns to call the true colours real and G's colours fake: its output rises on one and falls
    # on the other (a D trained the wrong way round moves both the other way).
    assert real_after > real_before + 0.05, (real_before, real_after)
    assert fake_after < fake_before - 0.05, (fake_before, fake_after)
    assert real_after > fake_after


@pytest.mark.parametrize("feature_weight", [0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_a_gan_steps_g_total_is_the_weighted_sum_of_its_terms(feature_weight, batch):
    gan = tiny_gan("loss.feature_weight_nogan=0", f"loss.feature_weight_gan={feature_weight}")
    weights = gan.loss
    terms = gan.gan_step(*batch)
    assert (terms["train/feature"].item() > 0) == (feature_weight > 0)
    expected = (
        weights.adversarial_weight * terms["train/g_adv"]
        + weights.l1_weight * terms["train/l1"]
        + weights.feature_weight_gan * terms["train/feature"]
    )
    assert terms["train/g_total"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture
def gan_with_features():
    """A GAN whose NoGAN loss has a non-zero VGG feature term."""
    return tiny_gan("loss.l1_weight=100", "loss.feature_weight_nogan=2.5")


def adam_step(generator: torch.nn.Module, loss_of, cfg) -> torch.nn.Module:
    """A copy of `generator` after one step of a fresh Adam (cfg.optim.nogan, clipped at grad_clip
    unless that is 0, "off") on the loss `loss_of(copy)`, whose forward draws the dropout masks of seed 0."""
    G = copy.deepcopy(generator)
    optimizer = torch.optim.Adam(G.parameters(), lr=cfg.optim.nogan.lr, betas=cfg.optim.nogan.betas)
    torch.manual_seed(0)
    loss_of(G).backward()
    if cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(G.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    return G


def share_apart(a: torch.nn.Module, b: torch.nn.Module, tolerance: float = 1e-6) -> float:
    """The share of parameter elements of `a` and `b` further apart than `tolerance`."""
    pairs = list(zip(a.parameters(), b.parameters(), strict=True))
    apart = sum(((p - q).abs() > tolerance).sum().item() for p, q in pairs)
    return apart / sum(p.numel() for p, _ in pairs)


@pytest.mark.slow
def test_nogan_step_trains_g_on_the_weighted_sum_of_l1_and_feature_loss(gan_with_features, batch):
    from losses import ab_l1

    gan, (L, ab) = gan_with_features, batch
    cfg, vgg = gan.cfg, gan.feature_loss
    before = copy.deepcopy(gan.G)
    torch.manual_seed(0)  # G's dropout masks, the same in the references below
    terms = gan.nogan_step(L, ab)

    # The logged total is the weighted sum of the two terms, and the feature term is really there.
    assert terms["train/feature"].item() > 0
    expected_total = 100 * terms["train/l1"] + 2.5 * terms["train/feature"]
    assert terms["train/g_total"].item() == pytest.approx(expected_total.item(), rel=1e-5)

    # G moved as one Adam step on that sum moves it, and not as a step on the L1 term alone. (Adam's
    # first step is ±lr per weight, the sign of its gradient: a different gradient flips many signs.)
    def weighted_sum(G):
        fake = G(L)
        return 100 * ab_l1(fake, ab) + 2.5 * vgg(L, fake, ab)

    apart_from_weighted_sum = share_apart(gan.G, adam_step(before, weighted_sum, cfg))
    apart_from_l1_only = share_apart(gan.G, adam_step(before, lambda G: 100 * ab_l1(G(L), ab), cfg))
    assert apart_from_weighted_sum < 1e-4
    assert apart_from_l1_only > 0.05


def l1_only(L: torch.Tensor, ab: torch.Tensor, weight: float):
    """The loss `weight`·L1(G(L), ab) of a generator G, for `adam_step`."""
    from losses import ab_l1

    return lambda G: weight * ab_l1(G(L), ab)


def test_a_nogan_step_at_feature_weight_0_leaves_the_vgg_out(batch):
    # The VGG exists (the GAN phase weighs its features) but the NoGAN phase gives them weight 0.
    gan, (L, ab) = tiny_gan("loss.feature_weight_nogan=0", "loss.feature_weight_gan=0.5"), batch
    assert gan.feature_loss is not None
    vgg_calls = []
    gan.feature_loss.register_forward_hook(lambda *_: vgg_calls.append(1))
    before = copy.deepcopy(gan.G)
    torch.manual_seed(0)  # G's dropout masks, the same in the reference below
    terms = gan.nogan_step(L, ab)
    # The feature term is an exact 0, the VGG did not run, and G took the step of the L1 term alone.
    assert terms["train/feature"].item() == 0 and vgg_calls == []
    assert terms["train/g_total"].item() == pytest.approx(gan.loss.l1_weight * terms["train/l1"].item(), rel=1e-6)
    assert share_apart(gan.G, adam_step(before, l1_only(L, ab, gan.loss.l1_weight), gan.cfg)) < 1e-4


def test_a_nogan_step_without_gradient_clipping_is_a_plain_adam_step(batch):
    gan, (L, ab) = small_gan("optim.grad_clip=0"), batch  # 0: clipping off
    before = copy.deepcopy(gan.G)
    torch.manual_seed(0)
    gan.nogan_step(L, ab)
    # G moved, as one unclipped Adam step on its L1 loss moves it (clipping at 0 would stop it dead).
    assert share_apart(gan.G, before) > 0.5
    assert share_apart(gan.G, adam_step(before, l1_only(L, ab, gan.loss.l1_weight), gan.cfg)) < 1e-4


def gradient_norm(module: torch.nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()


def test_a_nogan_step_steps_on_gs_gradient_clipped_to_grad_clip(batch):
    gan, (L, ab) = tiny_gan(), batch  # optim.grad_clip=1
    unclipped = copy.deepcopy(gan.G)
    torch.manual_seed(0)
    l1_only(L, ab, gan.loss.l1_weight)(unclipped).backward()
    torch.manual_seed(0)  # the same dropout masks
    gan.nogan_step(L, ab)
    # The gradient G stepped on (left in .grad until the next update) is the L1 gradient scaled to norm 1.
    assert gradient_norm(unclipped) > 2
    assert gradient_norm(gan.G) == pytest.approx(1, rel=1e-4)
