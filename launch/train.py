"""Train the colorization GAN: NoGAN (generator only), a critic warm-up (discriminator only, when
configured), then GAN (PatchGAN discriminator), in one run.

    colorize-train [accelerate launch options] --config configs/demo.yaml [key=value ...] [--resume | --overwrite]
    accelerate launch [--config_file configs/accelerate/1gpu.yaml] launch/train.py --config ... (the same)

Also runs as `python launch/train.py ...` (one process) and as `launch.train.main([...])` in-process.
`colorize-train` (launch/apps/train_cli.py) checks the config before it starts the processes.
Everything is built by the small `build_*` functions below; `train_loop` is the loop. Outputs go to
`<run.out_dir>/<run.name>/` (see docs/training.md).

Exit status: 0 finished; 1 the run stopped on an error (non-finite loss, unusable checkpoint);
2 a configuration or data-location mistake; 128 + signal number (143 for SIGTERM, 130 for SIGINT,
138 for SIGUSR1, launch/slurm.sh's time-limit warning) when a signal stopped the run after saving a
checkpoint, so job scripts can tell "stopped early, resumable" from "finished".
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from configs import Config, ConfigError, config_to_dict, dump_config, load_config, scale_to_processes
from launch.eval.evaluate import evaluate_batches
from launch.training import wandb_run
from launch.training.checkpoint import (
    TrainingState,
    check_ema,
    check_processes,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from launch.training.command_line import parse_args
from launch.training.errors import TrainingError
from launch.training.gan import ColorizationGAN, build_gan
from launch.training.monitor import LossMonitor
from launch.training.run_dir import check_fresh_start, set_aside
from launch.training.samples import sample_grid, save_png
from launch.training.schedule import CRITIC, NOGAN, TITLES, is_phase_start, is_phase_switch, phase_at
from launch.training.signals import StopRequest
from launch.training.timing import StepTimer
from launch.training.tracking import RunLogger, keep_wandb_files_in, resolve_wandb_mode
from models.export import save_generator
from pipeline import make_loader
from pipeline.loader_base import BadShardError, Loader
from pipeline.shard_list import ShardsDirError, read_manifest, split_shards


@dataclass
class Run:
    """Everything the loop touches, built once by `build_run`."""

    cfg: Config
    accelerator: Accelerator
    state: TrainingState
    gan: ColorizationGAN
    loader: Loader
    """The training loader: iterable of (L, ab) on the device, with state_dict()/load_state_dict()."""
    logger: RunLogger
    stop: StopRequest
    sample_batch: tuple[torch.Tensor, torch.Tensor] | None
    """Fixed val batch (L, ab) for the sample grid, on rank 0; None elsewhere or without a val split."""
    val_loader: Loader | None
    """This rank's val loader, reused by every evaluation; None without a val split."""

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def checkpoint_root(self) -> Path:
        return self.cfg.run_dir / "checkpoints"


# --------------------------------------------------------------------------------------------------
# Building


def build_accelerator(cfg: Config) -> Accelerator:
    """Accelerate for this process: CPU or CUDA, bf16 autocast on CUDA unless told otherwise."""
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device = 'cuda' but CUDA is not available on this machine")
    cpu = cfg.run.device == "cpu" or not torch.cuda.is_available()
    precision = cfg.run.mixed_precision
    if precision == "auto":
        precision = "no" if cpu else "bf16"
    if precision == "bf16" and cpu:
        raise ConfigError("run.mixed_precision = 'bf16' is for CUDA runs; use 'no' or 'auto' on CPU")
    if not cpu:
        torch.backends.cudnn.benchmark = not cfg.run.deterministic
        torch.backends.cudnn.deterministic = cfg.run.deterministic
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        project_dir=str(cfg.run_dir),
    )


def build_loaders(cfg: Config, accelerator: Accelerator) -> tuple[Loader, bool]:
    """The endless training loader for this rank, and whether a val split exists (for samples and eval)."""
    loader = make_loader(
        cfg.data,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
        split="train",
        seed=cfg.run.seed,
    )
    # Whether the manifest lists a val split; a val shard it lists but the store cannot give is an error
    # (make_loader's), not "no val split".
    has_val = any(entry.get("split") == "val" for entry in read_manifest(cfg.data.shards)["shards"])
    return loader, has_val


