"""`make gpu-check`: the whole device check as one command that fits one short GPU loan.

    python -m launch.gpucheck.check --out DIR [--kit .gpu-kit] [--budget 480] [--images 3000] [--dry-run]

Runs, in order, each step in a subprocess with its own time limit inside one overall budget (8 min by
default, so a 540 s device call ends on the check's terms): device facts; verify + unpack the GPU kit
(`launch.gpucheck.kit`) and import DALI from it; generate ImageNet-like shards (no data is carried);
`pytest -m gpu` over the test files holding gpu tests; `colorize-bench loader --device cuda`;
`colorize-bench step` with compile off; a short real `accelerate launch launch/train.py` run with DALI
whose `metrics.jsonl` gives data-wait and losses; `colorize-bench step --compile`. A failing step is
recorded with its log tail and the check goes on. After every step `DIR/gpucheck.json` (figures) is
rewritten atomically and `DIR/gpucheck.log` holds every command's output, so a killed check still
leaves its results; at the end a table is printed. `DIR` stays within the device's return limits
(three files: the JSON, the log, the training run's metrics).

Without CUDA (or with `--dry-run`) the same script is a dry run: the steps that need no GPU run (kit
or "no kit", a small shard build), the CUDA steps are listed as skipped, and it exits 0 in seconds.
The exit status is 0 unless the check itself breaks: failed steps are results, not crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from configs.atomic import write_text_atomic
from launch.gpucheck import kit as gpukit

REPO = Path(__file__).resolve().parents[2]
RESULTS = "gpucheck.json"
LOG = "gpucheck.log"
TRAIN_METRICS = "train-metrics.jsonl"
TAIL_CHARS = 3000
RESERVE_S = 10.0
"""Seconds kept back from the overall budget for writing results and the table."""

_PROBE = """import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if info["cuda_available"]:
    info |= {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
             "cudnn": torch.backends.cudnn.version()}
print(json.dumps(info))"""
_DALI_PROBE = """import json, nvidia.dali, webdataset
print(json.dumps({"dali": nvidia.dali.__version__, "dali_file": nvidia.dali.__file__,
                  "webdataset": getattr(webdataset, "__version__", "?")}))"""
_SHARDS = """import sys
from pathlib import Path
from launch.bench.loader import generate_shards
print(generate_shards(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))"""


class StepFailed(RuntimeError):
    """A step's command failed or gave no figures: `tail` is the end of its log."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


@dataclass
class Context:
    """What every step shares: paths, the subprocess environment, the clock."""

    out: Path
    work: Path
    kit_dir: Path
    images: int
    dry_run: bool
    deadline: float
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str = sys.executable
    cuda: bool = False
    shards: Path | None = None
    step_timeout: float = 0.0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Step:
    """One measured step: `run(ctx)` returns its figures or raises `StepFailed`."""

    name: str
    needs_cuda: bool
    needs_shards: bool
    budget_s: float
    run: Callable[[Context], dict]


# ------------------------------------------------------------------------------------------- helpers


