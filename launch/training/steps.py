"""One optimiser step of each phase: `nogan_step`, and the GAN phase's `d_step` then `g_step`.

Tensors: L is L_net B×1×S×S in [-1, 1], ab is ab_net B×2×S×S in [-1, 1] (CIELAB a*, b* / 128); the
generator maps L → ab. The discriminator takes (L, ab) and returns patch logits B×1×h×w.
Each step returns its loss terms as detached 0-d tensors keyed by their metric name (`train/...`),
left on the device: the loop reads them back only at its sync points (`launch/training/monitor.py`).

DDP notes (see ENVIRONMENT.md): the D step runs ONE forward of the DDP-wrapped discriminator on the
concatenated fake + real batch (two forwards of a BatchNorm D under DDP trip the in-place buffer
broadcast), so batch statistics are taken over the mixed batch. The G step calls the *unwrapped*
discriminator with its parameters frozen: a DDP forward whose backward produces no D gradients would
leave DDP's reducer waiting, and the frozen D only has to pass gradients through to the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from configs import LossConfig
from losses import ab_l1, discriminator_loss, generator_adversarial_loss


@dataclass
class StepContext:
    """What the step functions need: the prepared networks and optimisers, the loss settings."""

    accelerator: Accelerator
    generator: nn.Module
    """The prepared (possibly DDP-wrapped) generator."""
    discriminator: nn.Module
    """The prepared (possibly DDP-wrapped) discriminator, used by the D step."""
    discriminator_module: nn.Module
    """The same discriminator unwrapped, used frozen by the G step."""
    opt_nogan: torch.optim.Optimizer
    opt_generator: torch.optim.Optimizer
    opt_discriminator: torch.optim.Optimizer
    loss: LossConfig
    feature_loss: nn.Module | None
    """VGG feature loss (L, fake_ab, real_ab) → scalar, or None when no phase uses it."""
    grad_clip: float


def _feature_term(ctx: StepContext, weight: float, L: torch.Tensor, fake: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The VGG feature loss when its weight is non-zero, else an exact 0 (VGG not run)."""
    if weight == 0 or ctx.feature_loss is None:
        return torch.zeros((), device=L.device)
    return ctx.feature_loss(L, fake, ab)


def _apply(ctx: StepContext, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Backward `loss`, clip `module`'s gradients when configured, step `optimizer`."""
    optimizer.zero_grad(set_to_none=True)
    ctx.accelerator.backward(loss)
    if ctx.grad_clip > 0:
        ctx.accelerator.clip_grad_norm_(module.parameters(), ctx.grad_clip)
    optimizer.step()


def nogan_step(ctx: StepContext, L: torch.Tensor, ab: torch.Tensor) -> dict[str, torch.Tensor]:
    """Generator only: l1_weight·L1(fake_ab, ab) + feature_weight_nogan·VGG feature loss (Adam optim.nogan)."""
    with ctx.accelerator.autocast():
        fake = ctx.generator(L)
        l1 = ab_l1(fake.float(), ab)
        feature = _feature_term(ctx, ctx.loss.feature_weight_nogan, L, fake, ab)
        total = ctx.loss.l1_weight * l1 + ctx.loss.feature_weight_nogan * feature
    _apply(ctx, total, ctx.opt_nogan, ctx.generator)
    return {"train/l1": l1.detach(), "train/feature": feature.detach(), "train/g_total": total.detach()}


def d_step(ctx: StepContext, L: torch.Tensor, ab: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """Discriminator: ½[BCE(D(L, fake), 0) + BCE(D(L, ab), 1)] with `fake` detached from G's graph.

    Also reports the mean sigmoid output of D on real and on fake patches (1 = "real").
    """
    D = ctx.discriminator_module
    D.requires_grad_(True)
    batch = L.shape[0]
    with ctx.accelerator.autocast():
        logits = ctx.discriminator(torch.cat([L, L]), torch.cat([fake.detach(), ab]))
        fake_logits, real_logits = logits[:batch].float(), logits[batch:].float()
        total, loss_real, loss_fake = discriminator_loss(real_logits, fake_logits)
    _apply(ctx, total, ctx.opt_discriminator, ctx.discriminator)
    return {
        "train/d_total": total.detach(),
        "train/d_real": loss_real.detach(),
        "train/d_fake": loss_fake.detach(),
        "train/d_out_real": torch.sigmoid(real_logits.detach()).mean(),
        "train/d_out_fake": torch.sigmoid(fake_logits.detach()).mean(),
    }


def g_step(ctx: StepContext, L: torch.Tensor, ab: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """Generator against a frozen D: adversarial_weight·BCE(D(L, fake), 1) + l1_weight·L1 + feature_weight_gan·VGG.

    `fake` is G(L) with its graph, computed once per GAN step and shared with the D step.
    """
    D = ctx.discriminator_module
    D.requires_grad_(False)
    with ctx.accelerator.autocast():
        adversarial = generator_adversarial_loss(D(L, fake).float())
        l1 = ab_l1(fake.float(), ab)
        feature = _feature_term(ctx, ctx.loss.feature_weight_gan, L, fake, ab)
        total = ctx.loss.adversarial_weight * adversarial + ctx.loss.l1_weight * l1 + ctx.loss.feature_weight_gan * feature
    _apply(ctx, total, ctx.opt_generator, ctx.generator)
    D.requires_grad_(True)
    return {
        "train/g_adv": adversarial.detach(),
        "train/l1": l1.detach(),
        "train/feature": feature.detach(),
        "train/g_total": total.detach(),
    }


def gan_step(ctx: StepContext, L: torch.Tensor, ab: torch.Tensor) -> dict[str, torch.Tensor]:
    """One GAN step: G forward once, the D step on the detached output, then the G step through frozen D."""
    with ctx.accelerator.autocast():
        fake = ctx.generator(L)
    terms = d_step(ctx, L, ab, fake)
    terms.update(g_step(ctx, L, ab, fake))
    return terms
