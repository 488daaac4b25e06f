"""The GPU check: three commands, one per device call, each measuring what it can with what has arrived.

    python3 -m launch.gpucheck.check N --out DIR [--kit .gpu-kit] [--images 3000] [--dry-run]

The GPU node is air-gapped and bare (no DALI, no network), receives at most 64 MiB per call and is
reclaimed 30 s after a call ends, so each call's command must bring back figures on its own. Command
N runs the stages of `COMMANDS[N-1]` in order, cheapest and least dependent first:
  1. facts; the training-step benchmark of both phases, eager bf16, at batch 64, 128 and 256.
  2. facts; a `torch.profiler` trace of 5 steps per phase and peak memory; the step benchmark with
     `torch.compile` (compile seconds, recompiles, step rates, peak memory).
  3. facts; ImageNet-like shards built there; the kit (all three chunks) unpacked, DALI imported and
     a batch decoded with it; the loaders against the bare-decode ceiling; a short real training run;
     `pytest -m gpu` last.
Each stage runs in a subprocess under its own limit; the limits add up to no more than the command's
budget, so the command ends on its own terms before the call's timeout (`launch.gpucheck.plan`).

`DIR/check-N.json` (each stage's status, seconds and figures) is rewritten before and after every
stage, so a command killed midway still returns what finished. `DIR/check-N.log` holds every
program's output and `DIR/check-N-dmon.txt` an `nvidia-smi dmon` trace (utilisation of SMs, memory and
JPEG engines, clocks, power, memory use, once a second) of the whole command. Command 2 adds the
gzipped traces, command 3 the training run's metrics and pytest's JUnit XML: at most 8 files.

Without CUDA (or with `--dry-run`) the GPU stages are recorded as "not run" with the reason, and the
rest runs (facts, a 48-image shard build, the kit): a rehearsal of the node on any machine
(`launch.gpucheck.rehearse`). The exit
status is 0 unless the check itself breaks: failed stages are results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from configs.atomic import write_text_atomic
from launch.gpucheck import kit as gpukit
from launch.gpucheck import stages
from launch.gpucheck.stages import REPO, Context, StageFailed

RESERVE_S = 3.0
"""Seconds of each command's budget kept for writing its results and table."""
MIN_STAGE_S = 5.0
NOT_RUN = "not run"


@dataclass(frozen=True)
class Stage:
    """One measured stage: `run(ctx)` returns its figures or raises `StageFailed`."""

    name: str
    limit_s: int
    run: Callable[[Context], dict]
    needs_cuda: bool = False
    needs_kit: bool = False
    needs_shards: bool = False
    takes_rest: bool = False
    """The last stage of each command: its limit is whatever the earlier stages left of the budget
    (at least its own `limit_s` when they kept to theirs)."""


@dataclass(frozen=True)
class Command:
    number: int
    budget_s: int
    returns: str
    stages: tuple[Stage, ...]


STEP_IMPORTS = ("launch.bench.step", "launch.train")
COMMANDS = (
    Command(
        1,
        100,
        "facts; images/s, step ms, TFLOP/s, share of peak and peak memory per phase at batch 64, 128, 256 (eager bf16)",
        (
            Stage("facts", 20, stages.facts(STEP_IMPORTS)),
            Stage(
                "step",
                77,
                stages.bench_step("step", "--batch-sizes", "64,128,256", "--steps", "20", "--warmup", "3"),
                needs_cuda=True,
                takes_rest=True,
            ),
        ),
    ),
    Command(
        2,
        170,
        "a gzipped torch.profiler trace of 5 steps per phase with peak memory; compile seconds, recompiles, "
        "images/s and peak memory per phase with torch.compile",
        (
            Stage("facts", 20, stages.facts(STEP_IMPORTS)),
            Stage(
                "profile",
                40,
                stages.bench_step(
                    "profile",
                    "--batch-sizes",
                    "64",
                    "--steps",
                    "5",
                    "--warmup",
                    "2",
                    "--profile-steps",
                    "5",
                    profile=True,
                ),
                needs_cuda=True,
            ),
            Stage(
                "compile",
                107,
                stages.bench_step("compile", "--compile", "--batch-sizes", "64", "--steps", "20", "--warmup", "3"),
                needs_cuda=True,
                takes_rest=True,
            ),
        ),
    ),
    Command(
        3,
        360,
        "the kit's DALI and nvJPEG versions; loader images/s against the decode ceiling at hw_decoder_load "
        "0/0.65/1 and whether the hardware decoder took part; per-phase images/s, data wait and losses of a "
        "real training run; pytest -m gpu counts and JUnit XML",
        (
            Stage("facts", 20, stages.facts(("launch.train",))),
            Stage("shards", 25, stages.shards_stage),
            Stage("kit", 40, stages.kit_stage),
            Stage("loaders", 70, stages.loaders_stage, needs_cuda=True, needs_kit=True, needs_shards=True),
            Stage("train", 120, stages.train_stage, needs_cuda=True, needs_kit=True, needs_shards=True),
            Stage("pytest-gpu", 82, stages.pytest_stage, needs_cuda=True, takes_rest=True),
        ),
    ),
)


