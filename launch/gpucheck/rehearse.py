"""`make gpu-rehearse`: the GPU check's three device calls, run on a CPU stand-in of the air-gapped node.

    python -m launch.gpucheck.rehearse [--keep DIR] [--json FILE] [--preset 1]

Rebuilds in a temp folder what the node would see, call by call, without a GPU or a download:
- a kit packed as `make gpu-kit` packs one (`launch.gpucheck.kit.pack`: three equal chunks, the
  manifest, the code stamp) but from what this Python has installed, at a fast xz preset: DALI,
  nvImageCodec and nvJPEG (what importing DALI and a CPU JPEG decode load), webdataset, braceexpand,
  torchcodec, torchmetrics and lightning_utilities;
- a node tree that, before each call, receives exactly what the call carries: the working tree
  (tracked and untracked-not-ignored files) copied again, plus the call's `carry` paths, while the
  ignored files earlier calls carried stay, as on a node still warm;
- a `python3` without the packages the node lacks: a fresh virtual environment whose site is this
  Python's seen through a folder of links that leaves out DALI and its libraries, nvJPEG, webdataset,
  braceexpand, torchcodec, torchmetrics, wandb and gradio (and the project's editable install). They import from the unpacked
  kit or not at all. CUDA is hidden too (`CUDA_VISIBLE_DEVICES=`): the GPU stages never run here.
Then it runs each call's command as `launch.gpucheck.plan` gives it, with `$OUT` a fresh folder per
call, and checks that it exits 0 within its timeout, carries at most 60 MiB, writes `check-N.json`
naming the stamped code, marks every GPU stage "not run" and every other stage "ok", finds the
missing packages absent, and in the last call imports DALI from the kit unpacked inside the stand-in
and decodes with it. A table of each call's bytes, seconds and stages ends the output; the exit status
is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from launch.gpucheck import kit as gpukit
from launch.gpucheck import provenance
from launch.gpucheck.check import COMMANDS, NOT_RUN
from launch.gpucheck.plan import LIMIT_BYTES, DeviceCall, device_calls
from launch.gpucheck.stages import ABSENT_ON_NODE

REPO = Path(__file__).resolve().parents[2]
NVIDIA_PACKAGES = ("dali", "nvimgcodec")
"""The stand-in kit's folders under `nvidia/`: what importing DALI and a CPU JPEG decode load."""
NVJPEG = "nvidia/cu13/lib/libnvjpeg.so.13"
MODULES = ("webdataset", "braceexpand", "torchcodec", "torchmetrics", "lightning_utilities")
NOT_ON_NODE = ("nvidia/dali", "nvidia/nvimgcodec", "nvidia/libnvcomp", "nvidia/nvjpeg2k", "nvidia/nvtiff", NVJPEG)
"""Paths below the site that the stand-in's Python leaves out (the kit's packages)."""
NOT_ON_NODE_TOP = (
    "wandb",
    "webdataset",
    "braceexpand",
    "torchcodec",
    "torchmetrics",
    "lightning_utilities",
    "gradio",
    # Not known to be on the node, and not needed by what the calls run (imported only for s3:// shards,
    # by the W&B guard and by colorize-train): hidden, so an import at module level shows.
    "boto3",
    "botocore",
    "s3transfer",
    "psutil",
    "__editable__",
)
"""Top-level site entries (by name prefix: modules, packages, their dist-info) it leaves out too."""
NOT_ON_NODE_DISTS = (
    "nvidia_dali",
    "nvidia_nvimgcodec",
    "nvidia_libnvcomp",
    "nvidia_nvjpeg2k",
    "nvidia_nvtiff",
    "nvidia_nvjpeg-",
)
PRESET = 1
"""xz -1: packs the stand-in kit (~500 MB of libraries) in well under a minute on 2 idle cores."""


class RehearsalError(RuntimeError):
    """The stand-in cannot be built here (no DALI installed): one line."""


