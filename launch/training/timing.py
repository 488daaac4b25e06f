"""Step timing: images/s, step time, the fraction of it spent waiting for data, and the time left.

The loop reads the clock only at its sync points (logging, pictures, eval, checkpoints), where the
host has waited for the device: between two of them the CPU queues steps ahead of the GPU, so a
per-step wall-clock interval would measure kernel launches, not steps. A window is the run of steps
between two sync points; its wall time, divided by its steps, is the real step time. Work done at a
sync point itself (evaluation, saving) is outside every window.

Data wait: on the CPU, the time blocked in the loader. On CUDA, what matters is the time the *GPU*
waits: a CUDA event is recorded on the compute stream before the batch is asked for and another once
it is in hand; the GPU time between them is the stall the loader caused (zero when the CPU had queued
enough work ahead, however long the CPU itself waited), plus the copy of the batch. Events are read
at the sync point, when both have completed.
"""

from __future__ import annotations

import time

import torch

from configs import ScheduleConfig
from launch.training.schedule import PHASES, steps_left


class StepTimer:
    """Accumulates wall time and data wait per window, and a running mean step time per phase."""

    def __init__(self, images_per_step: int, device: torch.device) -> None:
        self.images_per_step = images_per_step
        self.cuda = device.type == "cuda"
        self.device = device
        self._segment_start: float | None = None
        self._wait_started = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._segment_steps = 0
        self._window_wait = 0.0
        self._window_total = 0.0
        self._window_steps = 0
        self._phase_time = dict.fromkeys(PHASES, 0.0)
        self._phase_steps = dict.fromkeys(PHASES, 0)

    def start_step(self) -> None:
        """Call before asking the loader for the batch."""
        now = time.perf_counter()
        if self._segment_start is None:  # first step after a sync point: the window's clock starts
            self._segment_start = now
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append((event, torch.cuda.Event(enable_timing=True)))
        else:
            self._wait_started = now

    def data_ready(self) -> None:
        """Call when the batch is in hand (on CUDA: after its copy to the compute stream is queued)."""
        if self.cuda:
            self._events[-1][1].record()
        else:
            self._window_wait += time.perf_counter() - self._wait_started

    def end_step(self) -> None:
        """Call after the step's work is queued."""
        self._segment_steps += 1

    def sync(self, phase: str) -> None:
        """At a sync point, before any evaluation or saving: wait for the device, close the window's
        clock and book it to `phase` (a window never spans the phase switch, which is a sync point)."""
        if self._segment_start is None:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._window_wait += sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
            self._events.clear()
        elapsed = time.perf_counter() - self._segment_start
        self._segment_start = None
        self._window_total += elapsed
        self._window_steps += self._segment_steps
        self._phase_time[phase] += elapsed
        self._phase_steps[phase] += self._segment_steps
        self._segment_steps = 0

    def seconds_per_step(self, phase: str) -> float | None:
        """Mean measured step time of `phase` in this process's lifetime, or None before its first step."""
        steps = self._phase_steps[phase]
        return self._phase_time[phase] / steps if steps else None

    def eta_hours(self, done_steps: int, schedule: ScheduleConfig) -> float:
        """Projected hours to finish the schedule (NoGAN, critic warm-up, GAN) from measured per-phase
        step times; a phase not yet timed is projected at the mean rate of the phases that have been."""
        rates = {phase: self.seconds_per_step(phase) for phase in PHASES}
        timed = [rate for rate in rates.values() if rate is not None]
        guess = sum(timed) / len(timed) if timed else 0.0
        seconds = sum(
            steps_left(phase, done_steps, schedule) * (guess if rate is None else rate) for phase, rate in rates.items()
        )
        return seconds / 3600.0

    def window(self) -> dict[str, float]:
        """perf/images_per_s, perf/step_ms, data/wait_fraction over the steps since the last call."""
        steps, total = self._window_steps, self._window_total
        values = {
            "perf/images_per_s": self.images_per_step * steps / total if total > 0 else 0.0,
            "perf/step_ms": 1000.0 * total / steps if steps else 0.0,
            "data/wait_fraction": min(1.0, self._window_wait / total) if total > 0 else 0.0,
        }
        self._window_wait = self._window_total = 0.0
        self._window_steps = 0
        return values