def run_logged(ctx: Context, title: str, command: list[str], timeout: float | None = None) -> str:
    """Run `command` in the repo root with output appended to the log; returns its output.

    Runs in its own process group so a timeout ends the whole tree it started (DataLoader workers,
    accelerate's child). Raises `StepFailed` with the output's tail on a non-zero exit or timeout."""
    log = ctx.out / LOG
    with open(log, "a") as file:
        file.write(f"\n===== {title}: {' '.join(command)}\n")
        file.flush()
        start = log.stat().st_size
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=ctx.env,
            stdout=file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            status = process.wait(timeout=timeout or ctx.step_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = None
    output = log.read_bytes()[start:].decode(errors="replace")
    if status is None:
        raise StepFailed(f"timed out after {timeout or ctx.step_timeout:.0f} s", output[-TAIL_CHARS:])
    if status != 0:
        raise StepFailed(f"exit status {status}", output[-TAIL_CHARS:])
    return output


def read_json(path: Path, output: str) -> dict:
    """The JSON a command wrote at `path`; `StepFailed` (with the command's output) when it wrote none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StepFailed(f"no JSON at {path.name} ({type(error).__name__})", output[-TAIL_CHARS:]) from None


def git_commit() -> dict:
    """The checkout's commit and whether it has local changes (None where the copy has no git)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def nvidia_smi() -> str | None:
    """`name, driver, memory` of each GPU from nvidia-smi, or None without it."""
    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or done.stderr.strip()


def pytest_counts(output: str) -> dict[str, int]:
    """Counts from pytest's summary line (`3 passed, 1 failed, 2 skipped in 4.2s`)."""
    lines = [line for line in output.splitlines() if re.search(r"\b(passed|failed|error|skipped|deselected)\b", line)]
    found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", lines[-1] if lines else "")
    return {word.rstrip("s") if word.startswith("error") else word: int(n) for n, word in found}


def gpu_test_files(tests: Path) -> list[str]:
    """Test modules holding `gpu`-marked tests (only those run: others import gradio/wandb, absent there)."""
    return sorted(
        str(path.relative_to(REPO))
        for path in tests.glob("test_*.py")
        if "mark.gpu" in path.read_text(errors="replace")
    )


def summarise_metrics(rows: list[dict]) -> dict:
    """Data-wait and losses of a training run's `metrics.jsonl` rows (first logged row = warm-up)."""
    waits = [row["data/wait_fraction"] for row in rows if "data/wait_fraction" in row]
    steady = waits[1:] or waits
    figures: dict = {"logged_rows": len(rows), "last_step": rows[-1].get("step") if rows else None}
    if steady:
        figures["data_wait_fraction_mean"] = round(sum(steady) / len(steady), 4)
        figures["data_wait_fraction_max"] = round(max(steady), 4)
    rates = [row["perf/images_per_s"] for row in rows[1:] if "perf/images_per_s" in row]
    if rates:
        figures["images_per_s_mean"] = round(sum(rates) / len(rates), 1)
    for key in ("train/l1", "train/feature", "train/g_total", "train/g_adv", "train/d_total"):
        values = [row[key] for row in rows if key in row]
        if values:
            figures[key] = {"first": values[0], "last": values[-1]}
    return figures


# --------------------------------------------------------------------------------------------- steps


def step_facts(ctx: Context) -> dict:
    """Device facts (GPU, driver, torch/CUDA, cores) and the commit; decides whether CUDA steps run."""
    output = run_logged(ctx, "facts", [ctx.python, "-c", _PROBE], timeout=min(ctx.step_timeout, 60))
    torch_info = json.loads(output.strip().splitlines()[-1])
    ctx.cuda = bool(torch_info.get("cuda_available")) and not ctx.dry_run
    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "nvidia_smi": nvidia_smi(),
        **torch_info,
        **git_commit(),
    }


def step_kit(ctx: Context) -> dict:
    """Verify and unpack the GPU kit (or report "no kit"), then import DALI and webdataset through it."""
    figures: dict = {}
    if (ctx.kit_dir / gpukit.MANIFEST).is_file():
        started = time.monotonic()
        try:
            tree = gpukit.unpack(ctx.kit_dir)
        except gpukit.KitError as error:
            raise StepFailed(f"error: {error}") from None
        manifest = gpukit.read_manifest(ctx.kit_dir)
        figures |= {
            "kit": str(tree),
            "chunks": len(manifest["chunks"]),
            "unpack_s": round(time.monotonic() - started, 1),
            "kit_built_at_commit": manifest.get("built_at_commit"),
        }
        here = f"{sys.version_info.major}{sys.version_info.minor}"
        if manifest.get("python_tag", here) != here:  # e.g. a dry run on the 3.11 development machine
            figures["kit_on_path"] = f"no: the kit is for CPython {manifest['python_tag']}, this is {here}"
        else:
            figures["kit_on_path"] = "yes"
            ctx.env["PYTHONPATH"] = os.pathsep.join([str(tree), ctx.env["PYTHONPATH"]])
            libs = [str(path) for path in gpukit.library_dirs(tree)]
            if libs:
                ctx.env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, ctx.env.get("LD_LIBRARY_PATH", "")]).rstrip(
                    os.pathsep
                )
    else:
        figures["kit"] = f"no kit ({ctx.kit_dir / gpukit.MANIFEST} absent): DALI must already be importable"
    output = run_logged(ctx, "import DALI", [ctx.python, "-c", _DALI_PROBE], timeout=min(ctx.step_timeout, 60))
    return figures | json.loads(output.strip().splitlines()[-1])


