"""The GPU check's pieces on CPU: kit chunks, the three device calls and their budgets, the code stamp,
stage limits, and the figures the stages keep. The whole chain runs in tests/test_gpu_rehearsal.py."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launch.gpucheck import check, kit, plan, provenance, stages

REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path) -> Path:
    """A small package tree with incompressible bytes (so it spans several small chunks) and members
    the kit must drop: another Python's extension module, headers, a static library, tests, a tool."""
    tree = root / "tree"
    (tree / "pkg" / "sub").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    (tree / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (tree / "pkg" / "mod.cpython-312-x86_64-linux-gnu.so").write_bytes(b"kept")
    (tree / "pkg" / "mod.cpython-311-x86_64-linux-gnu.so").write_bytes(b"dropped")
    (tree / "pkg" / "include").mkdir()
    (tree / "pkg" / "include" / "api.h").write_text("dropped")
    (tree / "pkg" / "libstatic.a").write_bytes(b"dropped")
    (tree / "pkg" / "tests").mkdir()
    (tree / "pkg" / "tests" / "test_x.py").write_text("dropped")
    (tree / "pkg" / "bin").mkdir()
    (tree / "pkg" / "bin" / "tool").write_bytes(b"dropped")
    return tree


def pack_tree(tree: Path, kit_dir: Path) -> dict:
    return kit.pack([(path, path.name) for path in sorted(tree.iterdir())], kit_dir, chunks=3, preset=0)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".kit-sha256"
    }


# ------------------------------------------------------------------------------------------------ kit


def test_kit_splits_into_three_equal_chunks_that_verify_and_unpack_to_the_same_files(tmp_path):
    tree = make_tree(tmp_path)
    manifest = pack_tree(tree, tmp_path / "kit")
    sizes = [chunk["bytes"] for chunk in manifest["chunks"]]
    assert len(sizes) == 3 and max(sizes) - min(sizes) <= 2 and sum(sizes) == manifest["stream"]["bytes"]
    assert json.loads((tmp_path / "kit" / kit.MANIFEST).read_text()) == manifest
    assert not list((tmp_path / "kit").glob("*.partial")), "the unsplit stream is removed"
    assert kit.receive(tmp_path / "kit").startswith("kit: 3 of 3 chunks here")

    unpacked = kit.unpack(tmp_path / "kit", tmp_path / "unpacked")
    expected = {name: data for name, data in files(tree).items() if not kit.droppable(name)}
    assert files(unpacked) == expected
    assert set(expected) == {"pkg/__init__.py", "pkg/sub/data.bin", "pkg/mod.cpython-312-x86_64-linux-gnu.so"}
    assert kit.unpack(tmp_path / "kit", tmp_path / "unpacked") == unpacked  # a complete unpack is reused


def test_a_kit_built_from_the_same_wheels_is_reused_and_a_changed_one_is_not(tmp_path):
    manifest = pack_tree(make_tree(tmp_path), tmp_path / "kit") | {"wheels": ["a.whl"], "preset": 9}
    (tmp_path / "kit" / kit.MANIFEST).write_text(json.dumps(manifest))
    assert kit.up_to_date(tmp_path / "kit", ["a.whl"], 3, 9) == manifest
    assert kit.up_to_date(tmp_path / "kit", ["b.whl"], 3, 9) is None
    assert kit.up_to_date(tmp_path / "kit", ["a.whl"], 3, 6) is None
    (tmp_path / "kit" / "part2").write_bytes(b"cut")
    assert kit.up_to_date(tmp_path / "kit", ["a.whl"], 3, 9) is None


