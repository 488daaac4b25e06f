"""The GPU check's stages: what each runs on the node, and the figures it keeps.

Every stage runs its work in a subprocess (`run_logged`) under the stage's time limit, output appended
to the command's log. At the limit the whole process group gets SIGINT (pytest then prints its summary
and writes its JUnit XML; Python programs unwind), and SIGKILL a few seconds later. Stages whose
program writes its JSON as it goes (`colorize-bench step` and `loader`, the training run's
`metrics.jsonl`) keep those partial figures when they are cut short.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from configs import ConfigError, load_config
from launch.gpucheck import kit as gpukit
from launch.gpucheck import provenance

REPO = Path(__file__).resolve().parents[2]
TAIL_CHARS = 3000
GRACE_S = 5.0
"""Seconds between the SIGINT at a stage's limit and the SIGKILL."""
EXTERNAL_TIMEOUT_S = 10
RETURN_LIMIT_BYTES = 16 * 2**20
"""The largest file a device call returns from `$OUT`."""
"""Limit for one-shot external programs (`nvidia-smi` queries)."""
H200_BF16_TFLOPS = 790.0
"""The H200's dense bf16 matrix-product rate measured on such a node (TFLOP/s): each phase's share is reported."""
CONFIG = "configs/imagenet.yaml"
ABSENT_ON_NODE = ("nvidia.dali", "webdataset", "torchcodec", "torchmetrics", "wandb", "gradio")
"""Packages the node lacks (DALI, webdataset, torchcodec and torchmetrics come with the kit)."""
TRAIN_STEPS = 200
TRAIN_CRITIC_STEPS = 100
"""Critic warm-up steps of the training run (the ImageNet config's 10,000 would not fit; these are cheap)."""
TRAIN_LOG_EVERY = 25
TRAIN_OVERRIDES = (
    "run.name=gpucheck",
    f"schedule.nogan_steps={TRAIN_STEPS}",
    f"schedule.critic_steps={TRAIN_CRITIC_STEPS}",
    f"schedule.gan_steps={TRAIN_STEPS}",
    "logging.wandb=disabled",
    "loss.vgg_weights=none",
    f"logging.every_steps={TRAIN_LOG_EVERY}",
    "checkpoint.every_steps=100000",
    "optim.warmup_steps=100",
)
"""The training run's settings beyond the ImageNet config (the facts stage checks they load)."""