def build_val_loader(cfg: Config, accelerator: Accelerator, has_val: bool) -> Loader | None:
    """This rank's share of the val split, one deterministic pass per `iter()`: built once and reused
    by every evaluation (a GPU pipeline's decoder set-up is not repeated); None without a val split."""
    if not has_val:
        return None
    return make_loader(
        cfg.data,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
        split="val",
        endless=False,
        seed=cfg.run.seed,
    )


def build_sample_batch(cfg: Config, accelerator: Accelerator, has_val: bool):
    """The first `logging.sample_count` val images (rank 0 only), fixed for the whole run: one batch
    of exactly that many images is decoded, once."""
    if not (accelerator.is_main_process and has_val):
        return None
    data = dataclasses.replace(cfg.data, batch_size=cfg.logging.sample_count, batch_size_unit="global")
    loader = make_loader(data, 0, 1, accelerator.device, split="val", endless=False, seed=cfg.run.seed)
    try:
        return next(iter(loader), None)
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


def build_logger(cfg: Config, accelerator: Accelerator, wandb_mode: str, start_step: int, resume: bool) -> RunLogger:
    """The metrics file and progress bar, then (rank 0, W&B on) the W&B run: one id per training run,
    created with the run directory before the first step and kept by every --resume (wandb_run.py)."""
    logger = RunLogger(accelerator, cfg.run_dir, cfg.total_steps, start_step)
    if wandb_mode == "disabled" or not accelerator.is_main_process:
        return logger
    run_id = wandb_run.stable_run_id(cfg.run_dir, resume=resume)
    config = wandb_run.flat_config(config_to_dict(cfg))
    logger.wandb = wandb_run.open_run(cfg, config, run_id, wandb_mode, start_step, logger.write)
    if wandb_mode == "offline":
        logger.write(f"W&B is offline (no credentials): upload later with `colorize-wandb sync {cfg.run_dir}`")
    return logger


def build_run(cfg: Config, resume: bool, overwrite: bool = False) -> Run:
    """Build everything, restore the latest checkpoint when resuming, and return the ready Run.
    `overwrite`: an earlier run in the run directory is first moved aside (see run_dir.py)."""
    # Stop signals are caught from here on: one that comes while things are built (a Slurm time-limit
    # warning included) stops the run after its first step, with a checkpoint.
    stop = StopRequest().install()
    try:
        return _build_run(cfg, resume, overwrite, stop)
    except BaseException:
        stop.restore()
        raise


def _build_run(cfg: Config, resume: bool, overwrite: bool, stop: StopRequest) -> Run:
    # Missing or incomplete shards, or a fresh start over an earlier run, are user mistakes: say so
    # before anything is built or written (every rank checks before they meet, so all see the same).
    split_shards(cfg.data.shards, "train", need_index=cfg.data.backend == "dali")
    check_fresh_start(cfg.run_dir, resume, overwrite)
    wandb_mode = resolve_wandb_mode(cfg.logging.wandb)
    accelerator = build_accelerator(cfg)
    if overwrite:
        moved = set_aside(cfg.run_dir) if accelerator.is_main_process else None
        if moved is not None:
            print(f"--overwrite: moved the earlier run to {moved}", file=sys.stderr)
        accelerator.wait_for_everyone()
    if wandb_mode != "disabled":
        keep_wandb_files_in(cfg.run_dir)
    cfg, scaling = scale_to_processes(cfg, accelerator.num_processes)
    checkpoint = latest_checkpoint(cfg.run_dir / "checkpoints") if resume else None
    if checkpoint is not None:  # before config.yaml is rewritten for a different number of processes
        check_processes(checkpoint, accelerator.num_processes)
    if accelerator.is_main_process:
        text = dump_config(cfg, cfg.run_dir / "config.yaml")
        print(f"resolved config (saved to {cfg.run_dir / 'config.yaml'}):\n{text}", file=sys.stderr)
        for line in scaling:
            print(line, file=sys.stderr)
    gan = build_gan(cfg, accelerator)
    loader, has_val = build_loaders(cfg, accelerator)
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    if gan.ema is not None:  # after the state, so checkpoints of runs without an average still load
        accelerator.register_for_checkpointing(gan.ema)
    # Each rank gets its own random stream (dropout); a resume then overwrites it with the saved one.
    set_seed(cfg.run.seed + accelerator.process_index)
    if checkpoint is not None:
        check_ema(checkpoint, cfg.model.ema_decay)
        load_checkpoint(accelerator, checkpoint, loader)
        if accelerator.is_main_process:
            print(f"resumed from {checkpoint} (step {state.step}, phase {state.phase})", file=sys.stderr)
    elif resume and accelerator.is_main_process:
        print(f"--resume: no checkpoint under {cfg.run_dir / 'checkpoints'}; starting from step 0", file=sys.stderr)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        state=state,
        gan=gan,
        loader=loader,
        # A finished run resumed (e.g. a second `make demo`) has nothing to log: no empty W&B run.
        logger=build_logger(
            cfg, accelerator, wandb_mode if state.step < cfg.total_steps else "disabled", state.step, resume
        ),
        stop=stop,
        sample_batch=build_sample_batch(cfg, accelerator, has_val),
        val_loader=build_val_loader(cfg, accelerator, has_val),
    )