def step_shards(ctx: Context) -> dict:
    """ImageNet-like shards built here (`launch.bench.loader.generate_shards`): JPEGs q90, 450–500 px."""
    images = ctx.images if ctx.cuda else min(ctx.images, 48)
    started = time.monotonic()
    output = run_logged(
        ctx, "shards", [ctx.python, "-c", _SHARDS, str(ctx.work), str(images), str(os.cpu_count() or 1)]
    )
    ctx.shards = Path(output.strip().splitlines()[-1])
    manifest = json.loads((ctx.shards / "manifest.json").read_text())
    return {
        "images": images,
        "seconds": round(time.monotonic() - started, 1),
        "samples": manifest.get("splits"),
        "shard_files": len(list(ctx.shards.glob("*.tar"))),
    }


def step_pytest_gpu(ctx: Context) -> dict:
    """`pytest -m gpu` over the test files that hold gpu tests."""
    files = gpu_test_files(REPO / "tests")
    command = [ctx.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    try:
        output = run_logged(ctx, "pytest -m gpu", command)
    except StepFailed as failed:
        failed.args = (f"{failed.args[0]}; {pytest_counts(failed.tail)}",)
        raise
    return {"files": files} | pytest_counts(output)


def step_bench_loader(ctx: Context) -> dict:
    """`colorize-bench loader --device cuda` on the generated shards; its JSON whole."""
    path = ctx.work / "bench-loader.json"
    output = run_logged(
        ctx,
        "bench loader",
        [
            ctx.python,
            "-m",
            "launch.bench",
            "loader",
            "--device",
            "cuda",
            "--shards",
            str(ctx.shards),
            "--json",
            str(path),
        ],
    )
    return read_json(path, output)


H200_BF16_TFLOPS = 790.0
"""The H200's dense bf16 matrix-product rate (TFLOP/s): each phase's share of it is reported."""


def bench_step(compile_: bool) -> Callable[[Context], dict]:
    """`colorize-bench step` on CUDA with the ImageNet config (random VGG weights: no network there)."""

    def run(ctx: Context) -> dict:
        path = ctx.work / f"bench-step{'-compile' if compile_ else ''}.json"
        command = [
            ctx.python,
            "-m",
            "launch.bench",
            "step",
            "--device",
            "cuda",
            "--config",
            "configs/imagenet.yaml",
            *(["--compile"] if compile_ else []),
            "--peak-tflops",
            str(H200_BF16_TFLOPS),
            "--json",
            str(path),
            "loss.vgg_weights=none",
        ]
        output = run_logged(ctx, f"bench step{' --compile' if compile_ else ''}", command)
        return read_json(path, output)

    return run


def step_train(ctx: Context) -> dict:
    """A short real training run (300 NoGAN + 300 GAN steps, DALI, bf16) on one GPU; its data-wait and losses."""
    runs = ctx.work / "runs"
    command = [
        ctx.python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/1gpu.yaml",
        "launch/train.py",
        "--config",
        "configs/imagenet.yaml",
        f"data.shards={ctx.shards}",
        f"run.out_dir={runs}",
        "run.name=gpucheck",
        "schedule.nogan_steps=300",
        "schedule.gan_steps=300",
        "logging.wandb=disabled",
        "loss.vgg_weights=none",
        "logging.every_steps=50",
        "checkpoint.every_steps=100000",
        "optim.warmup_steps=100",
    ]
    started = time.monotonic()
    failure = None
    try:
        run_logged(ctx, "train", command)
    except StepFailed as failed:
        failure = failed
    metrics = runs / "gpucheck" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    if metrics.is_file():
        shutil.copyfile(metrics, ctx.out / TRAIN_METRICS)
    if failure is not None:
        failure.args = (f"{failure.args[0]}; {len(rows)} metrics rows logged",)
        raise failure
    return {"seconds": round(time.monotonic() - started, 1)} | summarise_metrics(rows)


STEPS = (
    Step("facts", False, False, 60, step_facts),
    Step("kit", False, False, 120, step_kit),
    Step("shards", False, False, 90, step_shards),
    Step("pytest-gpu", True, False, 150, step_pytest_gpu),
    Step("bench-loader", True, True, 120, step_bench_loader),
    Step("bench-step", True, False, 90, bench_step(False)),
    Step("train", True, True, 180, step_train),
    Step("bench-step-compile", True, False, 150, bench_step(True)),
)


# ---------------------------------------------------------------------------------------------- main


def run_step(ctx: Context, step: Step) -> dict:
    """Run one step within its budget and the overall deadline; its result record (never raises)."""
    if step.needs_cuda and not ctx.cuda:
        return {"name": step.name, "status": "skipped", "reason": "dry run" if ctx.dry_run else "no CUDA"}
    if step.needs_shards and ctx.shards is None:
        return {"name": step.name, "status": "skipped", "reason": "no shards (the shards step failed)"}
    ctx.step_timeout = min(step.budget_s, ctx.remaining() - RESERVE_S)
    if ctx.step_timeout < 15:
        return {"name": step.name, "status": "skipped", "reason": "out of time (overall budget spent)"}
    print(f"[gpu-check] {step.name} (limit {ctx.step_timeout:.0f} s) …", flush=True)
    started = time.monotonic()
    record: dict = {"name": step.name}
    try:
        record |= {"status": "ok", "figures": step.run(ctx)}
    except StepFailed as failed:
        record |= {"status": "failed", "reason": str(failed), "log_tail": failed.tail}
        print(f"[gpu-check] {step.name} failed: {failed}\n{failed.tail[-1200:]}", flush=True)
    except Exception as error:  # a bug in a step must not lose the other steps' results
        record |= {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        print(f"[gpu-check] {step.name} failed: {type(error).__name__}: {error}", flush=True)
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def headline(record: dict) -> str:
    """The table's one-line summary of a step's figures."""
    figures = record.get("figures") or {}
    name = record["name"]
    if record["status"] != "ok":
        return record.get("reason", "")[:90]
    if name == "facts":
        return f"{figures.get('gpu') or 'no GPU'}; torch {figures.get('torch')} CUDA {figures.get('cuda')}; {figures.get('cpu_count')} cores"
    if name == "kit":
        where = str(Path(figures.get("dali_file", "?")).parent.parent.parent)
        return f"DALI {figures.get('dali')} from {where}; kit on path: {figures.get('kit_on_path', 'no kit')}"[:110]
    if name == "shards":
        return f"{figures.get('images')} images in {figures.get('seconds')} s"
    if name == "pytest-gpu":
        return ", ".join(f"{n} {word}" for word, n in figures.items() if word != "files")
    if name == "bench-loader":
        backends = figures.get("backends", {})
        rates = ", ".join(f"{k} {v.get('images_per_s')}" for k, v in backends.items())
        return f"img/s: {rates}; ceiling {figures.get('decode_ceiling_images_per_s')}"[:90]
    if name == "train":
        return (
            f"wait {figures.get('data_wait_fraction_mean')}, {figures.get('images_per_s_mean')} img/s, "
            f"l1 {figures.get('train/l1', {}).get('first')}→{figures.get('train/l1', {}).get('last')}"
        )[:90]
    return json.dumps(figures)[:90]


def print_table(results: dict) -> None:
    print(f"\n{'step':20s} {'status':8s} {'s':>6s}  figures")
    for record in results["steps"]:
        print(f"{record['name']:20s} {record['status']:8s} {record.get('seconds', 0):6.1f}  {headline(record)}")
    print(f"results: {results['out']}/{RESULTS} (log: {LOG})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.gpucheck.check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpucheck.json and the logs")
    parser.add_argument("--kit", type=Path, default=REPO / gpukit.KIT_DIR, help="kit folder (default .gpu-kit)")
    parser.add_argument("--budget", type=float, default=480.0, help="overall seconds (default 480)")
    parser.add_argument("--images", type=int, default=3000, help="images to generate on CUDA (dry run: 48)")
    parser.add_argument("--dry-run", action="store_true", help="skip the CUDA steps even where CUDA exists")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / LOG).write_text("")
    work = Path(tempfile.mkdtemp(prefix="colorize-gpucheck-"))
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        WANDB_MODE="disabled",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    ctx = Context(
        out=args.out.resolve(),
        work=work,
        kit_dir=args.kit,
        images=args.images,
        dry_run=args.dry_run,
        deadline=time.monotonic() + args.budget,
        env=env,
    )
    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dry_run": args.dry_run,
        "out": str(args.out),
        "budget_s": args.budget,
        "steps": [],
    }
    try:
        for step in STEPS:
            record = run_step(ctx, step)
            results["steps"].append(record)
            results["dry_run"] = args.dry_run or not ctx.cuda
            write_text_atomic(ctx.out / RESULTS, json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
