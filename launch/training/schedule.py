"""The NoGAN → critic → GAN schedule as pure functions of the step, so a resumed run needs no schedule state.

Steps are counted from 0: step `s` is the (s+1)-th optimiser step of the run. Steps
[0, nogan_steps) are NoGAN (G alone), the next `critic_steps` are the critic warm-up (D alone on the
frozen G's colours, DeOldify's critic pretraining), and the `gan_steps` after them are GAN (D then G).
A phase of 0 steps is skipped.
"""

from __future__ import annotations

from configs import AdamConfig, Config, ScheduleConfig

NOGAN = "nogan"
CRITIC = "critic"
GAN = "gan"
PHASES = (NOGAN, CRITIC, GAN)
"""In schedule order."""
TITLES = {NOGAN: "NoGAN", CRITIC: "critic warm-up", GAN: "GAN"}
"""Each phase's name in messages to the user."""


def phase_steps(phase: str, schedule: ScheduleConfig) -> int:
    """How many steps `phase` runs."""
    return {NOGAN: schedule.nogan_steps, CRITIC: schedule.critic_steps, GAN: schedule.gan_steps}[phase]


def phase_start(phase: str, schedule: ScheduleConfig) -> int:
    """The first (0-based) step of `phase` (where it would start when it has no steps)."""
    return sum(phase_steps(p, schedule) for p in PHASES[: PHASES.index(phase)])


def phase_end(phase: str, schedule: ScheduleConfig) -> int:
    """One past the last (0-based) step of `phase`."""
    return phase_start(phase, schedule) + phase_steps(phase, schedule)


def phase_at(step: int, schedule: ScheduleConfig) -> str:
    """The phase that step `step` (0-based) belongs to; steps past the schedule count as GAN."""
    for phase in (NOGAN, CRITIC):
        if step < phase_end(phase, schedule):
            return phase
    return GAN


def is_phase_start(step: int, schedule: ScheduleConfig) -> bool:
    """True when step `step` (0-based) is the first step of its phase."""
    return step == phase_start(phase_at(step, schedule), schedule)


def is_phase_switch(done_steps: int, schedule: ScheduleConfig) -> bool:
    """True when `done_steps` completed steps end a phase and another phase's steps follow."""
    total = phase_end(GAN, schedule)
    return 0 < done_steps < total and phase_at(done_steps - 1, schedule) != phase_at(done_steps, schedule)


def steps_left(phase: str, done_steps: int, schedule: ScheduleConfig) -> int:
    """Steps of `phase` still to run after `done_steps` completed steps."""
    return max(0, phase_end(phase, schedule) - max(done_steps, phase_start(phase, schedule)))


def learning_rate(step: int, adam: AdamConfig, cfg: Config, first_step: int | None = None) -> float:
    """Learning rate for step `step` (0-based) of an optimiser configured by `adam`.

    Linear warm-up over `optim.warmup_steps` from the optimiser's `first_step` (default: the start of
    the current phase), then constant. Each optimiser starts fresh where its network starts training
    in it: G's NoGAN Adam at step 0, D's Adam at the critic warm-up (or at GAN without one), G's GAN
    Adam at GAN; its first moment estimates are poor there.
    """
    warmup = cfg.optim.warmup_steps
    if warmup <= 0:
        return adam.lr
    if first_step is None:
        first_step = phase_start(phase_at(step, cfg.schedule), cfg.schedule)
    return adam.lr * min(1.0, (step - first_step + 1) / warmup)