# --------------------------------------------------------------------------------------------------
# Pieces of the loop


def predict_samples(run: Run) -> torch.Tensor:
    """The generator's ab for the fixed val batch (eval mode; the CPU RNG, the only one it could draw
    from, is forked so the training stream is untouched)."""
    assert run.sample_batch is not None  # callers return early without one
    generator = run.accelerator.unwrap_model(run.gan.G)
    was_training = generator.training
    generator.eval()
    L, _ = run.sample_batch
    with torch.no_grad(), torch.random.fork_rng(devices=[]), run.accelerator.autocast():
        fake = generator.forward(L).float()  # eager: compile serves the training step's shapes only
    generator.train(was_training)
    return fake


def write_samples(run: Run, step: int, *, grid: bool, table: bool) -> None:
    """The fixed val batch through the generator, once (rank 0): with `grid`, the grey | prediction |
    truth picture runs/<name>/samples/step_<n>.png and W&B `samples/grid`; with `table` (at evals, W&B
    on), W&B `samples/table` with per-image ab-L1 and PSNR, also kept as runs/<name>/tables/step_<n>.*
    for `colorize-wandb sync`."""
    wb = run.logger.wandb
    table = table and wb is not None
    if run.sample_batch is None or not (grid or table):
        return
    L, ab = run.sample_batch
    fake = predict_samples(run)
    if grid:
        picture = sample_grid(L, fake, ab)
        save_png(picture, run.run_dir / "samples" / f"step_{step}.png")
        run.logger.log_image(step, "samples/grid", picture)
    if table:
        assert wb is not None
        columns = wandb_run.sample_table_rows(L, fake, ab)
        wandb_run.save_table_files(run.run_dir, step, *columns)
        wb.log(step, {"samples/table": wb.table(*columns)})


