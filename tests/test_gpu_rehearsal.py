"""`make gpu-rehearse`: the GPU check's three device calls on a CPU stand-in of the air-gapped node,
driven as a user runs it, then its results read from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.gpucheck.check import COMMANDS, NOT_RUN
from launch.gpucheck.plan import LIMIT_BYTES

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_three_calls_run_on_a_cpu_stand_in_of_the_node(tmp_path):
    standin = tmp_path / "standin"
    done = subprocess.run(
        [sys.executable, "-m", "launch.gpucheck.rehearse", "--keep", str(standin), "--json", str(tmp_path / "r.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "all three calls as expected" in done.stdout
    reports = json.loads((tmp_path / "r.json").read_text())
    assert [report["call"] for report in reports] == [1, 2, 3]
    for report, command in zip(reports, COMMANDS, strict=True):
        assert report["exit_status"] == 0 and report["problems"] == []
        assert 0 < report["carried_bytes"] <= LIMIT_BYTES
        results = json.loads((standin / f"out-{command.number}" / f"check-{command.number}.json").read_text())
        assert results["command"] == command.number and results["cuda"] is False
        for stage, record in zip(command.stages, results["stages"], strict=True):
            assert record["name"] == stage.name
            if stage.needs_cuda:  # clearly marked, with the reason
                assert record["status"] == NOT_RUN and "no CUDA" in record["reason"], record
            else:
                assert record["status"] == "ok", record
        facts = results["stages"][0]["figures"]
        assert {"nvidia.dali", "webdataset", "wandb", "gradio"} <= set(facts["absent"])
        assert Path(facts["code_root"]).resolve() == (standin / "node").resolve()
        assert facts["code"]["matches"] is True and len(facts["code"]["commit"]) == 40
        assert facts["train_config"] == "ok"  # call 3's training overrides load
        assert f"check-{command.number}.json" in results["files"]
    kit = next(record for record in results["stages"] if record["name"] == "kit")["figures"]
    assert Path(kit["dali_file"]).resolve().is_relative_to((standin / "tmp").resolve())
    assert kit["decoded_on_cpu"] == 8 and kit["kit_on_path"] == "yes"
    # Only what the calls carried reached the node: no .git, no .venv.
    assert not (standin / "node" / ".git").exists() and not (standin / "node" / ".venv").exists()
    assert sorted(os.listdir(standin / "node" / ".gpu-kit")) == [
        "manifest.json",
        "part1",
        "part2",
        "part3",
        "source.json",
    ]
