"""The device check's kit (build → chunks → verify → unpack) and the check's dry run, all on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from launch.gpucheck import kit

REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path) -> Path:
    """A small package tree with incompressible bytes (so it spans several small chunks) and members
    the kit must drop: another Python's extension module, headers, a static library, tests."""
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
    return tree


def pack_tree(tree: Path, kit_dir: Path) -> dict:
    return kit.pack([(path, path.name) for path in sorted(tree.iterdir())], kit_dir, chunk_bytes=100_000, preset=0)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".kit-sha256"
    }


def test_kit_chunks_verify_and_unpack_to_the_same_files(tmp_path):
    tree = make_tree(tmp_path)
    manifest = pack_tree(tree, tmp_path / "kit")
    chunks = manifest["chunks"]
    assert len(chunks) >= 3 and all(chunk["bytes"] <= 100_000 for chunk in chunks)
    assert sum(chunk["bytes"] for chunk in chunks) == manifest["stream"]["bytes"]
    assert json.loads((tmp_path / "kit" / kit.MANIFEST).read_text()) == manifest
    assert kit.receive(tmp_path / "kit").startswith(f"kit: {len(chunks)} of {len(chunks)} chunks here")

    unpacked = kit.unpack(tmp_path / "kit", tmp_path / "unpacked")
    expected = {name: data for name, data in files(tree).items() if not kit.droppable(name)}
    assert files(unpacked) == expected
    assert set(expected) == {"pkg/__init__.py", "pkg/sub/data.bin", "pkg/mod.cpython-312-x86_64-linux-gnu.so"}
    assert kit.unpack(tmp_path / "kit", tmp_path / "unpacked") == unpacked  # a complete unpack is reused


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


def test_device_calls_carry_one_chunk_each_and_the_last_runs_the_check():
    manifest = {"chunks": [{"name": "part1"}, {"name": "part2"}, {"name": "part3"}]}
    calls = kit.device_calls(manifest)
    assert calls[0].startswith('call 1: carry [".gpu-kit/manifest.json", ".gpu-kit/part1"]')
    assert '[".gpu-kit/part2"]' in calls[1] and "launch.gpucheck.kit receive" in calls[1]
    assert '[".gpu-kit/part3"]' in calls[2] and "make gpu-check OUT=$OUT" in calls[2]


@pytest.mark.slow
def test_check_dry_run_lists_cuda_steps_as_skipped(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.gpucheck.check",
            "--out",
            str(out),
            "--dry-run",
            "--kit",
            str(tmp_path / "no-kit"),
            "--images",
            "16",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "gpucheck.json").read_text())
    status = {step["name"]: step["status"] for step in results["steps"]}
    assert status == {
        "facts": "ok",
        "kit": "ok",
        "shards": "ok",
        "pytest-gpu": "skipped",
        "bench-loader": "skipped",
        "bench-step": "skipped",
        "train": "skipped",
        "bench-step-compile": "skipped",
    }
    kit_step = next(step for step in results["steps"] if step["name"] == "kit")
    assert kit_step["figures"]["kit"].startswith("no kit")
    assert results["dry_run"] is True and "skipped" in done.stdout and (out / "gpucheck.log").is_file()


@pytest.mark.slow
def test_a_reassembled_kit_imports_dali_from_the_unpacked_tree(tmp_path):
    """Packs the installed DALI (with nvImageCodec, nvCOMP and nvJPEG beside it) as a kit, unpacks
    it, and runs a CPU pipeline in a fresh Python whose path puts the unpacked tree first."""
    site = Path(sysconfig.get_paths()["purelib"])
    nvidia = site / "nvidia"
    assert (nvidia / "dali").is_dir(), f"nvidia-dali is a dependency (make install) but is not in {site}"
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "__init__.py").write_text(kit.NAMESPACE_INIT)
    sources = [(staged / "__init__.py", "nvidia/__init__.py")]
    sources += [
        (nvidia / name, f"nvidia/{name}") for name in ("dali", "nvimgcodec", "libnvcomp") if (nvidia / name).is_dir()
    ]
    nvjpeg = nvidia / "cu13" / "lib" / "libnvjpeg.so.13"
    if nvjpeg.is_file():
        sources.append((nvjpeg, "nvidia/cu13/lib/libnvjpeg.so.13"))
    tag = f"{sys.version_info.major}{sys.version_info.minor}"
    manifest = kit.pack(sources, tmp_path / "kit", chunk_bytes=40 * kit.MiB, preset=0, python_tag=tag)
    assert len(manifest["chunks"]) >= 2
    tree = kit.unpack(tmp_path / "kit", tmp_path / "unpacked")

    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        import nvidia.dali
        from nvidia.dali import fn, pipeline_def
        assert nvidia.dali.__file__.startswith(sys.argv[1]), nvidia.dali.__file__

        @pipeline_def(batch_size=2, num_threads=1, device_id=None)
        def ramp():
            return fn.random.uniform(range=[0.0, 1.0], shape=[3]) * 0 + 1

        pipe = ramp()
        pipe.build()
        (out,) = pipe.run()
        assert np.array(out.as_tensor()).tolist() == [[1.0] * 3] * 2
        print("ok", nvidia.dali.__version__, nvidia.dali.__file__)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ") and str(tree) in done.stdout
