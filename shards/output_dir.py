"""Claim the output folder for a build, refusing anything that would mix or overwrite another build.

OUT may be new, empty, hold unrelated files, or hold an earlier (possibly killed) run of the *same*
build (same options, same source: the same image paths with the same sizes and modification times):
that one is resumed. OUT holding a manifest, progress record or shard files of a different build is
refused with one line, naming the first source file that differs when the source is what changed (a
re-encoded copy of the folder, a file replaced since), and nothing in it is touched. Parts of one
build (`--part K/N`) share OUT, possibly at the same time: each clears only the stale temporary files
of its own shards. The caller holds OUT's lock (`shards.lock`) before `claim_output`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from configs.atomic import TEMP_FILE
from pipeline.shard_list import MANIFEST_FILE
from shards.errors import BuildError
from shards.plan import first_difference
from shards.progress import PROGRESS_DIR, read_json, read_plan_record, read_source_files, write_plan_record
from shards.tar_writer import TEMP_SUFFIX

SHARD_FILE = re.compile(r"^(train|val)-\d{6}\.tar(\.idx)?$")
SHARD_TEMP_FILE = re.compile(r"^(train|val)-\d{6}\.tar(\.idx)?" + re.escape(TEMP_SUFFIX) + "$")


def differences(recorded: dict, wanted: dict) -> str:
    keys = sorted(set(recorded) | set(wanted))
    return ", ".join(f"{k}: {recorded.get(k)!r} → {wanted.get(k)!r}" for k in keys if recorded.get(k) != wanted.get(k))


def prepare_output(out: Path) -> None:
    """Create OUT (and parents) or check the one there; `BuildError` when it cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"output {str(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BuildError(f"cannot create output folder {str(out)!r}: {error.strerror or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BuildError(f"output folder {str(out)!r} is not writable")


def claim_output(
    out: Path, source, options: dict, plan_sha256: str, files: list[list], owned: set[str] | None = None
) -> None:
    """Check OUT holds nothing of another build, record the plan (and its source `files`,
    `plan.source_files`), delete stale temporary shard files of a killed run (only those of the
    shards named in `owned`, when given: other parts may be writing theirs)."""
    out = Path(out)
    refuse = f"output folder {str(out)!r} holds shards built"
    advice = "choose another output folder or delete it"
    plan = read_plan_record(out)
    manifest = read_json(out / MANIFEST_FILE) if (out / MANIFEST_FILE).exists() else None
    for recorded, what in ((plan, f"{PROGRESS_DIR}/plan.json"), (manifest, MANIFEST_FILE)):
        if recorded is None:
            continue
        if not isinstance(recorded, dict) or not isinstance(recorded.get("options"), dict):
            raise BuildError(f"{out / what}: unreadable record of an earlier build; {advice}")
        if recorded["options"] != options:
            changed = differences(recorded["options"], options)
            raise BuildError(f"{refuse} with other options ({changed}); {advice}")
        if recorded.get("plan_sha256") != plan_sha256:
            recorded_files = read_source_files(out)
            difference = first_difference(recorded_files, files) if recorded_files is not None else None
            what_changed = (
                f"other source files (first difference: {difference})"
                if difference
                else f"a different source listing (was {recorded.get('source')!r}; files added, removed, renamed or changed since)"
            )
            raise BuildError(f"{refuse} from {what_changed}; {advice}")
    if plan is None and manifest is None and any(SHARD_FILE.match(p.name) for p in out.iterdir()):
        raise BuildError(f"{refuse} by something else (shard files without a manifest or progress record); {advice}")

    progress = out / PROGRESS_DIR
    for stale in [*out.iterdir(), *(progress.iterdir() if progress.is_dir() else ())]:
        if owned is not None:
            if SHARD_TEMP_FILE.match(stale.name) and stale.name.split(".tar", 1)[0] + ".tar" in owned:
                stale.unlink(missing_ok=True)
        elif SHARD_TEMP_FILE.match(stale.name) or TEMP_FILE.match(stale.name):
            stale.unlink()
    if plan is None:
        write_plan_record(out, {"source": str(source), "options": options, "plan_sha256": plan_sha256}, files)
