"""Step timing: images/s, step time, the fraction of it spent waiting for data, and the time left.

On CUDA the loop synchronises once per step (it reads the reduced losses), so wall-clock intervals
between steps are real step times, not kernel-launch times.
"""

from __future__ import annotations

import time

from launch.config import ScheduleConfig
from launch.training.schedule import GAN, NOGAN


class StepTimer:
    """Accumulates wall time per logging window and a running mean step time per phase."""

    def __init__(self, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self._step_start = 0.0
        self._window_wait = 0.0
        self._window_total = 0.0
        self._window_steps = 0
        self._phase_time = {NOGAN: 0.0, GAN: 0.0}
        self._phase_steps = {NOGAN: 0, GAN: 0}

    def start_step(self) -> None:
        """Call before asking the loader for the batch."""
        self._step_start = time.perf_counter()

    def data_ready(self) -> None:
        """Call when the batch is in hand: the time since `start_step` was spent waiting for data."""
        self._window_wait += time.perf_counter() - self._step_start

    def end_step(self, phase: str) -> None:
        """Call once the step's results are known (after the per-step synchronisation)."""
        elapsed = time.perf_counter() - self._step_start
        self._window_total += elapsed
        self._window_steps += 1
        self._phase_time[phase] += elapsed
        self._phase_steps[phase] += 1

    def seconds_per_step(self, phase: str) -> float | None:
        """Mean measured step time of `phase` in this process's lifetime, or None before its first step."""
        steps = self._phase_steps[phase]
        return self._phase_time[phase] / steps if steps else None

    def eta_hours(self, done_steps: int, schedule: ScheduleConfig) -> float:
        """Projected hours to finish the schedule from measured per-phase step times; a phase not yet
        timed is projected at the rate of the phase that has been."""
        nogan_left = max(0, schedule.nogan_steps - done_steps)
        gan_left = schedule.nogan_steps + schedule.gan_steps - done_steps - nogan_left
        nogan_rate = self.seconds_per_step(NOGAN)
        gan_rate = self.seconds_per_step(GAN)
        nogan_rate = nogan_rate if nogan_rate is not None else (gan_rate or 0.0)
        gan_rate = gan_rate if gan_rate is not None else nogan_rate
        return (nogan_left * nogan_rate + gan_left * gan_rate) / 3600.0

    def window(self) -> dict[str, float]:
        """perf/images_per_s, perf/step_ms, data/wait_fraction over the steps since the last call."""
        steps, total = self._window_steps, self._window_total
        values = {
            "perf/images_per_s": self.images_per_step * steps / total if total > 0 else 0.0,
            "perf/step_ms": 1000.0 * total / steps if steps else 0.0,
            "data/wait_fraction": self._window_wait / total if total > 0 else 0.0,
        }
        self._window_wait = self._window_total = 0.0
        self._window_steps = 0
        return values
