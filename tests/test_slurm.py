"""launch/slurm.sh under a stand-in Slurm: what it asks srun and the launcher for."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fake(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_script_passes_cpus_per_task_and_a_grace_period_inside_the_signal_window(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _fake(bin_dir / "scontrol", "printf 'node-a\\nnode-b\\n'\n")
    # srun: record its own options and the environment, then run the per-node command once as node 1.
    _fake(
        bin_dir / "srun",
        f'echo "srun $*" >> {log}\n'
        f'echo "grace=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" >> {log}\n'
        "while [[ $1 == --* ]]; do shift; done\n"
        'SLURM_NODEID=1 exec "$@"\n',
    )
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _fake(venv / "bin" / "accelerate", f'echo "accelerate $*" >> {log}\n')
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_CPUS_PER_TASK="96",
        PYTHON_ENV=str(venv),
    )
    env.pop("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", None)
    subprocess.run(
        ["bash", "launch/slurm.sh", "configs/imagenet.yaml", "run.name=x"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    calls = log.read_text()
    assert "srun --ntasks-per-node=1 --cpus-per-task=96 " in calls
    grace = int(calls.split("grace=")[1].split()[0])
    signal_lead = int((REPO / "launch" / "slurm.sh").read_text().split("--signal=TERM@")[1].split()[0])
    assert 30 < grace < signal_lead  # longer than torch's default, shorter than the warning before the limit
    assert (
        "accelerate launch --config_file configs/accelerate/multinode.yaml --num_machines 2 "
        "--num_processes 16 --machine_rank 1 --main_process_ip node-a --main_process_port 29500 "
        "launch/train.py --config configs/imagenet.yaml --resume run.name=x"
    ) in calls
