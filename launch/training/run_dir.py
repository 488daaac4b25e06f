"""A run directory is one training run: starting a fresh run over an old one is refused, or, with
`--overwrite`, the old one is moved aside (never deleted).

Without this, a fresh start would overwrite the old run's exported generator, truncate its
`metrics.jsonl`, and `checkpoint.keep_last` would later prune the new run's checkpoints while keeping
the old run's, so a `--resume` would mix two runs.
"""

from __future__ import annotations

from pathlib import Path

from configs import ConfigError

RUN_FILES = ("checkpoints", "metrics.jsonl", "generator.safetensors")
"""What makes a directory hold a run: any checkpoint, any logged step, or an exported generator."""


def previous_run(run_dir: Path) -> list[str]:
    """The names in `run_dir` that belong to an earlier run (empty when there is none)."""
    found = []
    for name in RUN_FILES:
        path = run_dir / name
        if (path.is_dir() and any(path.iterdir())) or path.is_file():
            found.append(name)
    return found


def check_fresh_start(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Raise ConfigError (one line naming both ways on) when a fresh start would reuse `run_dir`."""
    if resume or overwrite:
        return
    found = previous_run(run_dir)
    if found:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(found)}): add --resume to continue it, "
            "or --overwrite to move it aside and start over"
        )


def set_aside(run_dir: Path) -> Path | None:
    """Rename an earlier run in `run_dir` to `<run_dir>.old-<n>` (the first free n); returns the new
    path, or None when `run_dir` holds no run (then nothing moves)."""
    if not previous_run(run_dir):
        return None
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.old-{n}")).exists():
        n += 1
    run_dir.rename(target)
    return target