def installed_kit_sources(staging: Path) -> list[tuple[Path, str]]:
    """`(path, name in the kit)` for the stand-in kit's packages as installed for this Python."""
    site = Path(sysconfig.get_paths()["purelib"])
    if not (site / "nvidia" / "dali").is_dir():
        raise RehearsalError(f"nvidia-dali is not installed in {site} (make install)")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "__init__.py").write_text(gpukit.NAMESPACE_INIT)
    sources = [(staging / "__init__.py", "nvidia/__init__.py")]
    sources += [
        (site / "nvidia" / name, f"nvidia/{name}") for name in NVIDIA_PACKAGES if (site / "nvidia" / name).is_dir()
    ]
    if (site / NVJPEG).is_file():
        sources.append((site / NVJPEG, NVJPEG))
    for module in MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise RehearsalError(f"{module} is not installed (make install)")
        origin = Path(spec.origin)
        path = origin.parent if origin.name == "__init__.py" else origin
        sources.append((path, path.name))
        libs = path.with_name(path.name + ".libs")  # a wheel's bundled shared libraries (auditwheel)
        if libs.is_dir():
            sources.append((libs, libs.name))
    return sources


def left_out(relative: str) -> bool:
    """True for a path below the site (`a/b`) that the stand-in's Python must not see."""
    if relative in NOT_ON_NODE:
        return True
    if "/" in relative:
        return False
    dist = relative.lower().replace("-", "_", 1) if relative.endswith(".dist-info") else ""
    return relative.startswith(NOT_ON_NODE_TOP) or relative.endswith(".pth") or dist.startswith(NOT_ON_NODE_DISTS)


def mirror_site(site: Path, target: Path, prefix: str = "") -> None:
    """`target` as a folder of links to `site`'s entries, leaving out what the node lacks: folders on
    the way to a left-out path become real folders of links themselves."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(site.iterdir()):
        relative = prefix + entry.name
        if left_out(relative):
            continue
        if entry.is_dir() and any(path.startswith(relative + "/") for path in NOT_ON_NODE):
            mirror_site(entry, target / entry.name, relative + "/")
        else:
            (target / entry.name).symlink_to(entry)


def prepare_standin(root: Path) -> dict[str, str]:
    """The stand-in's `python3` (module doc) and temp folder; returns the environment its calls run in."""
    venv, overlay, tmp = root / "python", root / "site", root / "tmp"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    mirror_site(Path(sysconfig.get_paths()["purelib"]), overlay)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / version / "site-packages" / "node-site.pth").write_text(f"{overlay}\n")
    tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | {
        "PATH": os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]),
        "TMPDIR": str(tmp),
        "CUDA_VISIBLE_DEVICES": "",
    }


def deliver(node: Path, kit_dir: Path, call: DeviceCall) -> int:
    """Copy what `call` carries into the stand-in `node` (module doc); returns its bytes."""
    total = 0
    for name in provenance.travelling_files(REPO):
        target = node / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
        total += target.stat().st_size
    for carried in call.carry:
        target = node / carried
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kit_dir / Path(carried).name, target)
        total += target.stat().st_size
    return total


def problems_of(call: DeviceCall, results: dict | None, node: Path, tmp: Path) -> list[str]:
    """What is wrong with a call's `check-N.json` on a CPU stand-in (empty when all is as it must be)."""
    if results is None:
        return [f"no check-{call.number}.json"]
    found = []
    command = COMMANDS[call.number - 1]
    by_name = {record["name"]: record for record in results["stages"]}
    for stage in command.stages:
        record = by_name.get(stage.name, {"status": "missing"})
        if stage.needs_cuda and (record["status"] != NOT_RUN or "CUDA" not in record.get("reason", "")):
            found.append(f"GPU stage {stage.name}: {record['status']} (must be '{NOT_RUN}' for want of CUDA)")
        if not stage.needs_cuda and record["status"] != "ok":
            found.append(f"stage {stage.name}: {record['status']}: {record.get('reason', '')}")
    facts = by_name.get("facts", {}).get("figures") or {}
    if facts.get("code", {}).get("matches") is not True:
        found.append(f"the stamp does not name the code that ran: {facts.get('code')}")
    if facts.get("code_root") and os.path.realpath(facts["code_root"]) != os.path.realpath(node):
        found.append(f"the code ran from {facts['code_root']}, not the stand-in's copy")
    missing = sorted(set(ABSENT_ON_NODE) - set(facts.get("absent", [])))
    if missing:
        found.append(f"importable on the stand-in before the kit: {', '.join(missing)}")
    if "kit" in by_name:
        kit_figures = by_name["kit"].get("figures") or {}
        dali_file = kit_figures.get("dali_file", "")
        if not os.path.realpath(dali_file).startswith(os.path.realpath(tmp) + os.sep):
            found.append(f"DALI imported from {dali_file or 'nowhere'}, not the unpacked kit")
        if not kit_figures.get("decoded_on_cpu"):
            found.append("DALI from the kit decoded no JPEG")
    return found