# ---------------------------------------------------------------------------------------------- runner


def not_run_reason(ctx: Context, stage: Stage) -> str | None:
    """Why `stage` cannot run now (None when it can)."""
    if stage.needs_cuda and not ctx.cuda:
        if ctx.dry_run:
            return "GPU stage: dry run (--dry-run)"
        return "GPU stage: no CUDA on this machine (torch.cuda.is_available() is False, or facts failed)"
    if stage.needs_kit and not ctx.kit_ready:
        return f"needs DALI: {ctx.kit_problem}"
    if stage.needs_shards and ctx.shards is None:
        return "needs the shards stage, which did not finish"
    return None


def run_stage(ctx: Context, stage: Stage, deadline: float, record: dict) -> None:
    """Run one stage within its limit and the command's deadline, filling `record` (never raises)."""
    if (reason := not_run_reason(ctx, stage)) is not None:
        record |= {"status": NOT_RUN, "reason": reason}
        return
    remaining = deadline - time.monotonic() - RESERVE_S
    ctx.limit_s = remaining if stage.takes_rest else min(stage.limit_s, remaining)
    if ctx.limit_s < MIN_STAGE_S:
        record |= {"status": NOT_RUN, "reason": "out of time (the command's budget is spent)"}
        return
    record["limit_s"] = round(ctx.limit_s)
    print(f"[check {ctx.command}] {stage.name} (limit {ctx.limit_s:.0f} s) …", flush=True)
    started = time.monotonic()
    try:
        record |= {"status": "ok", "figures": stage.run(ctx)}
    except StageFailed as failed:
        record |= {"status": "timed out" if failed.timed_out else "failed", "reason": str(failed)}
        if failed.figures is not None:
            record["figures"] = failed.figures
        record["log_tail"] = failed.tail
        print(f"[check {ctx.command}] {stage.name}: {record['status']}: {failed}\n{failed.tail[-1500:]}", flush=True)
    except Exception as error:  # a bug in one stage must not lose the others' results
        record |= {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        print(f"[check {ctx.command}] {stage.name} failed: {type(error).__name__}: {error}", flush=True)
    record["seconds"] = round(time.monotonic() - started, 1)


def start_utilisation_trace(path: Path) -> subprocess.Popen | None:
    """`nvidia-smi dmon` in the background (power/temperature, utilisation incl. JPEG engines, clocks,
    memory; one line a second, with date and time) into `path`; None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    with open(path, "w") as file:
        return subprocess.Popen(
            [exe, "dmon", "-s", "pucm", "-o", "DT"],
            stdout=file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_utilisation_trace(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def headline(record: dict) -> str:
    """The table's one-line summary of a stage."""
    figures = record.get("figures") or {}
    if record["status"] != "ok":
        return str(record.get("reason", ""))[:100]
    name = record["name"]
    if name == "facts":
        code = figures.get("code", {})
        return (
            f"{figures.get('gpu') or 'no GPU'}; torch {figures.get('torch')} CUDA {figures.get('cuda')}; "
            f"{figures.get('cpu_count')} cores; code {str(code.get('commit'))[:10]} matches stamp: {code.get('matches')}"
        )
    if name == "kit":
        return f"DALI {figures.get('dali')}, nvJPEG {figures.get('nvjpeg')}; kit on path: {figures.get('kit_on_path', 'no kit')}"
    if name == "shards":
        return f"{figures.get('images')} images in {figures.get('seconds')} s"
    if name in ("step", "profile", "compile"):
        return "; ".join(
            f"b{run['batch']} "
            + " ".join(
                f"{phase} {row['images_per_s']:.0f}/s {row['peak_memory_gib'] or 0:.0f}GiB"
                for phase, row in run["phases"].items()
            )
            for run in figures.get("runs", [])
        )[:110]
    if name == "loaders":
        rates = ", ".join(f"{k} {v.get('images_per_s')}" for k, v in figures.get("backends", {}).items())
        return f"{rates}; ceiling {figures.get('decode_ceiling_images_per_s')}; hw {figures.get('hardware_decoder', {}).get('used')}"
    if name == "train":
        return "; ".join(
            f"{phase} {p.get('images_per_s_mean')}/s wait {p.get('data_wait_fraction_mean')}"
            for phase, p in figures.get("phases", {}).items()
        )
    if name == "pytest-gpu":
        return ", ".join(f"{n} {word}" for word, n in figures.items() if isinstance(n, int))
    return json.dumps(figures)[:100]


def print_table(results: dict) -> None:
    print(
        f"\ncommand {results['command']} of {len(COMMANDS)} (budget {results['budget_s']} s, took {results['seconds']} s)"
    )
    print(f"{'stage':11s} {'status':9s} {'s':>6s}  figures")
    for record in results["stages"]:
        print(f"{record['name']:11s} {record['status']:9s} {record.get('seconds', 0):6.1f}  {headline(record)}")
    print(f"results: {results['out']}/check-{results['command']}.json; returned files: {', '.join(results['files'])}")


def run_command(number: int, out: Path, kit_dir: Path, images: int, dry_run: bool) -> dict:
    """Run command `number`'s stages into `out`; returns the results (also written there)."""
    command = COMMANDS[number - 1]
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"colorize-gpucheck-{number}-"))
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        WANDB_MODE="disabled",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    ctx = Context(
        command=number, out=out.resolve(), work=work, kit_dir=kit_dir, images=images, dry_run=dry_run, env=env
    )
    ctx.log.write_text("")
    started = time.monotonic()
    deadline = started + command.budget_s
    results: dict = {
        "command": number,
        "budget_s": command.budget_s,
        "returns": command.returns,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dry_run": dry_run,
        "cuda": False,
        "out": str(out),
        "stages": [],
        "files": [],
        "seconds": 0.0,
    }

    def save() -> None:
        results["seconds"] = round(time.monotonic() - started, 1)
        results["cuda"] = ctx.cuda
        results["files"] = sorted(path.name for path in ctx.out.iterdir() if path.is_file())
        write_text_atomic(ctx.path(".json"), json.dumps(results, indent=2) + "\n")

    trace = start_utilisation_trace(ctx.path("-dmon.txt"))
    results["utilisation_trace"] = "nvidia-smi dmon" if trace else "none: nvidia-smi not found"
    try:
        for stage in command.stages:
            record: dict = {"name": stage.name, "status": "running"}
            results["stages"].append(record)
            save()
            run_stage(ctx, stage, deadline, record)
            save()
    finally:
        stop_utilisation_trace(trace)
        shutil.rmtree(work, ignore_errors=True)
    save()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.gpucheck.check", description=__doc__.splitlines()[0])
    parser.add_argument("command", type=int, choices=range(1, len(COMMANDS) + 1), help="which device call this is")
    parser.add_argument("--out", type=Path, required=True, help="folder for check-N.json and the files returned")
    parser.add_argument("--kit", type=Path, default=REPO / gpukit.KIT_DIR, help="kit folder (default .gpu-kit)")
    parser.add_argument("--images", type=int, default=3000, help="images to generate on CUDA (default 3000)")
    parser.add_argument("--dry-run", action="store_true", help="skip the GPU stages even where CUDA exists")
    args = parser.parse_args(argv)
    results = run_command(args.command, args.out, args.kit, args.images, args.dry_run)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
