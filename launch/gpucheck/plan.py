"""`make gpu-kit`: the GPU check's three device calls — what each carries and runs, its bytes and time.

    python -m launch.gpucheck.plan [--force] [--preset 9]

Builds (or reuses) the kit (`launch.gpucheck.kit`: three equal chunks), stamps the code that will
travel (`launch.gpucheck.provenance`: commit, dirty flag, file digests in `.gpu-kit/source.json`),
then for each call adds up what it would carry — the working tree (tracked files and the untracked
files git does not ignore) plus its `carry` paths — and fails, naming the largest files, when one
exceeds `LIMIT_BYTES` (60 MiB, 4 MiB under the 64 MiB a call may carry). Last it prints the three calls
in order and how their budgets fit the node's 15 minutes: a 2-minute start, the three budgets and the
transfers within `WINDOW_S` (13 minutes), leaving 2 for the gaps between calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from launch.gpucheck import kit as gpukit
from launch.gpucheck import provenance
from launch.gpucheck.check import COMMANDS

REPO = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 60 * gpukit.MiB
"""Most a call may carry here: 4 MiB under the node's 64 MiB, so a stray file does not sink it."""
START_S = 120
"""The node's start (1–2 minutes), counted in its 15 minutes."""
TRANSFER_S = 10
"""Seconds to send one call's ~60 MiB and return its files (an estimate)."""
WINDOW_S = 13 * 60
"""Start, budgets and transfers must fit here, 2 of the node's 15 minutes left for the gaps between calls."""
TIMEOUT_MARGIN_S = 30
"""A call's `timeout_s` over its command's budget: the check ends itself at the budget."""


@dataclass(frozen=True)
class DeviceCall:
    number: int
    carry: tuple[str, ...]
    command: str
    budget_s: int
    timeout_s: int
    returns: str


def device_calls(manifest: dict, kit_dir: Path = gpukit.KIT_DIR) -> list[DeviceCall]:
    """One call per command, chunk N travelling with command N, each with the manifest and the stamp
    (so every call can check its chunk and name its code)."""
    chunks = [chunk["name"] for chunk in manifest["chunks"]]
    if len(chunks) != len(COMMANDS):
        raise gpukit.KitError(f"{kit_dir / gpukit.MANIFEST}: {len(chunks)} chunks for {len(COMMANDS)} calls")
    return [
        DeviceCall(
            command.number,
            (f"{kit_dir}/{gpukit.MANIFEST}", f"{kit_dir}/{provenance.STAMP}", f"{kit_dir}/{chunk}"),
            f"python3 -m launch.gpucheck.check {command.number} --out $OUT",
            command.budget_s,
            command.budget_s + TIMEOUT_MARGIN_S,
            command.returns,
        )
        for command, chunk in zip(COMMANDS, chunks, strict=True)
    ]


def travelling_bytes(repo: Path, call: DeviceCall) -> tuple[int, list[tuple[int, str]]]:
    """(bytes `call` carries from `repo`, every file it carries as (bytes, path), largest first)."""
    listed = [((repo / name).stat().st_size, name) for name in provenance.travelling_files(repo)]
    listed += [((repo / path).stat().st_size if (repo / path).is_file() else 0, path) for path in call.carry]
    return sum(size for size, _ in listed), sorted(listed, reverse=True)


def over_limit(repo: Path, calls: list[DeviceCall]) -> tuple[list[int], list[str]]:
    """(bytes each call carries, one line per call over `LIMIT_BYTES` naming its largest files)."""
    sizes, problems = [], []
    for call in calls:
        total, listed = travelling_bytes(repo, call)
        sizes.append(total)
        if total > LIMIT_BYTES:
            largest = ", ".join(f"{path} ({size / gpukit.MiB:.1f} MiB)" for size, path in listed[:6])
            problems.append(
                f"call {call.number} would carry {total / gpukit.MiB:.2f} MiB, over {LIMIT_BYTES / gpukit.MiB:.0f} MiB; "
                f"largest files: {largest}"
            )
    return sizes, problems


def window_seconds(calls: list[DeviceCall]) -> int:
    """The node's start, the budgets and the transfers of `calls`, in seconds."""
    return START_S + sum(call.budget_s + TRANSFER_S for call in calls)


def tool_call(call: DeviceCall) -> str:
    """The call as the device tool takes it."""
    return f"carry {json.dumps(list(call.carry))}, timeout_s {call.timeout_s}, command: {call.command}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.gpucheck.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, default=gpukit.KIT_DIR, help="kit folder (default .gpu-kit)")
    parser.add_argument("--preset", type=int, default=gpukit.PRESET, choices=range(10), help="xz preset")
    parser.add_argument("--force", action="store_true", help="pack the kit again even when it is up to date")
    args = parser.parse_args(argv)
    try:
        manifest = gpukit.build(args.kit, len(COMMANDS), args.preset, args.force)
        stamp = provenance.write_stamp(REPO, args.kit / provenance.STAMP)
        calls = device_calls(manifest, args.kit)
    except (gpukit.KitError, provenance.ProvenanceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(gpukit.describe(manifest)))
    print(f"code: {stamp['commit'][:12]}{' (dirty: uncommitted changes travel too)' if stamp['dirty'] else ''}")
    print(f"\n{'call':>4} {'carries':>12} {'budget':>7} {'timeout':>8}  returns")
    over = []
    for call in calls:
        total, listed = travelling_bytes(REPO, call)
        print(
            f"{call.number:>4} {total / gpukit.MiB:8.2f} MiB {call.budget_s:6d}s {call.timeout_s:7d}s  {call.returns}"
        )
        if total > LIMIT_BYTES:
            largest = ", ".join(f"{path} ({size / gpukit.MiB:.1f} MiB)" for size, path in listed[:6])
            over.append(f"call {call.number} carries {total / gpukit.MiB:.2f} MiB > 60 MiB; largest: {largest}")
    seconds = window_seconds(calls)
    print(
        f"time on the node: {START_S} s start + {' + '.join(str(c.budget_s) for c in calls)} s budgets + "
        f"{len(calls)} × {TRANSFER_S} s transfers = {seconds} s ({seconds / 60:.1f} of 15 min; at most {WINDOW_S / 60:.0f})"
    )
    if over:
        print("error: " + "\nerror: ".join(over), file=sys.stderr)
        return 1
    if seconds > WINDOW_S:
        print(f"error: the calls need {seconds} s, more than {WINDOW_S} s", file=sys.stderr)
        return 1
    print("\ndevice calls, one right after the other (the node is reclaimed 30 s after a call returns):")
    for call in calls:
        print(f"  call {call.number}: {tool_call(call)}")
    print("(each runs in the copied working tree with the node's python3; the node has no make)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
