"""The NoGAN → GAN schedule as pure functions of the step, so a resumed run needs no schedule state.

Steps are counted from 0: step `s` is the (s+1)-th optimiser step of the run. Steps
[0, nogan_steps) are NoGAN, [nogan_steps, nogan_steps + gan_steps) are GAN.
"""

from __future__ import annotations

from configs import AdamConfig, Config, ScheduleConfig

NOGAN = "nogan"
GAN = "gan"


def phase_at(step: int, schedule: ScheduleConfig) -> str:
    """The phase that step `step` (0-based) belongs to: NOGAN or GAN."""
    return NOGAN if step < schedule.nogan_steps else GAN


def phase_start(phase: str, schedule: ScheduleConfig) -> int:
    """The first (0-based) step of `phase`."""
    return 0 if phase == NOGAN else schedule.nogan_steps


def is_phase_switch(done_steps: int, schedule: ScheduleConfig) -> bool:
    """True when `done_steps` completed steps end the NoGAN phase and GAN steps follow."""
    return schedule.nogan_steps > 0 and schedule.gan_steps > 0 and done_steps == schedule.nogan_steps


def learning_rate(step: int, adam: AdamConfig, cfg: Config) -> float:
    """Learning rate for step `step` (0-based) of an optimiser configured by `adam`.

    Linear warm-up over `optim.warmup_steps` from the start of the current phase (each phase starts a
    fresh Adam for the generator and the discriminator), then constant.
    """
    warmup = cfg.optim.warmup_steps
    if warmup <= 0:
        return adam.lr
    into_phase = step - phase_start(phase_at(step, cfg.schedule), cfg.schedule)
    return adam.lr * min(1.0, (into_phase + 1) / warmup)
