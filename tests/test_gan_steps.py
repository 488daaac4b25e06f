"""The two updates of `ColorizationGAN` on the CPU: each changes only what it should.

Small networks (width 8) at 256², the generator's smallest input side.
"""

from __future__ import annotations

import copy

import pytest
import torch

from configs import load_config

from _train_helpers import small_gan


@pytest.fixture
def gan():
    return small_gan("optim.grad_clip=1.0")


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
