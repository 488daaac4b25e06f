"""The colorization GAN of one run: G, D, the three optimisers, the losses, the generator's average,
and its three updates.

Tensors: L is L_net B×1×S×S in [-1, 1], ab is ab_net B×2×S×S in [-1, 1] (CIELAB a*, b* / 128); the
generator maps L → ab. The discriminator takes (L, ab) and returns patch logits B×1×h×w. Each update
returns its loss terms as detached 0-d tensors keyed by metric name (`train/...`), left on the device:
the loop reads them back only at its sync points (`launch/training/monitor.py`).

`build_gan(cfg, accelerator)` builds everything the same way for `launch/train.py` and
`colorize-bench step`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from configs import AdamConfig, Config
from launch.training.ema import GeneratorEMA
from launch.training.schedule import CRITIC, GAN, NOGAN, learning_rate, phase_at, phase_start
from losses import ab_l1, build_feature_loss, discriminator_loss, generator_adversarial_loss
from models import build_discriminator, build_generator

Terms = dict[str, torch.Tensor]


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze (False) or unfreeze (True) every parameter of `module` (pix2pix's helper)."""
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


@contextmanager
def batch_statistics_only(module: nn.Module):
    """Inside, `module`'s BatchNorm layers in train mode normalise with the batch's statistics as usual
    but leave their running statistics (and batch count) as they are."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


class ColorizationGAN:
    """NoGAN (G alone: L1 + VGG features), critic warm-up (D alone on the frozen G's colours) and GAN
    (D then G: BCE + L1) updates, pix2pix style; with `model.ema_decay`, the generator's average
    (`ema`) follows every G update.

    The G update runs the unwrapped discriminator (`D_module`), frozen: it only passes gradients
    through to G, and a DDP-wrapped forward whose backward gives D no gradients would leave DDP's
    reducer waiting for them. Likewise the critic warm-up runs the unwrapped generator (`G_module`)
    without gradients: nothing of G takes part in a backward.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        cfg: Config,
        generator: nn.Module,
        discriminator: nn.Module,
        optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer],
        feature_loss: nn.Module | None,
        ema: GeneratorEMA | None = None,
    ) -> None:
        self.accelerator, self.cfg, self.loss = accelerator, cfg, cfg.loss
        self.G, self.D = generator, discriminator  # as prepared: DDP-wrapped in multi-process runs
        self.G_module, self.D_module = accelerator.unwrap_model(generator), accelerator.unwrap_model(discriminator)
        self.opt_nogan, self.opt_G, self.opt_D = optimizers
        self.feature_loss = feature_loss
        self.ema = ema

    # ---------------------------------------------------------------------------------------- updates
    def nogan_step(self, L: torch.Tensor, ab: torch.Tensor) -> Terms:
        """G only: l1_weight·L1 + feature_weight_nogan·VGG feature loss, Adam `optim.nogan`."""
        with self.accelerator.autocast():
            fake = self.G(L)
            l1, feature = ab_l1(fake.float(), ab), self._feature(self.loss.feature_weight_nogan, L, fake, ab)
            total = self.loss.l1_weight * l1 + self.loss.feature_weight_nogan * feature
        self._update(total, self.opt_nogan, self.G)
        self._update_ema()
        return {"train/l1": l1.detach(), "train/feature": feature.detach(), "train/g_total": total.detach()}

    def critic_step(self, L: torch.Tensor, ab: torch.Tensor) -> Terms:
        """D alone: ½[BCE(D(L, G(L)), 0) + BCE(D(L, ab), 1)], G frozen (DeOldify's critic pretraining).

        G runs in train mode, as in the GAN phase that follows (dropout on, BatchNorm on the batch's
        statistics), so D learns the colours it will judge there; its running statistics are left as
        they are, so G's parameters and buffers end the phase exactly as NoGAN left them."""
        with torch.no_grad(), batch_statistics_only(self.G_module), self.accelerator.autocast():
            fake = self.G_module(L)
        return self._discriminator_update(L, ab, fake)

    def gan_step(self, L: torch.Tensor, ab: torch.Tensor) -> Terms:
        """D: ½[BCE(D(L, G(L)), 0) + BCE(D(L, ab), 1)]; then G against the frozen D:
        adversarial_weight·BCE(D(L, G(L)), 1) + l1_weight·L1 + feature_weight_gan·VGG."""
        loss = self.loss
        with self.accelerator.autocast():
            fake = self.G(L)
        terms = self._discriminator_update(L, ab, fake.detach())

        set_requires_grad(self.D_module, False)
        with self.accelerator.autocast():
            g_adv = generator_adversarial_loss(self.D_module(L, fake).float())
            l1, feature = ab_l1(fake.float(), ab), self._feature(loss.feature_weight_gan, L, fake, ab)
            g_total = loss.adversarial_weight * g_adv + loss.l1_weight * l1 + loss.feature_weight_gan * feature
        self._update(g_total, self.opt_G, self.G)
        set_requires_grad(self.D_module, True)
        self._update_ema()

        return terms | {
            "train/g_adv": g_adv.detach(),
            "train/l1": l1.detach(),
            "train/feature": feature.detach(),
            "train/g_total": g_total.detach(),
        }

    def set_learning_rates(self, step: int) -> dict[str, float]:
        """Set the learning rates of step `step` (0-based) on the optimisers of its phase; return them
        for logging. Each optimiser warms up from its own first step: D's from the critic warm-up's
        start (the GAN phase's when there is none), G's GAN Adam from the GAN phase's. A pure function
        of the step: nothing to checkpoint."""
        optim, schedule = self.cfg.optim, self.cfg.schedule
        phase = phase_at(step, schedule)
        if phase == NOGAN:
            return {"train/lr_g": self._set_lr(self.opt_nogan, optim.nogan, step)}
        rates = {"train/lr_d": self._set_lr(self.opt_D, optim.discriminator, step, phase_start(CRITIC, schedule))}
        if phase == GAN:
            rates["train/lr_g"] = self._set_lr(self.opt_G, optim.generator, step, phase_start(GAN, schedule))
        return rates

    # ---------------------------------------------------------------------------------------- helpers
    def _discriminator_update(self, L: torch.Tensor, ab: torch.Tensor, fake: torch.Tensor) -> Terms:
        """One D step on `fake` (no gradient to G) against the real `ab`; D's terms, with its mean
        output probability and the share of patches it classifies right on each side."""
        batch = L.shape[0]
        with self.accelerator.autocast():
            # One forward of the DDP-wrapped D on fake and real together: two forwards before one
            # backward trip DDP's in-place BatchNorm buffer broadcast (so BN sees the mixed batch).
            logits = self.D(torch.cat([L, L]), torch.cat([fake, ab])).float()
            d_total, d_real, d_fake = discriminator_loss(logits[batch:], logits[:batch])
        self._update(d_total, self.opt_D, self.D)
        logits = logits.detach()
        probabilities = torch.sigmoid(logits)
        return {
            "train/d_total": d_total.detach(),
            "train/d_real": d_real.detach(),
            "train/d_fake": d_fake.detach(),
            "train/d_out_real": probabilities[batch:].mean(),
            "train/d_out_fake": probabilities[:batch].mean(),
            "train/d_acc_real": (logits[batch:] > 0).float().mean(),
            "train/d_acc_fake": (logits[:batch] < 0).float().mean(),
        }

    def _update_ema(self) -> None:
        """After a G update: the average follows (outside autocast, in fp32, no host sync)."""
        if self.ema is not None:
            self.ema.update()

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

    def _set_lr(
        self, optimizer: torch.optim.Optimizer, adam: AdamConfig, step: int, first_step: int | None = None
    ) -> float:
        lr = learning_rate(step, adam, self.cfg, first_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


# ------------------------------------------------------------------------------------------- building
def memory_format(cfg: Config, accelerator: Accelerator) -> torch.memory_format:
    """channels_last on CUDA when configured (faster bf16 convolutions), else contiguous."""
    on_cuda = accelerator.device.type == "cuda"
    return torch.channels_last if on_cuda and cfg.model.channels_last else torch.contiguous_format


def build_models(cfg: Config, accelerator: Accelerator) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator, identically initialised on every rank, on the device, in the
    configured memory format, SyncBatchNorm'd and compiled when asked (CUDA only where noted)."""
    set_seed(cfg.run.seed)
    generator, discriminator = build_generator(cfg.model), build_discriminator(cfg.model)
    on_cuda = accelerator.device.type == "cuda"
    if on_cuda and cfg.model.sync_batchnorm and accelerator.num_processes > 1:
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    generator = generator.to(accelerator.device).to(memory_format=memory_format(cfg, accelerator))
    discriminator = discriminator.to(accelerator.device).to(memory_format=memory_format(cfg, accelerator))
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


def build_ema(cfg: Config, accelerator: Accelerator, generator: nn.Module) -> GeneratorEMA | None:
    """The average of `generator` (unwrapped) when `model.ema_decay` > 0: an eager plain generator on the
    same device and in the same memory format, starting as a copy. Built on the meta device and then
    filled, so it draws no random numbers (the run's random streams are those of a run without it)."""
    if cfg.model.ema_decay == 0:
        return None
    with torch.device("meta"):
        average = build_generator(cfg.model)
    average = average.to_empty(device=accelerator.device).to(memory_format=memory_format(cfg, accelerator))
    return GeneratorEMA(generator, average, cfg.model.ema_decay)


def build_gan(cfg: Config, accelerator: Accelerator) -> ColorizationGAN:
    """Networks, feature loss and optimisers built and `accelerator.prepare`d, and the generator's
    average when configured, as one ColorizationGAN. The average is not registered for checkpointing
    here: the caller registers it after its own objects (`launch/train.py`)."""
    generator, discriminator = build_models(cfg, accelerator)
    feature_loss = build_feature_loss_if_used(cfg, accelerator)
    optimizers = build_optimizers(cfg, generator, discriminator, accelerator.device)
    generator, discriminator, *optimizers = accelerator.prepare(generator, discriminator, *optimizers)
    ema = build_ema(cfg, accelerator, accelerator.unwrap_model(generator))
    return ColorizationGAN(accelerator, cfg, generator, discriminator, tuple(optimizers), feature_loss, ema)