def run_eval(run: Run, step: int) -> dict[str, float]:
    """Score the val split on all ranks (a collective): eval/* beside the grey baseline, ab-L1 in CIELAB
    units and PSNR in dB, and eval/ema/* for the generator's average on the same images when it is
    kept. Only the generators run under autocast, and their eager forward (a compiled generator is
    compiled for the training step); the CPU RNG is forked, so evaluating does not shift the training
    run's random stream (a resumed run must match an uninterrupted one)."""
    if run.val_loader is None:
        return {}
    acc, ema = run.accelerator, run.gan.ema
    generator = acc.unwrap_model(run.gan.G)

    def predictor(module: torch.nn.Module):
        def predict(L: torch.Tensor) -> torch.Tensor:
            with acc.autocast():
                return module.forward(L)

        return predict

    others = {}
    if ema is not None:
        ema.synchronise(acc.num_processes)  # rank 0's BatchNorm statistics on every rank
        others["ema"] = predictor(ema.module)
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            scores = evaluate_batches(
                predictor(generator),
                run.val_loader,
                metrics=("ab_l1", "psnr"),
                max_batches=run.cfg.logging.eval_batches or None,
                reduce=(lambda t: acc.reduce(t, reduction="sum")) if acc.num_processes > 1 else None,
                device=acc.device,
                others=others,
            )["metrics"]
    finally:
        generator.train(was_training)
    values = {
        "eval/ab_l1": scores["ab_l1"]["model"],
        "eval/ab_l1_grey": scores["ab_l1"]["grey"],
        "eval/psnr": scores["psnr"]["model"],
        "eval/psnr_grey": scores["psnr"]["grey"],
    }
    average = ""
    if ema is not None:
        values |= {"eval/ema/ab_l1": scores["ab_l1"]["ema"], "eval/ema/psnr": scores["psnr"]["ema"]}
        average = f"; EMA ab-L1 {values['eval/ema/ab_l1']:.3f}, PSNR {values['eval/ema/psnr']:.2f} dB"
    run.logger.write(
        f"step {step}: eval ab-L1 {values['eval/ab_l1']:.3f} (grey {values['eval/ab_l1_grey']:.3f}), "
        f"PSNR {values['eval/psnr']:.2f} dB (grey {values['eval/psnr_grey']:.2f}){average}"
    )
    return values


def save(run: Run, step: int, phase: str) -> None:
    """Checkpoint (all ranks) and export the generator beside it (rank 0): the generator's average when
    it is kept (the metadata's `weights` says "ema", with its decay and updates), else the generator."""
    save_checkpoint(run.accelerator, run.checkpoint_root, step, run.loader, run.cfg.checkpoint.keep_last)
    if run.accelerator.is_main_process:
        ema = run.gan.ema
        meta: dict = {"step": step, "phase": phase, "weights": "raw"}
        generator = run.accelerator.unwrap_model(run.gan.G)
        if ema is not None:
            generator = ema.module
            meta |= {"weights": "ema", "ema": {"decay": ema.decay, "updates": ema.updates}}
        weights = save_generator(run.run_dir / "generator.safetensors", generator, run.cfg.model, meta)
        log_model_artifact(run, weights, step, phase)


def log_model_artifact(run: Run, weights: Path, step: int, phase: str) -> None:
    """The export as a W&B `model` artifact: aliases latest, nogan-final, final, best (rank 0, W&B on)."""
    wb = run.logger.wandb
    if wb is None:
        return
    assert wb.ledger is not None  # build_logger sets it with the run
    eval_values = wb.last_eval[1] if wb.last_eval and wb.last_eval[0] == step else {}
    nogan_final = is_phase_switch(step, run.cfg.schedule) and phase_at(step - 1, run.cfg.schedule) == NOGAN
    aliases = wb.ledger.aliases(eval_values, nogan_final=nogan_final, final=step == run.cfg.total_steps)
    wb.ledger.record(weights, step, phase, aliases, eval_values)
    wb.log_model(weights, step, phase, aliases, eval_values)


# --------------------------------------------------------------------------------------------------
# The loop