def rehearse(root: Path, preset: int = PRESET) -> list[dict]:
    """Build the stand-in under `root` and run the three calls; one report per call."""
    kit_dir, node = root / "kit", root / "node"
    env = prepare_standin(root)
    started = time.monotonic()
    tag = f"{sys.version_info.major}{sys.version_info.minor}"
    manifest = gpukit.pack(
        installed_kit_sources(root / "staging"), kit_dir, len(COMMANDS), preset, python_tag=tag, extra={"wheels": []}
    )
    provenance.write_stamp(REPO, kit_dir / provenance.STAMP)
    print(
        f"stand-in kit: {len(manifest['chunks'])} chunks of {manifest['chunks'][0]['bytes'] / gpukit.MiB:.1f} MiB "
        f"(xz -{preset}, {time.monotonic() - started:.0f} s) from this Python's DALI",
        flush=True,
    )
    reports = []
    for call in device_calls(manifest):
        carried = deliver(node, kit_dir, call)
        out = root / f"out-{call.number}"
        out.mkdir()
        print(f"call {call.number}: {call.command} (carries {carried / gpukit.MiB:.2f} MiB) …", flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(
                ["bash", "-c", call.command],
                cwd=node,
                env=env | {"OUT": str(out)},
                capture_output=True,
                text=True,
                timeout=call.timeout_s,
            )
            status, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            status, output = None, str(expired.stdout or "")
        seconds = time.monotonic() - started
        results_path = out / f"check-{call.number}.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else None
        problems = [] if status == 0 else [f"exit status {status} (output: {output[-1500:]})"]
        if carried > LIMIT_BYTES:
            problems.append(f"carries {carried / gpukit.MiB:.2f} MiB > {LIMIT_BYTES / gpukit.MiB:.0f} MiB")
        problems += problems_of(call, results, node, root / "tmp")
        reports.append(
            {
                "call": call.number,
                "command": call.command,
                "carried_bytes": carried,
                "seconds": round(seconds, 1),
                "timeout_s": call.timeout_s,
                "exit_status": status,
                "stages": {record["name"]: record["status"] for record in (results or {}).get("stages", [])},
                "problems": problems,
                "out": str(out),
            }
        )
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.gpucheck.rehearse", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the stand-in here and keep it (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the per-call report here")
    parser.add_argument("--preset", type=int, default=PRESET, choices=range(10), help="xz preset of the stand-in kit")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="colorize-gpu-rehearsal-"))
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        print(f"error: --keep {args.keep}: not empty", file=sys.stderr)
        return 2
    try:
        reports = rehearse(root, args.preset)
    except (RehearsalError, provenance.ProvenanceError, gpukit.KitError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'call':>4} {'carries':>12} {'seconds':>8} {'exit':>5}  stages")
    for report in reports:
        stages = ", ".join(f"{name} {status}" for name, status in report["stages"].items())
        print(
            f"{report['call']:>4} {report['carried_bytes'] / gpukit.MiB:8.2f} MiB {report['seconds']:8.1f} "
            f"{str(report['exit_status']):>5}  {stages}"
        )
        for problem in report["problems"]:
            print(f"     problem: {problem}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    failed = [report["call"] for report in reports if report["problems"]]
    print(
        "rehearsal: " + (f"calls {failed} have problems" if failed else "all three calls as expected on the stand-in")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