class StageFailed(RuntimeError):
    """A stage's program failed, timed out or gave no figures: `tail` is the end of its output and
    `figures` whatever it wrote before."""

    def __init__(self, message: str, tail: str = "", figures: dict | None = None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.tail, self.figures, self.timed_out = tail, figures, timed_out


@dataclass
class Context:
    """What the stages of one command share."""

    command: int
    out: Path
    work: Path
    kit_dir: Path
    images: int
    dry_run: bool
    env: dict[str, str]
    python: str = sys.executable
    cuda: bool = False
    kit_ready: bool = False
    kit_problem: str = "the kit stage has not run"
    shards: Path | None = None
    limit_s: float = 0.0
    notes: dict = field(default_factory=dict)

    def path(self, suffix: str) -> Path:
        """`OUT/check-<command><suffix>`: the names every file this command returns carries."""
        return self.out / f"check-{self.command}{suffix}"

    @property
    def log(self) -> Path:
        return self.path(".log")


@dataclass
class Finished:
    status: int | None
    timed_out: bool
    output: str

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out

    def problem(self, limit_s: float) -> str:
        return f"timed out at its {limit_s:.0f} s limit" if self.timed_out else f"exit status {self.status}"


def run_logged(ctx: Context, title: str, command: list[str], grace: float = GRACE_S) -> Finished:
    """Run `command` in the repo root within the stage's limit, output appended to the log (module doc)."""
    with open(ctx.log, "a") as file:
        file.write(f"\n===== {title} (limit {ctx.limit_s:.0f} s): {' '.join(command)}\n")
        file.flush()
        start = file.tell()
        process = _spawn(command, ctx.env, file)
        timed_out = False
        try:
            status: int | None = process.wait(timeout=max(1.0, ctx.limit_s - grace))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(process.pid, signal.SIGINT)
            try:
                status = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                status = process.wait()
        # What the program left behind (DataLoader workers, accelerate's child) must not run into the
        # next stage's timing.
        _signal_group(process.pid, signal.SIGKILL)
    with open(ctx.log, "rb") as file:
        file.seek(start)
        output = file.read().decode(errors="replace")
    return Finished(status, timed_out, output)


def _spawn(command: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """Start `command` in its own process group, hearing SIGINT even where this process ignores it (a
    background job's SIGINT is ignored, and the ignoring is inherited): at a limit it must print
    what it can."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def read_json(path: Path) -> dict | None:
    """The JSON object a program wrote at `path`, or None."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def figures_or_fail(ctx: Context, finished: Finished, path: Path) -> dict:
    """The program's JSON when it finished; else `StageFailed` carrying whatever JSON it wrote."""
    figures = read_json(path)
    if finished.ok and figures is not None:
        return figures
    reason = finished.problem(ctx.limit_s) if not finished.ok else f"no JSON at {path.name}"
    raise StageFailed(reason, finished.output[-TAIL_CHARS:], figures, finished.timed_out)


# --------------------------------------------------------------------------------------------- facts

_PROBE = """import importlib, importlib.util, json, os, sys, time
started = time.monotonic()
import torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "torch_import_s": round(time.monotonic() - started, 1)}
if info["cuda_available"]:
    props = torch.cuda.get_device_properties(0)
    info |= {"gpu": props.name, "gpus": torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}",
             "multiprocessors": props.multi_processor_count, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
             "cudnn": torch.backends.cudnn.version()}
imports = {}
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
        imports[name] = "ok"
    except Exception as error:
        imports[name] = f"{type(error).__name__}: {error}"[:300]
def findable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False
import launch
info |= {"imports": imports, "absent": [n for n in sys.argv[1].split(",") if not findable(n)],
         "code_root": os.path.dirname(os.path.dirname(os.path.abspath(launch.__file__)))}
print(json.dumps(info), flush=True)
os._exit(0)  # the figures are out: skip the interpreter's teardown (seconds with torch loaded)"""


def nvidia_smi_query() -> str | None:
    """One CSV line per GPU from `nvidia-smi` (None without it): name, driver, memory, clocks, power."""
    if not shutil.which("nvidia-smi"):
        return None
    fields = (
        "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,"
        "power.draw,power.limit,temperature.gpu,pstate"
    )
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=EXTERNAL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"nvidia-smi gave no answer in {EXTERNAL_TIMEOUT_S} s"
    return f"{fields}: {done.stdout.strip() or done.stderr.strip()}"


def facts(imports: tuple[str, ...]):
    """The node and the code: Python, cores, memory, nvidia-smi, torch and CUDA, the kit's chunks, the
    stamped commit, which packages are absent, whether the modules this command needs import and
    whether the training run's config (`TRAIN_OVERRIDES`) loads."""

    def run(ctx: Context) -> dict:
        finished = run_logged(ctx, "facts", [ctx.python, "-c", _PROBE, ",".join(ABSENT_ON_NODE), *imports])
        if not finished.ok:
            raise StageFailed(finished.problem(ctx.limit_s), finished.output[-TAIL_CHARS:])
        probe = json.loads(finished.output.strip().splitlines()[-1])
        ctx.cuda = bool(probe.get("cuda_available")) and not ctx.dry_run
        figures = {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "nvidia_smi": nvidia_smi_query(),
            **probe,
            "code": provenance.check_stamp(REPO, ctx.kit_dir / provenance.STAMP),
        }
        try:
            figures["kit_chunks"] = gpukit.receive(ctx.kit_dir)
        except gpukit.KitError as error:
            figures["kit_chunks"] = str(error)
        broken = {name: error for name, error in probe["imports"].items() if error != "ok"}
        try:  # the training run's config, checked here so a renamed key shows before call 3
            load_config(REPO / CONFIG, TRAIN_OVERRIDES)
            figures["train_config"] = "ok"
        except ConfigError as error:
            figures["train_config"] = broken["train config"] = str(error)
        if broken:
            raise StageFailed(f"cannot import {', '.join(broken)}", json.dumps(broken), figures)
        return figures

    return run


# -------------------------------------------------------------------------------------- step benches


def bench_step(title: str, *options: str, profile: bool = False):
    """`colorize-bench step` on CUDA with the ImageNet config, bf16 (random VGG weights: no network)."""

    def run(ctx: Context) -> dict:
        path = ctx.work / f"{title}.json"
        command = [
            ctx.python,
            "-m",
            "launch.bench",
            "step",
            "--device",
            "cuda",
            "--config",
            CONFIG,
            "--peak-tflops",
            str(H200_BF16_TFLOPS),
            "--json",
            str(path),
            *options,
            *(["--profile-dir", str(ctx.work / "traces")] if profile else []),
            "loss.vgg_weights=none",
        ]
        finished = run_logged(ctx, title, command)
        too_big = []
        if profile:
            # Traces travel back under this command's prefix: check-2-trace-nogan-b64.json.gz.
            for trace in sorted((ctx.work / "traces").glob("trace-*.json.gz")):
                if trace.stat().st_size > RETURN_LIMIT_BYTES:
                    too_big.append(f"{trace.name} ({trace.stat().st_size / 2**20:.1f} MiB) stays on the node")
                    continue
                shutil.move(str(trace), ctx.path(f"-{trace.name}"))
        figures = figures_or_fail(ctx, finished, path)
        return figures | ({"traces_over_return_limit": too_big} if too_big else {})

    return run


# ----------------------------------------------------------------------------------------------- kit

_KIT_PROBE = """import ctypes, importlib, json, os, sys
import nvidia.dali, webdataset
info = {"dali": nvidia.dali.__version__, "dali_file": nvidia.dali.__file__,
        "webdataset": getattr(webdataset, "__version__", "?")}
for name in sys.argv[2:]:
    importlib.import_module(name)
if sys.argv[1]:  # decode one batch of the shards on the CPU: nvImageCodec loads from the same tree
    from nvidia.dali import fn, pipeline_def, types
    from pipeline.shard_list import split_shards
    shards = split_shards(sys.argv[1], "train")
    @pipeline_def(batch_size=8, num_threads=2, device_id=None)
    def decode():
        jpegs = fn.readers.webdataset(paths=[str(s.path) for s in shards],
                                      index_paths=[str(s.index_path) for s in shards], ext=["jpg"])
        return fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
    pipe = decode()
    pipe.build()
    (images,) = pipe.run()
    info["decoded_on_cpu"] = len(images)
# The nvJPEG nvImageCodec loads: the one beside it (RUNPATH $ORIGIN/../cu13/lib), else the loader's.
nvidia_dir = os.path.dirname(os.path.dirname(nvidia.dali.__file__))
lib = os.path.join(nvidia_dir, "cu13", "lib", "libnvjpeg.so.13")
try:
    nvjpeg = ctypes.CDLL(lib if os.path.exists(lib) else "libnvjpeg.so.13")
    parts = []
    for part in range(3):
        value = ctypes.c_int()
        nvjpeg.nvjpegGetProperty(part, ctypes.byref(value))
        parts.append(value.value)
    info["nvjpeg"] = ".".join(map(str, parts))
    info["nvjpeg_file"] = lib if os.path.exists(lib) else "libnvjpeg.so.13 (loader path)"
except OSError as error:
    info["nvjpeg"] = f"not loadable: {error}"
print(json.dumps(info), flush=True)
os._exit(0)  # skip the teardown of DALI's thread pools"""


def kit_stage(ctx: Context) -> dict:
    """Verify and unpack the kit (or use a DALI already installed), put it on the path, import DALI,
    webdataset and the DALI loader through it, decode a batch of the shards on the CPU with it, and
    read the nvJPEG version that will decode on the GPU."""
    figures: dict = {}
    if (ctx.kit_dir / gpukit.MANIFEST).is_file():
        started = time.monotonic()
        try:
            tree = gpukit.unpack(ctx.kit_dir)
        except gpukit.KitError as error:
            ctx.kit_problem = f"kit unusable: {error}"
            raise StageFailed(
                f"{error} — if the node was given back between calls, the chunks carried earlier are gone",
                gpukit.receive(ctx.kit_dir),
            ) from None
        manifest = gpukit.read_manifest(ctx.kit_dir)
        figures |= {
            "kit": str(tree),
            "chunks": len(manifest["chunks"]),
            "unpack_s": round(time.monotonic() - started, 1),
        }
        here = f"{sys.version_info.major}{sys.version_info.minor}"
        if manifest.get("python_tag", here) != here:  # e.g. a dry run on a development machine
            figures["kit_on_path"] = f"no: the kit is for CPython {manifest['python_tag']}, this is {here}"
        else:
            figures["kit_on_path"] = "yes"
            ctx.env["PYTHONPATH"] = os.pathsep.join([str(tree), ctx.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            libs = [str(path) for path in gpukit.library_dirs(tree)]
            if libs:
                ctx.env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, ctx.env.get("LD_LIBRARY_PATH", "")]).rstrip(
                    os.pathsep
                )
    else:
        figures["kit"] = f"no kit ({ctx.kit_dir / gpukit.MANIFEST} absent): DALI must already be importable"
    probe = [ctx.python, "-c", _KIT_PROBE, str(ctx.shards or ""), "pipeline.dali_loader", "launch.bench.loader"]
    finished = run_logged(ctx, "import DALI", probe)
    if not finished.ok:
        ctx.kit_problem = "DALI does not import (see the kit stage)"
        raise StageFailed(
            f"DALI does not import ({finished.problem(ctx.limit_s)})", finished.output[-TAIL_CHARS:], figures
        )
    ctx.kit_ready = True
    return figures | json.loads(finished.output.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- shards

_SHARDS = """import sys
from pathlib import Path
from launch.bench.loader import generate_shards
print(generate_shards(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))"""
DRY_RUN_IMAGES = 48


def shards_stage(ctx: Context) -> dict:
    """ImageNet-like shards built on the node (`launch.bench.loader.generate_shards`: JPEGs q90,
    longer side 450–500 px, 4:2:0): no data travels. A small set where the GPU stages do not run."""
    images = ctx.images if ctx.cuda else min(ctx.images, DRY_RUN_IMAGES)
    started = time.monotonic()
    finished = run_logged(
        ctx, "shards", [ctx.python, "-c", _SHARDS, str(ctx.work), str(images), str(os.cpu_count() or 1)]
    )
    if not finished.ok:
        raise StageFailed(finished.problem(ctx.limit_s), finished.output[-TAIL_CHARS:])
    ctx.shards = Path(finished.output.strip().splitlines()[-1])
    manifest = json.loads((ctx.shards / "manifest.json").read_text())
    return {
        "images": images,
        "seconds": round(time.monotonic() - started, 1),
        "samples": manifest.get("splits"),
        "shard_files": len(list(ctx.shards.glob("*.tar"))),
    }


# ------------------------------------------------------------------------------------------- loaders


def loaders_stage(ctx: Context) -> dict:
    """`colorize-bench loader --device cuda` with the ImageNet config's batch and threads: DALI, torch
    (nvJPEG), torch-cpu and the bare decode ceiling at three hardware-decoder loads."""
    path = ctx.work / "loaders.json"
    command = [
        ctx.python,
        "-m",
        "launch.bench",
        "loader",
        "--device",
        "cuda",
        "--config",
        CONFIG,
        "--shards",
        str(ctx.shards),
        "--seconds",
        "6",
        "--rounds",
        "2",
        "--warmup",
        "3",
        "--json",
        str(path),
    ]
    return figures_or_fail(ctx, run_logged(ctx, "loaders", command), path)


# --------------------------------------------------------------------------------------------- train


def summarise_training(rows: list[dict]) -> dict:
    """Per phase, from a run's `metrics.jsonl` rows: images/s, step time and data-wait over the logged
    windows after the phase's first (which holds start-up or the phase switch), and first/last losses."""
    figures: dict = {"logged_rows": len(rows), "last_step": rows[-1].get("step") if rows else None, "phases": {}}
    for phase in ("nogan", "critic", "gan"):
        logged = [row for row in rows if row.get("phase") == phase]
        timed = [row for row in logged if "perf/images_per_s" in row]
        steady = timed[1:]
        summary: dict = {"windows": len(steady)}
        for key, name in (
            ("perf/images_per_s", "images_per_s"),
            ("perf/step_ms", "step_ms"),
            ("data/wait_fraction", "data_wait_fraction"),
        ):
            values = [row[key] for row in steady if key in row]
            if values:
                summary[f"{name}_mean"] = round(sum(values) / len(values), 4)
                summary[f"{name}_max"] = round(max(values), 4)
        for key in ("train/l1", "train/g_total", "train/d_total", "train/d_acc_fake"):
            values = [row[key] for row in logged if key in row]
            if values:
                summary[key] = {"first": values[0], "last": values[-1]}
        figures["phases"][phase] = summary
    return figures


def train_stage(ctx: Context) -> dict:
    """A short real training run on one GPU (`accelerate launch launch/train.py`, the ImageNet config,
    DALI, bf16): `TRAIN_STEPS` NoGAN, `TRAIN_CRITIC_STEPS` critic warm-up, then `TRAIN_STEPS` GAN steps;
    per-phase figures from its metrics."""
    runs = ctx.work / "runs"
    command = [
        ctx.python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/1gpu.yaml",
        "launch/train.py",
        "--config",
        CONFIG,
        f"data.shards={ctx.shards}",
        f"run.out_dir={runs}",
        *TRAIN_OVERRIDES,
    ]
    started = time.monotonic()
    finished = run_logged(ctx, "train", command)
    metrics = runs / "gpucheck" / "metrics.jsonl"
    rows = []
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        shutil.copyfile(metrics, ctx.path("-train-metrics.jsonl"))
    figures = {
        "seconds": round(time.monotonic() - started, 1),
        "steps": [TRAIN_STEPS, TRAIN_CRITIC_STEPS, TRAIN_STEPS],
    }
    figures |= summarise_training(rows)
    if not finished.ok:
        raise StageFailed(
            f"{finished.problem(ctx.limit_s)}; {len(rows)} metrics rows logged",
            finished.output[-TAIL_CHARS:],
            figures,
            finished.timed_out,
        )
    return figures


# -------------------------------------------------------------------------------------------- pytest

FIRST_GPU_TESTS = ("tests/test_gpu_decode.py",)
"""Run first: the region-of-interest decode the kit's nvJPEG is pinned for."""


def gpu_test_files(tests: Path) -> list[str]:
    """Test modules holding `gpu`-marked tests, `FIRST_GPU_TESTS` first (only those run: others import
    gradio or wandb, absent on the node)."""
    found = sorted(
        str(path.relative_to(REPO))
        for path in tests.glob("test_*.py")
        if "mark.gpu" in path.read_text(errors="replace")
    )
    return [name for name in FIRST_GPU_TESTS if name in found] + [name for name in found if name not in FIRST_GPU_TESTS]


def junit_counts(path: Path) -> dict | None:
    """Counts and the failing tests' ids from a JUnit XML report, or None when it is missing or cut."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failing = []
    for case in root.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts["failed" if outcome == "failure" else outcome] += 1
        if outcome in ("failure", "error"):
            failing.append(f"{case.get('classname')}::{case.get('name')}")
    return counts | {"failing": failing[:20]}


def verbose_counts(output: str) -> dict:
    """Counts from pytest -v's per-test lines (`… PASSED [ 12%]`), for a run whose summary never came."""
    outcomes = re.findall(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", output)
    return {word.lower(): outcomes.count(word) for word in sorted(set(outcomes))}


def pytest_stage(ctx: Context) -> dict:
    """`pytest -m gpu -v` over the files holding gpu tests, with a JUnit XML report; last in its
    command, it gets the time the others left."""
    files = gpu_test_files(REPO / "tests")
    junit = ctx.path("-pytest.xml")
    command = [
        ctx.python,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-v",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "--timeout=90",
        *files,
    ]
    finished = run_logged(ctx, "pytest -m gpu", command, grace=10.0)
    counts = junit_counts(junit) or verbose_counts(finished.output)
    figures = {"files": files, **counts}
    # Exit status 1: some tests failed — a result, shown in the counts; other statuses are failures.
    if finished.timed_out or finished.status not in (0, 1):
        raise StageFailed(finished.problem(ctx.limit_s), finished.output[-TAIL_CHARS:], figures, finished.timed_out)
    return figures
