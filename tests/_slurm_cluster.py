"""A real two-node Slurm cluster on this machine, for the tests: munged, slurmctld and two slurmd.

Debian's `slurm-wlm` and `munge` (installed by `make install`, tests/install_slurm.sh). Everything the
daemons write — config, munge key and socket, state, spool, logs — lives in one folder; every port is
free when picked; the nodes are `n1` and `n2` at 127.0.0.1. The daemons run as root (Slurm's and
munge's own users are for real clusters). `SlurmCluster.env()` is the environment for sbatch, scontrol
and the jobs themselves (SLURM_CONF points at this cluster).

Settings chosen for speed, each standard slurm.conf:
- `AuthInfo=…,cred_expire=5`: a requeued job may start again 5 s after it ended; the default, 120 s,
  is what makes a requeued job wait ~2 min with Reason=BeginTime.
- `SchedulerParameters=sched_interval=1,bf_interval=1`: the scheduler looks at pending jobs every
  second, so an eligible job starts at once.
Everything else is Slurm's default, KillWait=30 included: a requeue, scancel or time limit sends
SIGTERM, and SIGKILL 30 s later.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODES = ("n1", "n2")
CPUS_PER_NODE = 2
MEMORY_MB = 8000


def missing_daemons() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).is_file()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "socket"
        self.logs = self.root / "log"
        self.daemons: list[subprocess.Popen] = []
        self.munged_pid: int | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = True) -> str:
        """A Slurm command (sbatch, scontrol, squeue, …) against this cluster; its stdout."""
        result = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    # Start and stop ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        for folder in ("state", "spool", "run", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o711)  # munged insists: the socket's folder open to all, writable by it only
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        pid_file = self.munge_dir / "munged.pid"
        subprocess.run(
            [
                _binary("munged"),
                "--force",  # as root
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={pid_file}",
                f"--log-file={self.logs / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'seed'}",
            ],
            check=True,
            timeout=30,
        )
        self.munged_pid = int(pid_file.read_text())
        self._write_conf()
        self._spawn(_binary("slurmctld"), "-D")
        self._wait(lambda: self.run("scontrol", "ping", check=False).count("UP") > 0, timeout, "slurmctld")
        for node in NODES:
            self._spawn(_binary("slurmd"), "-D", "-N", node)
        self._wait(self._nodes_idle, timeout, "both slurmd")

    def _spawn(self, *args: str) -> None:
        name = Path(args[0]).name + ("-" + args[-1] if args[0].endswith("slurmd") else "")
        log = (self.logs / f"{name}.out").open("w")
        self.daemons.append(
            subprocess.Popen(args, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def _nodes_idle(self) -> bool:
        states = self.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False).split()
        return states.count("idle") == len(NODES)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}; logs in {self.logs}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s; logs in {self.logs}")
            time.sleep(0.2)

    def _write_conf(self) -> None:
        host = socket.gethostname()
        lines = [
            "ClusterName=colorize-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket},cred_expire=5",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1,bf_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=600",
            "JobRequeue=1",
        ]
        for node in NODES:
            lines.append(
                f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} "
                f"CPUs={CPUS_PER_NODE} RealMemory={MEMORY_MB} State=UNKNOWN"
            )
        lines.append(f"PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Cancel every job, wait for them to end, then stop the daemons this cluster started."""
        if any(d.poll() is None for d in self.daemons):
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 60
            while self.run("squeue", "--noheader", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        if self.munged_pid is not None:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # Jobs -------------------------------------------------------------------------------------------

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> int:
        """Submit a batch job from `cwd` (with `env` added to the environment it inherits); its id."""
        result = subprocess.run(
            ["sbatch", "--parsable", *args], cwd=cwd, env=self.env(**(env or {})), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job` as key → value (the first record: an array's first task)."""
        text = self.run("scontrol", "--oneliner", "show", "job", str(job_id)).splitlines()[0]
        return dict(re.findall(r"(\S+?)=(\S*)", text))

    def wait_for(self, job_id: int | str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        """Poll until the job's JobState is one of `states`; its record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["JobState"] in states:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {record['JobState']} after {timeout:.0f} s: {record}")
            time.sleep(0.5)
