"""SIGTERM / SIGINT / SIGUSR1 → a request to stop that the loop honours at the end of the current step.

A handler only sets a flag: saving a checkpoint from inside a signal handler could interrupt a
collective or an optimizer step half-way. A one-process run stops after the current step; with several
processes the ranks all-reduce the flag at the loop's next sync point (a logging step), so all stop
after the same step even when the signal reached them at different moments.

Why SIGUSR1 too: Slurm sends a job's signals to every process of the job step, W&B's service process
(`wandb-core`) included. `wandb-core` shuts down at once on SIGTERM and SIGINT but lets SIGUSR1 pass,
so `launch/slurm.sh` asks for SIGUSR1 as its time-limit warning (`--signal=USR1@120`): the run saves
its checkpoint and W&B still finishes its upload. The exit status, 128 + the signal's number (143,
130, 138), tells a job script which signal stopped the run.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Set by SIGTERM, SIGINT or SIGUSR1 once `install()` has run; `signal_name` says which arrived first."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def install(self) -> StopRequest:
        """Route the stop signals to this flag (only possible from the main thread; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before `install()`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