@pytest.mark.parametrize("damage", ["missing", "corrupted", "truncated"])
def test_a_bad_chunk_is_one_line_error_naming_it(tmp_path, damage, capsys):
    pack_tree(make_tree(tmp_path), tmp_path / "kit")
    part2 = tmp_path / "kit" / "part2"
    if damage == "missing":
        part2.unlink()
    elif damage == "corrupted":
        data = bytearray(part2.read_bytes())
        data[100] ^= 0xFF
        part2.write_bytes(bytes(data))
    else:
        part2.write_bytes(part2.read_bytes()[:-10])

    assert kit.main(["unpack", "--kit", str(tmp_path / "kit"), "--dest", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(part2) in err
    assert not (tmp_path / "out").exists()
    assert "part2 " + ("missing" if damage == "missing" else "bad") in kit.receive(tmp_path / "kit")


def test_a_missing_manifest_is_one_line_error(tmp_path, capsys):
    assert kit.main(["verify", "--kit", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / kit.MANIFEST) in err


def test_the_kit_pins_an_nvjpeg_from_after_the_roi_decode_fix():
    """CUDA 13.3 (whose release notes list the ROI-decode fix) shipped nvJPEG 13.2.x."""
    (pin,) = [spec for spec in kit.WHEELS if spec.startswith("nvidia-nvjpeg==")]
    version = tuple(int(part) for part in pin.split("==")[1].split("."))
    assert version >= (13, 2)


# -------------------------------------------------------------------------------------- device calls


def test_three_calls_each_carry_the_manifest_the_stamp_and_one_chunk_and_run_python_directly():
    calls = plan.device_calls({"chunks": [{"name": "part1"}, {"name": "part2"}, {"name": "part3"}]})
    assert [call.number for call in calls] == [1, 2, 3]
    for call in calls:
        assert call.carry == (".gpu-kit/manifest.json", ".gpu-kit/source.json", f".gpu-kit/part{call.number}")
        assert call.command == f"python3 -m launch.gpucheck.check {call.number} --out $OUT"
        assert "make" not in call.command and call.timeout_s > call.budget_s
    with pytest.raises(kit.KitError, match="4 chunks for 3 calls"):
        plan.device_calls({"chunks": [{"name": f"part{n}"} for n in range(1, 5)]})


def test_budgets_fit_the_node_and_each_commands_stage_limits_fit_its_budget():
    for command in check.COMMANDS:
        assert sum(stage.limit_s for stage in command.stages) <= command.budget_s - check.RESERVE_S, command.number
    calls = plan.device_calls({"chunks": [{"name": f"part{n}"} for n in (1, 2, 3)]})
    assert plan.window_seconds(calls) <= plan.WINDOW_S == 13 * 60
    assert all(call.timeout_s <= 600 for call in calls)  # a device call's own limit
    # What needs least comes first: no DALI before call 3; pytest last and taking what is left.
    assert not any(stage.needs_kit for command in check.COMMANDS[:2] for stage in command.stages)
    assert [command.stages[-1].name for command in check.COMMANDS] == ["step", "compile", "pytest-gpu"]
    assert all(
        stage.takes_rest == (stage is command.stages[-1]) for command in check.COMMANDS for stage in command.stages
    )


def test_a_call_over_60_mib_is_refused_naming_its_largest_files(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.gpu-kit/\n")
    (repo / "code.py").write_text("x = 1\n")
    (repo / ".gpu-kit").mkdir()
    for name in ("manifest.json", "source.json"):
        (repo / ".gpu-kit" / name).write_text("{}")
    for part in (1, 2, 3):
        with open(repo / ".gpu-kit" / f"part{part}", "wb") as file:
            file.truncate(58 * kit.MiB)  # sparse: sizes without the disk
    calls = plan.device_calls({"chunks": [{"name": f"part{n}"} for n in (1, 2, 3)]})
    sizes, problems = plan.over_limit(repo, calls)
    assert problems == [] and all(58 * kit.MiB < size < plan.LIMIT_BYTES for size in sizes)

    with open(repo / "stray.bin", "wb") as file:  # an untracked file git does not ignore travels too
        file.truncate(3 * kit.MiB)
    sizes, problems = plan.over_limit(repo, calls)
    assert len(problems) == 3 and all(size > plan.LIMIT_BYTES for size in sizes)
    assert "stray.bin (3.0 MiB)" in problems[0] and ".gpu-kit/part1 (58.0 MiB)" in problems[0]


# ------------------------------------------------------------------------------------------ the stamp


def test_the_stamp_names_the_commit_and_tells_a_changed_copy_from_the_stamped_one(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("ignored.txt\n")
    (repo / "pkg" / "a.py").write_text("A = 1\n")
    (repo / "ignored.txt").write_text("stays here\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    stamp = provenance.write_stamp(repo, repo / ".stamp" / provenance.STAMP)
    assert stamp["commit"] == commit and stamp["dirty"] is False
    assert set(stamp["files"]) == {".gitignore", "pkg/a.py"}  # ignored files do not travel

    (repo / "new.py").write_text("untracked, not ignored\n")
    assert provenance.make_stamp(repo)["dirty"] is True and "new.py" in provenance.make_stamp(repo)["files"]

    node = tmp_path / "node"  # a copy without .git, as the GPU node receives it
    (node / "pkg").mkdir(parents=True)
    (node / "pkg" / "a.py").write_text("A = 1\n")
    (node / ".gitignore").write_text("ignored.txt\n")
    found = provenance.check_stamp(node, repo / ".stamp" / provenance.STAMP)
    assert found["commit"] == commit and found["matches"] is True
    (node / "pkg" / "a.py").write_text("A = 2\n")
    found = provenance.check_stamp(node, repo / ".stamp" / provenance.STAMP)
    assert found["matches"] is False and found["differs"] == ["pkg/a.py"]
    assert provenance.check_stamp(node, node / "absent.json")["matches"] is None


# -------------------------------------------------------------------------------------------- stages


def stage_context(tmp_path: Path, limit_s: float) -> stages.Context:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    ctx = stages.Context(
        command=9, out=out, work=tmp_path, kit_dir=tmp_path / "kit", images=8, dry_run=True, env=dict(os.environ)
    )
    ctx.limit_s = limit_s
    ctx.log.write_text("")
    return ctx


def test_a_stage_cut_at_its_limit_keeps_the_figures_written_so_far_and_leaves_no_process(tmp_path):
    """The program writes its JSON, starts a grandchild, then hangs: at the limit the whole group gets
    SIGINT (the program reports it), then SIGKILL; the partial JSON is kept."""
    marker = tmp_path / "grandchild.pid"
    program = textwrap.dedent(f"""
        import json, subprocess, sys, time
        json.dump({{"rows": 1}}, open({str(tmp_path / "figures.json")!r}, "w"))
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(child.pid))
        print("working", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted: writing a summary", flush=True)
            time.sleep(60)  # and then hang: SIGKILL follows
    """)
    ctx = stage_context(tmp_path, limit_s=4.5)
    started = time.monotonic()
    finished = stages.run_logged(ctx, "hang", [sys.executable, "-c", program], grace=1.5)
    assert finished.timed_out and not finished.ok and time.monotonic() - started < ctx.limit_s + 3
    assert "working" in finished.output and "interrupted: writing a summary" in finished.output
    with pytest.raises(stages.StageFailed) as failed:
        stages.figures_or_fail(ctx, finished, tmp_path / "figures.json")
    assert failed.value.timed_out and failed.value.figures == {"rows": 1}
    grandchild = int(marker.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{grandchild}").exists() or "zombie" in Path(f"/proc/{grandchild}/status").read_text()


def test_gpu_stages_are_not_run_without_cuda_and_say_why(tmp_path):
    ctx = stage_context(tmp_path, 10)
    ctx.dry_run = False
    step = check.COMMANDS[0].stages[1]
    record: dict = {"name": step.name}
    check.run_stage(ctx, step, time.monotonic() + 100, record)
    assert record["status"] == check.NOT_RUN and "no CUDA" in record["reason"]
    ctx.cuda = True
    loaders = next(stage for stage in check.COMMANDS[2].stages if stage.name == "loaders")
    record = {"name": loaders.name}
    check.run_stage(ctx, loaders, time.monotonic() + 100, record)
    assert record["status"] == check.NOT_RUN and record["reason"].startswith("needs DALI")


def test_training_figures_are_per_phase_without_each_phases_first_window():
    rows = [
        {"step": 25, "phase": "nogan", "perf/images_per_s": 10.0, "data/wait_fraction": 0.5, "train/l1": 0.3},
        {"step": 50, "phase": "nogan", "perf/images_per_s": 100.0, "data/wait_fraction": 0.01, "train/l1": 0.2},
        {"step": 75, "phase": "nogan", "perf/images_per_s": 110.0, "data/wait_fraction": 0.03, "train/l1": 0.1},
        {"step": 100, "phase": "gan", "perf/images_per_s": 20.0, "train/d_total": 1.4},
        {"step": 125, "phase": "gan", "perf/images_per_s": 300.0, "train/d_total": 1.2},
    ]
    figures = stages.summarise_training(rows)
    nogan, gan = figures["phases"]["nogan"], figures["phases"]["gan"]
    assert nogan["windows"] == 2 and nogan["images_per_s_mean"] == 105.0 and nogan["data_wait_fraction_max"] == 0.03
    assert nogan["train/l1"] == {"first": 0.3, "last": 0.1}
    assert gan["windows"] == 1 and gan["images_per_s_mean"] == 300.0 and gan["train/d_total"]["last"] == 1.2
    assert figures["last_step"] == 125


def test_pytest_counts_come_from_the_junit_report_or_else_from_the_verbose_lines(tmp_path):
    junit = tmp_path / "report.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="t.a" name="ok"/><testcase classname="t.a" name="bad">'
        '<failure message="x"/></testcase><testcase classname="t.b" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    assert stages.junit_counts(junit) == {"passed": 1, "failed": 1, "error": 0, "skipped": 1, "failing": ["t.a::bad"]}
    assert stages.junit_counts(tmp_path / "missing.xml") is None
    output = "tests/t.py::a PASSED [ 33%]\ntests/t.py::b[x] FAILED [ 66%]\ntests/t.py::c PASSED [100%]\n"
    assert stages.verbose_counts(output) == {"failed": 1, "passed": 2}
    files = stages.gpu_test_files(REPO / "tests")
    assert files[0] == "tests/test_gpu_decode.py" and "tests/test_train_gpu.py" in files


# -------------------------------------------------------------------------------- benchmarks it runs


@pytest.mark.slow
def test_step_benchmark_sweeps_batch_sizes_writes_peak_figures_and_a_profiler_trace(tmp_path, capsys):
    from launch.bench import main as bench

    report = tmp_path / "step.json"
    code = bench(
        [
            "step",
            "--device",
            "cpu",
            "--features",
            "8",
            "--batch-sizes",
            "1,2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--profile-dir",
            str(tmp_path / "traces"),
            "--profile-steps",
            "1",
            "--json",
            str(report),
            "model.disc_features=8",
            "loss.feature_weight_nogan=0",
        ]
    )
    assert code == 0
    figures = json.loads(report.read_text())
    assert figures["complete"] and [run["batch"] for run in figures["runs"]] == [1, 2]
    assert figures["phases"] == figures["runs"][0]["phases"] and figures["batch"] == 1
    for run in figures["runs"]:
        for phase in ("nogan", "gan"):
            row = run["phases"][phase]
            assert row["images_per_s"] > 0 and row["warmup_s"] >= row["warmup_overhead_s"] >= 0
            assert row["peak_memory_gib"] is None  # CPU: no CUDA allocator to ask
            trace = tmp_path / "traces" / row["profile"]["trace"]
            assert trace.name == f"trace-{phase}-b{run['batch']}.json.gz" and row["profile"]["trace_bytes"] > 0
            assert json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert capsys.readouterr().out.count(" nogan ") == 2
    assert bench(["step", "--device", "cpu", "--batch-sizes", "4,x"]) == 2
    assert "--batch-sizes '4,x'" in capsys.readouterr().err


@pytest.mark.slow
def test_loader_benchmark_takes_batch_and_threads_from_the_config_and_its_ceiling_decodes_the_crop(tmp_path):
    from launch.bench import main as bench
    from launch.bench.loader import generate_shards

    shards = generate_shards(tmp_path, 24, 2)
    report = tmp_path / "loader.json"
    args = ["loader", "--config", "configs/imagenet.yaml", "--device", "cpu", "--backends", "dali"]
    args += ["--shards", str(shards), "--seconds", "1", "--rounds", "2", "--warmup", "1", "--json", str(report)]
    assert bench(args) == 0
    figures = json.loads(report.read_text())
    settings = figures["settings"]
    assert (settings["batch_size"], settings["threads"]) == (64, 8)  # configs/imagenet.yaml's
    assert settings["ceiling_decode"] == "random-crop ROI decode" and settings["crop_scale"] == [0.35, 1.0]
    assert figures["complete"] and figures["rounds_done"] == 2 and list(figures["ceilings"]) == ["ceiling"]
    assert figures["decode_ceiling_images_per_s"] == figures["ceilings"]["ceiling"]["images_per_s"] > 0
    assert figures["hardware_decoder"] == {"used": None, "evidence": "CPU run"}
    assert bench([*args[:-2], "--json", str(report), "--threads", "1"]) == 0  # an explicit option wins
    assert json.loads(report.read_text())["settings"]["threads"] == 1


def test_the_hardware_decoder_verdict_reads_the_jpeg_engines_while_a_hardware_share_ran():
    import torch

    from launch.bench.loader import hardware_decoder_verdict, merge_spans

    class Monitor:
        available, reason = True, ""

    cuda = torch.device("cuda")
    busy = {"dali": {"max_percent": 40}, "ceiling, hw_decoder_load 0": {"max_percent": 0}}
    assert hardware_decoder_verdict(Monitor(), busy, cuda)["used"] is True
    idle = {"dali": {"max_percent": 0}, "ceiling, hw_decoder_load 0": {"max_percent": 0}}
    assert hardware_decoder_verdict(Monitor(), idle, cuda)["used"] is False
    Monitor.available, Monitor.reason = False, "NVML JPEG utilisation unavailable"
    assert hardware_decoder_verdict(Monitor(), busy, cuda) == {"used": None, "evidence": Monitor.reason}
    spans = [
        {"mean_percent": 10.0, "max_percent": 20, "samples": 1},
        {"mean_percent": 40.0, "max_percent": 50, "samples": 3},
    ]
    assert merge_spans(spans) == {"mean_percent": 32.5, "max_percent": 50, "samples": 4}


def test_the_documented_stage_limits_and_budgets_are_the_commands():
    import re

    text = (REPO / "docs" / "gpu-check.md").read_text()
    documented = re.findall(r"^\| ([123]) \| ([a-z-]+) \((\d+) s", text, flags=re.MULTILINE)
    assert documented == [
        (str(command.number), stage.name, str(stage.limit_s)) for command in check.COMMANDS for stage in command.stages
    ]
    for command in check.COMMANDS:
        assert f"check {command.number} --out $OUT` | {command.budget_s} s |" in text