def train_loop(run: Run) -> int:
    """Run the schedule from `run.state.step` to the end; returns the exit status (see module doc).

    `state.step` is the one step counter: the number of optimiser steps done. Before a step it is
    also the 0-based index of the step about to run; every log line, picture and checkpoint after it
    is keyed by its new value.
    """
    cfg, state, gan, acc = run.cfg, run.state, run.gan, run.accelerator
    total, every = cfg.total_steps, cfg.logging
    timer = StepTimer(images_per_step=cfg.data.batch_size, device=acc.device)
    monitor = LossMonitor(acc.device, acc.num_processes)
    batches = iter(run.loader)
    while state.step < total:
        phase = phase_at(state.step, cfg.schedule)

        # 1. Next batch; the time the device waits here is the data wait.
        timer.start_step()
        L, ab = next(batches)
        timer.data_ready()

        # 2. One optimiser step of the phase: G alone, D alone, or D then G. Losses stay on the device.
        lrs = gan.set_learning_rates(state.step)
        update = gan.nogan_step if phase == NOGAN else gan.critic_step if phase == CRITIC else gan.gan_step
        terms = update(L, ab)
        first_of_phase = is_phase_start(state.step, cfg.schedule)
        state.step, state.phase = state.step + 1, phase
        monitor.update(state.step, terms)
        timer.end_step()

        # 3. Only some steps read numbers back. Every rank decides alike (a stop request alone can
        #    end a one-process run at any step; several processes agree on it at the next sync point).
        step = state.step
        # Each phase's first step is logged too: its curves start where the phase does (the critic's
        # accuracy before it has learned anything).
        log_due = step % every.every_steps == 0 or step == total or first_of_phase
        sample_due = step % every.sample_every_steps == 0 or step == total
        eval_due = step % every.eval_every_steps == 0 or step == total
        save_due = step % cfg.checkpoint.every_steps == 0 or is_phase_switch(step, cfg.schedule) or step == total
        if not (log_due or sample_due or eval_due or save_due or (run.stop.requested and acc.num_processes == 1)):
            run.logger.progress(step, phase)
            continue

        # 4. THE CPU–GPU sync point: reduce the losses over ranks and read them; a non-finite loss
        #    since the last sync point raises here, before anything below saves.
        timer.sync(phase)
        values, stop = monitor.read(run.stop.requested)
        if stop:  # the stop's checkpoint is saved before anything reaches W&B (which may be gone)
            run.logger.hold_wandb()

        # 5. Validation metrics and pictures of the fixed val batch.
        record: dict[str, float] = {}
        if eval_due:
            record.update(run_eval(run, step))
        write_samples(run, step, grid=sample_due, table=eval_due)

        # 6. Scalars (one metrics.jsonl line per logged step) and progress, rank 0.
        if log_due:
            record.update(values, **lrs, **timer.window())
            record["perf/eta_hours"] = timer.eta_hours(step, cfg.schedule)
        if record:
            run.logger.log(step, phase, record)
        run.logger.progress(step, phase, {**values, **record})

        # 7. Checkpoints: on schedule, at each phase switch, at the end, and when asked to stop.
        if save_due or stop:
            save(run, step, phase)
        run.logger.release_wandb()
        if is_phase_switch(step, cfg.schedule):
            following = TITLES[phase_at(step, cfg.schedule)]
            run.logger.write(f"step {step}: {TITLES[phase]} phase done, checkpoint saved; {following} phase starts")
        if stop:
            signal_name = run.stop.signal_name or "SIGTERM"  # a rank that got no signal follows the others
            run.logger.write(f"step {step}: stopped by {signal_name}; checkpoint saved, resume with --resume")
            return 128 + int(signal.Signals[signal_name])
    return 0


def closing_lines(run: Run) -> list[str]:
    """What a finished run says last: where the generator is and what to run next."""
    weights = run.run_dir / "generator.safetensors"
    return [
        f"done: {run.state.step} steps; generator exported to {weights}",
        f"next: colorize PHOTOS --weights {weights}   (or the web page: colorize-ui --weights {weights})",
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    try:
        args = parse_args(argv)
        cfg = load_config(args.config, args.overrides)
        run = build_run(cfg, args.resume, args.overwrite)
    except (ConfigError, ShardsDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the stop handler is installed: nothing has been trained yet
        print("interrupted while starting; nothing was trained", file=sys.stderr)
        return 130
    try:
        status = train_loop(run)
    except (TrainingError, BadShardError) as exc:
        # The last good checkpoint stays as it is: nothing is saved on this exit.
        print(f"error: {exc}", file=sys.stderr)
        run.logger.alert(
            f"{run.cfg.run.name} stopped", f"{exc} (the last good checkpoint is kept; resume with --resume)"
        )
        status = 1
    finally:
        run.stop.restore()
        run.logger.close(preempted=run.stop.requested)
        run.accelerator.end_training()
    if status == 0 and run.accelerator.is_main_process:
        print("\n".join(closing_lines(run)), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
