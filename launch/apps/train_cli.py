"""`colorize-train`: `accelerate launch launch/train.py`, with the run checked before any training
process starts, and the training processes' exit status passed on.

    colorize-train [accelerate launch options] --config RUN.yaml [key=value ...] [--resume | --overwrite]

Everything before `--config` goes to `accelerate launch` (`--config_file configs/accelerate/cpu2.yaml`,
`--num_processes 16`, `--machine_rank 1`, …); `--config` and everything after it go to launch/train.py.
Without `--config_file` and without a default accelerate config (`accelerate config`), one process
runs: with configs/accelerate/1gpu.yaml where there is a GPU, else with configs/accelerate/cpu1.yaml.

Why not `accelerate launch` alone: accelerate 1.15 turns any failure of a training process into exit 1
and a traceback of its own (one process: `subprocess.CalledProcessError`; several: torchrun's
`ChildFailedError` report), and on Ctrl-C its launcher prints a `KeyboardInterrupt` traceback and
returns while the training process is still saving (`simple_launcher` and `multi_gpu_launcher` in
accelerate/commands/launch.py; `--quiet` only turns the first case into a bare exit 1). Here:
- the config, the shards and the run directory are checked in this process first: a mistake is one
  `error:` line and exit 2, before any training process starts;
- SIGINT, SIGTERM and SIGUSR1 reach the training processes, which finish their step, save, and say so
  in one line; this process waits for them;
- the exit status is the training processes' (0 done, 1 error, 2 config mistake, 130 / 143 stopped by
  SIGINT / SIGTERM, 138 SIGUSR1, after saving), with no launcher traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "launch" / "train.py"
PROG = "colorize-train"


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate launch's arguments, launch/train.py's arguments): the split is at `--config`."""
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            return argv[:i], argv[i:]
    return argv, []


def default_accelerate_config() -> str | None:
    """Our one-process accelerate config for this machine, when the user has none of their own."""
    from accelerate.commands.config.config_args import default_config_file

    if os.path.isfile(default_config_file):
        return None
    import torch

    return str(REPO / "configs" / "accelerate" / ("1gpu.yaml" if torch.cuda.is_available() else "cpu1.yaml"))


def launch_setting(launch_args, name: str, default: int) -> int:
    """An accelerate setting as this launch will use it: the command line's, else the accelerate
    config file's, else `default`."""
    if getattr(launch_args, name) is not None:
        return int(getattr(launch_args, name))
    import yaml
    from accelerate.commands.config.config_args import default_config_file

    path = Path(launch_args.config_file or default_config_file)
    tree = yaml.safe_load(path.read_text()) if path.is_file() else None
    value = (tree or {}).get(name)
    return default if value is None else int(value)


def check_config(train_args):
    """The run's Config, after the checks every training process would make first: the config itself
    and the shards (ConfigError / ShardsDirError). Nothing heavy is imported for these."""
    from configs import load_config
    from pipeline.shard_list import split_shards

    cfg = load_config(train_args.config, train_args.overrides)
    split_shards(cfg.data.shards, "train", need_index=cfg.data.backend == "dali")
    return cfg


def check_launch(cfg, train_args, launch_args) -> None:
    """The checks that depend on the launch: the batch split over its processes, and, on the first
    machine (before any process can write there), the run directory. ConfigError when they fail."""
    from configs import scale_to_processes
    from launch.training.run_dir import check_fresh_start

    scale_to_processes(cfg, max(1, launch_setting(launch_args, "num_processes", 1)))
    if launch_setting(launch_args, "machine_rank", 0) == 0:
        check_fresh_start(cfg.run_dir, train_args.resume, train_args.overwrite)


class _ThreadCountNote(logging.Filter):
    """Drops accelerate's warning that it chose `--num_cpu_threads_per_process` itself (cores ÷
    processes, the value we want) when that is all it says. The accelerate config file cannot hold the
    value: accelerate 1.15's ClusterConfig has no such key and refuses unknown keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        items = [line for line in record.getMessage().splitlines() if line.startswith("\t")]
        return not (items and all("--num_cpu_threads_per_process" in line for line in items))


def _quiet_launcher_logs() -> None:
    logging.getLogger("accelerate.commands.launch").addFilter(_ThreadCountNote())
    # torchrun's agent logs each signal it forwards and each rank it stops as warnings; the training
    # processes say what happened themselves. Its errors (a rank that failed) still show.
    import torch.distributed.run  # noqa: F401  (creates the agent's loggers)

    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.ERROR)


def _forward_signals() -> None:
    """SIGINT / SIGTERM / SIGUSR1 to this process go on to the training processes instead of stopping
    it, so it waits for them to save. (With several processes torchrun installs its own handlers for
    SIGINT and SIGTERM, which forward the signal and then raise SignalException once the ranks have
    stopped; SIGUSR1, the time-limit warning, it leaves to ours.)"""
    import psutil

    def forward(signum: int, frame) -> None:
        for child in psutil.Process().children():
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, forward)


def _status(code: int) -> int:
    """A training process's exit status as ours; a process killed by a signal is named in one line."""
    if code < 0:
        print(f"{PROG}: a training process was killed by {signal.Signals(-code).name}", file=sys.stderr)
        return 128 - code
    return code


def parse_launch_args(launch_argv: list[str], train_argv: list[str]):
    """accelerate launch's namespace for launch/train.py with `train_argv`; ConfigError when something
    other than an accelerate option stands before `--config`."""
    from accelerate.commands.launch import launch_command_parser

    from configs import ConfigError

    launch_args = launch_command_parser().parse_args([*launch_argv, str(TRAIN_SCRIPT), *train_argv])
    if launch_args.training_script != str(TRAIN_SCRIPT):
        raise ConfigError(
            f"{launch_args.training_script!r} stands before --config: give key=value overrides after --config"
        )
    if launch_args.config_file is None:
        launch_args.config_file = default_accelerate_config()
    return launch_args


def launch(launch_args) -> int:
    """Start the training processes through accelerate; returns their exit status."""
    from accelerate.commands.launch import launch_command
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _quiet_launcher_logs()
    _forward_signals()
    try:
        launch_command(launch_args)
    except subprocess.CalledProcessError as exc:  # one process
        return _status(exc.returncode)
    except ChildFailedError as exc:  # several processes (torchrun)
        return _status(exc.get_first_failure()[1].exitcode)
    except SignalException as exc:  # several processes: torchrun stopped the ranks after the signal
        return 128 + int(exc.sigval)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    launch_argv, train_argv = split_argv(argv)
    try:
        from configs import ConfigError
        from launch.training.command_line import build_parser, parse_args
        from pipeline.shard_list import ShardsDirError

        if not train_argv:
            parser = build_parser(prog=f"{PROG} [accelerate launch options]")
            if {"-h", "--help"} & set(launch_argv):
                parser.print_help()
                return 0
            parser.error("the following arguments are required: --config")
        train_args = parse_args(train_argv, prog=PROG)
        try:
            cfg = check_config(train_args)
            launch_args = parse_launch_args(launch_argv, train_argv)
            check_launch(cfg, train_args, launch_args)
        except (ConfigError, ShardsDirError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before training started", file=sys.stderr)
        return 130
    return launch(launch_args)


if __name__ == "__main__":
    sys.exit(main())
