"""The colorization GAN of one run: G, D, the three optimisers and the losses, and its two updates.

Tensors: L is L_net B×1×S×S in [-1, 1], ab is ab_net B×2×S×S in [-1, 1] (CIELAB a*, b* / 128); the
generator maps L → ab. The discriminator takes (L, ab) and returns patch logits B×1×h×w. Each update
returns its loss terms as detached 0-d tensors keyed by metric name (`train/...`), left on the device:
the loop reads them back only at its sync points (`launch/training/monitor.py`).

`build_gan(cfg, accelerator)` builds everything the same way for `launch/train.py` and
`colorize-bench step`.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from configs import AdamConfig, Config
from launch.training.schedule import NOGAN, learning_rate, phase_at
from losses import ab_l1, build_feature_loss, discriminator_loss, generator_adversarial_loss
from models import build_discriminator, build_generator

Terms = dict[str, torch.Tensor]


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter of `module` (pix2pix's helper)."""
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


class ColorizationGAN:
    """NoGAN (G alone: L1 + VGG features) and GAN (D then G: BCE + L1) updates, pix2pix style.

    The G update runs the unwrapped discriminator (`D_module`), frozen: it only passes gradients
    through to G, and a DDP-wrapped forward whose backward gives D no gradients would leave DDP's
    reducer waiting for them.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        cfg: Config,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer],
        feature_loss: nn.Module | None,
    ) -> None:
        self.accelerator, self.cfg, self.loss = accelerator, cfg, cfg.loss
        self.G, self.D = generator, discriminator  # as prepared: DDP-wrapped in multi-process runs
        self.D_module = accelerator.unwrap_model(discriminator)
        self.opt_nogan, self.opt_G, self.opt_D = optimizers
        self.feature_loss = feature_loss

    # ---------------------------------------------------------------------------------------- updates
    def nogan_step(self, L: torch.Tensor, ab: torch.Tensor) -> Terms:
        """G only: l1_weight·L1 + feature_weight_nogan·VGG feature loss, Adam `optim.nogan`."""
        with self.accelerator.autocast():
            fake = self.G(L)
            l1, feature = ab_l1(fake.float(), ab), self._feature(self.loss.feature_weight_nogan, L, fake, ab)
            total = self.loss.l1_weight * l1 + self.loss.feature_weight_nogan * feature
        self._update(total, self.opt_nogan, self.G)
        return {"train/l1": l1.detach(), "train/feature": feature.detach(), "train/g_total": total.detach()}

    def gan_step(self, L: torch.Tensor, ab: torch.Tensor) -> Terms:
        """D: ½[BCE(D(L, G(L)), 0) + BCE(D(L, ab), 1)]; then G against the frozen D:
        adversarial_weight·BCE(D(L, G(L)), 1) + l1_weight·L1 + feature_weight_gan·VGG."""
        batch, loss = L.shape[0], self.loss
        with self.accelerator.autocast():
            fake = self.G(L)
            # One forward of the DDP-wrapped D on fake and real together: two forwards before one
            # backward trip DDP's in-place BatchNorm buffer broadcast (so BN sees the mixed batch).
            logits = self.D(torch.cat([L, L]), torch.cat([fake.detach(), ab])).float()
            d_total, d_real, d_fake = discriminator_loss(logits[batch:], logits[:batch])
        self._update(d_total, self.opt_D, self.D)

        set_requires_grad(self.D_module, False)
        with self.accelerator.autocast():
            g_adv = generator_adversarial_loss(self.D_module(L, fake).float())
            l1, feature = ab_l1(fake.float(), ab), self._feature(loss.feature_weight_gan, L, fake, ab)
            g_total = loss.adversarial_weight * g_adv + loss.l1_weight * l1 + loss.feature_weight_gan * feature
        self._update(g_total, self.opt_G, self.G)
        set_requires_grad(self.D_module, True)

        probabilities = torch.sigmoid(logits.detach())
        return {
            "train/d_total": d_total.detach(),
            "train/d_real": d_real.detach(),
            "train/d_fake": d_fake.detach(),
            "train/d_out_real": probabilities[batch:].mean(),
            "train/d_out_fake": probabilities[:batch].mean(),
            "train/g_adv": g_adv.detach(),
            "train/l1": l1.detach(),
            "train/feature": feature.detach(),
            "train/g_total": g_total.detach(),
        }

    def set_learning_rates(self, step: int) -> dict[str, float]:
        """Set the learning rates of step `step` (0-based; warm-up per phase) on the optimisers of its
        phase; return them for logging. A pure function of the step: nothing to checkpoint."""
        optim = self.cfg.optim
        if phase_at(step, self.cfg.schedule) == NOGAN:
            return {"train/lr_g": self._set_lr(self.opt_nogan, optim.nogan, step)}
        return {
            "train/lr_g": self._set_lr(self.opt_G, optim.generator, step),
            "train/lr_d": self._set_lr(self.opt_D, optim.discriminator, step),
        }

    # ---------------------------------------------------------------------------------------- helpers
    def _feature(self, weight: float, L: torch.Tensor, fake: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """The VGG feature loss when its weight is non-zero, else an exact 0 (VGG not run)."""
        if weight == 0 or self.feature_loss is None:
            return torch.zeros((), device=L.device)
        return self.feature_loss(L, fake, ab)

    def _update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        """Backward `loss`, clip `module`'s gradients when configured, step `optimizer`."""
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.cfg.optim.grad_clip > 0:
            self.accelerator.clip_grad_norm_(module.parameters(), self.cfg.optim.grad_clip)
        optimizer.step()

    def _set_lr(self, optimizer: torch.optim.Optimizer, adam: AdamConfig, step: int) -> float:
        lr = learning_rate(step, adam, self.cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


# ------------------------------------------------------------------------------------------- building
def build_models(cfg: Config, accelerator: Accelerator) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator, identically initialised on every rank, on the device, in the
    configured memory format, SyncBatchNorm'd and compiled when asked (CUDA only where noted)."""
    set_seed(cfg.run.seed)
    generator, discriminator = build_generator(cfg.model), build_discriminator(cfg.model)
    on_cuda = accelerator.device.type == "cuda"
    if on_cuda and cfg.model.sync_batchnorm and accelerator.num_processes > 1:
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    memory_format = torch.channels_last if on_cuda and cfg.model.channels_last else torch.contiguous_format
    generator = generator.to(accelerator.device).to(memory_format=memory_format)
    discriminator = discriminator.to(accelerator.device).to(memory_format=memory_format)
    if cfg.model.compile:
        # In-place compile keeps state_dict keys unchanged (no `_orig_mod.`), so checkpoints and the
        # exported generator are the same with and without it. The training shapes are fixed, so
        # static shapes; evaluation and sample grids call the eager `forward` rather than compile
        # graphs for their own batch sizes and the eval-mode BatchNorm.
        generator.compile(dynamic=False)
        discriminator.compile(dynamic=False)
    return generator, discriminator


def build_feature_loss_if_used(cfg: Config, accelerator: Accelerator) -> nn.Module | None:
    """The frozen VGG19-bn feature loss, only when a phase that runs gives it a non-zero weight."""
    used = (cfg.schedule.nogan_steps > 0 and cfg.loss.feature_weight_nogan > 0) or (
        cfg.schedule.gan_steps > 0 and cfg.loss.feature_weight_gan > 0
    )
    if not used:
        return None
    # The main process fetches the ImageNet weights into the torch hub cache first; the others then
    # read the cached file instead of all downloading it at once.
    with accelerator.main_process_first():
        loss = build_feature_loss(cfg.loss).to(accelerator.device)
    if accelerator.device.type == "cuda" and cfg.model.channels_last:
        loss = loss.to(memory_format=torch.channels_last)
    return loss


def build_optimizers(cfg: Config, generator: nn.Module, discriminator: nn.Module, device: torch.device):
    """Adam for G in NoGAN, Adam for G in GAN, Adam for D — all three exist from the start, so every
    checkpoint holds the same set and a resume lands in either phase. Fused kernels on CUDA."""
    fused = device.type == "cuda"

    def adam(params, settings: AdamConfig) -> torch.optim.Adam:
        return torch.optim.Adam(
            params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay, fused=fused or None
        )

    return (
        adam(generator.parameters(), cfg.optim.nogan),
        adam(generator.parameters(), cfg.optim.generator),
        adam(discriminator.parameters(), cfg.optim.discriminator),
    )


def build_gan(cfg: Config, accelerator: Accelerator) -> ColorizationGAN:
    """Networks, feature loss and optimisers built and `accelerator.prepare`d, as one ColorizationGAN."""
    generator, discriminator = build_models(cfg, accelerator)
    feature_loss = build_feature_loss_if_used(cfg, accelerator)
    optimizers = build_optimizers(cfg, generator, discriminator, accelerator.device)
    generator, discriminator, *optimizers = accelerator.prepare(generator, discriminator, *optimizers)
    return ColorizationGAN(accelerator, cfg, generator, discriminator, tuple(optimizers), feature_loss)
