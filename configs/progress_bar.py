"""Progress bars that suit where stderr goes: tqdm's live bar on a terminal, plain lines in a log.

A carriage-return bar written to a file (Slurm's `slurm-*.out`, `nohup.out`, `accelerate launch … 2> log`)
is one endless line that `grep` calls binary. When the stream is not a terminal the same tqdm object
prints one whole line every `LOG_INTERVAL_S` seconds (and at the start and the end) instead. Shared by
the shard build and training, hence here with the lowest package that needs it; plain Python and tqdm
only, so the shard builder's workers can import it without torch.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines in a log file."""

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _WholeLines:
    """The stream tqdm writes to when it is not a terminal: each refresh becomes one line, and tqdm's
    carriage returns and clearing writes (spaces) are dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(*, total: int, desc: str, file: TextIO | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on `file` (default stderr): live on a terminal, a line per `LOG_INTERVAL_S` in a log.
    `kwargs` go to tqdm (`initial`, `unit`, `disable`, `smoothing`, …)."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True, **kwargs)
    return tqdm(
        total=total,
        desc=desc,
        file=_WholeLines(stream),
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        bar_format=LOG_FORMAT,
        **kwargs,
    )
