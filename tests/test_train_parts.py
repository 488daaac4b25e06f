"""Unit tests of the training loop's parts: schedule, checkpoints on disk, metrics file, W&B mode,
sample grid, timing, signals, the batch-split check, the demo report."""

from __future__ import annotations

import json
import os
import pickle
import signal

import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from launch.training.checkpoint import latest_checkpoint, list_checkpoints
from launch.training.samples import sample_grid, save_png
from launch.training.schedule import (
    CRITIC,
    GAN,
    NOGAN,
    is_phase_start,
    is_phase_switch,
    learning_rate,
    phase_at,
    steps_left,
)
from launch.training.signals import StopRequest
from launch.training.timing import StepTimer
from launch.training.tracking import MetricsFile, read_metrics, resolve_wandb_mode


def test_phases_and_switch():
    cfg = load_config(None, ["schedule.nogan_steps=3", "schedule.gan_steps=2"])
    assert [phase_at(s, cfg.schedule) for s in range(5)] == [NOGAN] * 3 + [GAN] * 2
    assert [d for d in range(6) if is_phase_switch(d, cfg.schedule)] == [3]
    no_gan = load_config(None, ["schedule.nogan_steps=3", "schedule.gan_steps=0"])
    assert not any(is_phase_switch(d, no_gan.schedule) for d in range(5))
    critic = load_config(None, ["schedule.nogan_steps=3", "schedule.critic_steps=2", "schedule.gan_steps=2"])
    assert critic.total_steps == 7
    assert [phase_at(s, critic.schedule) for s in range(7)] == [NOGAN] * 3 + [CRITIC] * 2 + [GAN] * 2
    assert [d for d in range(8) if is_phase_switch(d, critic.schedule)] == [3, 5]
    assert [s for s in range(7) if is_phase_start(s, critic.schedule)] == [0, 3, 5]
    assert [steps_left(p, 4, critic.schedule) for p in (NOGAN, CRITIC, GAN)] == [0, 1, 2]
    only_critic_then_gan = load_config(
        None, ["schedule.nogan_steps=0", "schedule.critic_steps=2", "schedule.gan_steps=1"]
    )
    assert [phase_at(s, only_critic_then_gan.schedule) for s in range(3)] == [CRITIC, CRITIC, GAN]
    with pytest.raises(ConfigError, match="schedule.critic_steps = 5 warms the critic up for a GAN phase"):
        load_config(None, ["schedule.critic_steps=5", "schedule.gan_steps=0"])
    # One step of each phase still switches once; a run without NoGAN never does.
    one_each = load_config(None, ["schedule.nogan_steps=1", "schedule.gan_steps=1"])
    assert [d for d in range(3) if is_phase_switch(d, one_each.schedule)] == [1]
    gan_only = load_config(None, ["schedule.nogan_steps=0", "schedule.gan_steps=2"])
    assert not any(is_phase_switch(d, gan_only.schedule) for d in range(3))


def test_warmup_restarts_each_phase():
    cfg = load_config(None, ["schedule.nogan_steps=10", "schedule.gan_steps=10", "optim.warmup_steps=4"])
    nogan = [learning_rate(s, cfg.optim.nogan, cfg) for s in range(6)]
    assert nogan == pytest.approx([0.25e-4, 0.5e-4, 0.75e-4, 1e-4, 1e-4, 1e-4])
    gan = [learning_rate(s, cfg.optim.generator, cfg) for s in range(10, 15)]
    assert gan == pytest.approx([0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4])
    flat = load_config(None)
    assert learning_rate(0, flat.optim.nogan, flat) == flat.optim.nogan.lr


def test_latest_checkpoint_ignores_partial_ones(tmp_path):
    for name in ("step_2", "step_10", "step_9", "step_12.tmp", "notes"):
        (tmp_path / name).mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 9, 10]  # numeric, not text, order
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10"
    assert latest_checkpoint(tmp_path / "absent") is None


def test_metrics_file_drops_steps_after_resume_point(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        metrics.append({"step": step, "phase": "nogan", "train/l1": 0.1 * step})
    metrics.truncate_after(3)
    assert [r["step"] for r in read_metrics(metrics.path)] == [1, 2, 3]


def test_wandb_mode_auto_follows_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    os.chmod(tmp_path / "netrc", 0o600)
    assert resolve_wandb_mode("auto") == "online"
    (tmp_path / "netrc").write_text("machine example.com login a password b\n")
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"


def test_sample_grid_rows_are_grey_prediction_truth(tmp_path):
    n, s = 2, 16
    L = torch.zeros(n, 1, s, s)  # L* = 50
    real = torch.zeros(n, 2, s, s)
    real[:, 0] = 0.5  # a* = +64: red
    fake = torch.zeros(n, 2, s, s)
    fake[:, 1] = -0.5  # b* = -64: blue
    grid = sample_grid(L, fake, real, padding=2)
    assert grid.shape == (2 + n * (s + 2), 2 + 3 * (s + 2), 3) and grid.dtype == np.uint8

    def tile(row, col):
        return grid[2 + row * (s + 2) + s // 2, 2 + col * (s + 2) + s // 2].astype(int)

    grey, pred, truth = tile(0, 0), tile(0, 1), tile(0, 2)
    assert abs(grey[0] - grey[1]) <= 1 and abs(grey[1] - grey[2]) <= 1
    assert pred[2] > pred[0] + 40  # blue prediction
    assert truth[0] > truth[2] + 40  # red truth
    out = save_png(grid, tmp_path / "samples" / "step_1.png")
    assert out.is_file() and not list(out.parent.glob(".*tmp"))


def test_step_timer_window_and_eta():
    timer = StepTimer(images_per_step=4, device=torch.device("cpu"))
    cfg = load_config(None, ["schedule.nogan_steps=10", "schedule.gan_steps=10"])
    timer._phase_time[NOGAN], timer._phase_steps[NOGAN] = 2.0, 4  # 0.5 s/step measured
    assert timer.eta_hours(4, cfg.schedule) == pytest.approx((6 * 0.5 + 10 * 0.5) / 3600)
    timer._phase_time[GAN], timer._phase_steps[GAN] = 1.0, 1  # GAN measured at 1 s/step
    assert timer.eta_hours(12, cfg.schedule) == pytest.approx(8 * 1.0 / 3600)
    # A critic warm-up not yet timed counts at the mean of the timed phases' rates.
    critic = load_config(None, ["schedule.nogan_steps=10", "schedule.critic_steps=4", "schedule.gan_steps=10"])
    assert timer.eta_hours(8, critic.schedule) == pytest.approx((2 * 0.5 + 4 * 0.75 + 10 * 1.0) / 3600)
    timer.start_step()
    timer.data_ready()
    timer.end_step()
    timer.sync(NOGAN)
    window = timer.window()
    assert 0 <= window["data/wait_fraction"] <= 1 and window["perf/step_ms"] >= 0
    assert timer.window()["perf/images_per_s"] == 0.0  # the window was reset


def test_step_timer_books_windows_between_sync_points_only(monkeypatch):
    """Steps between two sync points share the window's wall time; what happens at a sync point
    (evaluation, saving) is outside every window; the data wait is the time spent in the loader."""
    import launch.training.timing as timing

    clock = iter([0.0, 1.0, 3.0, 3.5, 5.0, 100.0, 100.0, 102.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    timer = StepTimer(images_per_step=4, device=torch.device("cpu"))
    for _ in range(2):  # two steps: loader waits 1.0 and 0.5 s of 5 s in all
        timer.start_step()
        timer.data_ready()
        timer.end_step()
    timer.sync(NOGAN)  # t = 5.0; an evaluation then runs until t = 100
    window = timer.window()
    assert window["perf/step_ms"] == pytest.approx(2500.0)
    assert window["data/wait_fraction"] == pytest.approx(1.5 / 5.0)
    assert window["perf/images_per_s"] == pytest.approx(8 / 5.0)
    timer.start_step()  # t = 100: the next window starts here, not at the sync point
    timer.data_ready()
    timer.end_step()
    timer.sync(NOGAN)
    assert timer.window()["perf/step_ms"] == pytest.approx(2000.0)
    assert timer.seconds_per_step(NOGAN) == pytest.approx(7.0 / 3)


def test_loss_monitor_reads_back_only_at_sync_points_and_names_the_first_bad_step(monkeypatch):
    from launch.training.errors import TrainingError
    from launch.training.monitor import LossMonitor

    monitor = LossMonitor(torch.device("cpu"), world_size=1)
    values = iter([1.0, 2.0, float("inf"), 3.0])

    def forbidden(*args, **kwargs):
        raise AssertionError("host read-back outside a sync point")

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "tolist", forbidden)
        patch.setattr(torch.Tensor, "item", forbidden)
        for step in (1, 2):
            monitor.update(step, {"train/l1": torch.tensor(next(values)), "train/g_total": torch.tensor(0.5)})
    read, stop = monitor.read(stop_requested=True)
    assert read == {"train/l1": 2.0, "train/g_total": 0.5} and stop
    for step in (3, 4):  # inf at step 3, finite again at 4: the next read still names step 3
        monitor.update(step, {"train/l1": torch.tensor(next(values)), "train/g_total": torch.tensor(0.5)})
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3: train/l1 = inf"):
        monitor.read(stop_requested=False)


def test_stop_request_is_set_by_sigterm_and_restored():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("precision", ("no", "bf16"))
def test_each_test_gets_a_fresh_accelerator_state(precision):
    """Run in order, the second case would fail if the first one's Accelerator leaked into it."""
    from accelerate import Accelerator

    assert Accelerator(cpu=True, mixed_precision=precision).mixed_precision == precision


def test_batch_must_split_over_processes():
    from configs import scale_to_processes

    cfg = load_config(None, ["data.batch_size=6"])
    assert scale_to_processes(cfg, 3) == (cfg, [])  # a global batch and no reference: nothing changes
    with pytest.raises(ConfigError, match=r"data.batch_size = 6 does not divide by the number of processes \(4\)"):
        scale_to_processes(cfg, 4)


def test_per_process_batch_scales_learning_rates_and_steps_by_the_stated_rule(tmp_path):
    """`per_process`: global batch = batch × processes; with a reference batch, lr × √(G/ref) and
    steps × ref/G (rounded up), so the samples seen stay the same; the resolved config reloads as is."""
    from configs import dump_config, scale_to_processes

    cfg = load_config(
        None,
        [
            "data.batch_size=64",
            "data.batch_size_unit=per_process",
            "optim.reference_batch=64",
            "optim.nogan.lr=4e-4",
            "optim.generator.lr=8e-4",
            "optim.discriminator.lr=8e-4",
            "optim.warmup_steps=1000",
            "schedule.nogan_steps=50000",
            "schedule.critic_steps=10000",
            "schedule.gan_steps=75000",
            "model.ema_decay=0.999",
        ],
    )
    one, notes = scale_to_processes(cfg, 1)
    assert (one.schedule.critic_steps, one.model.ema_decay) == (10000, 0.999)
    assert (one.data.batch_size, one.optim.nogan.lr, one.schedule.nogan_steps) == (64, 4e-4, 50000)
    eight, notes = scale_to_processes(cfg, 8)
    assert eight.data.batch_size == 512 and eight.data.batch_size_unit == "global"
    assert eight.data.per_process_batch(8) == 64
    assert eight.optim.nogan.lr == pytest.approx(4e-4 * 8**0.5)
    assert eight.optim.discriminator.lr == pytest.approx(8e-4 * 8**0.5)
    assert (eight.schedule.nogan_steps, eight.schedule.gan_steps, eight.optim.warmup_steps) == (6250, 9375, 125)
    # The critic warm-up sees as many images, and the generator's average spans as many.
    assert eight.schedule.critic_steps == 1250 and eight.model.ema_decay == pytest.approx(0.999**8)
    assert any("model.ema_decay ^ (512/64) = 0.992028" in n for n in notes)
    assert any("global batch 512 = data.batch_size 64 per process × 8 processes" in n for n in notes)
    assert any("learning rates × √(512/64)" in n for n in notes)
    dump_config(eight, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == eight


def test_demo_report_checks_both_criteria(tmp_path, capsys):
    from launch.demo_report import main

    rows = [{"step": s, "phase": "nogan", "train/l1": 1.0 if s <= 10 else 0.5} for s in range(1, 101)]
    rows.append(
        {
            "step": 100,
            "phase": "nogan",
            "eval/ab_l1": 9.0,
            "eval/ab_l1_grey": 12.0,
            "eval/psnr": 25.0,
            "eval/psnr_grey": 24.0,
        }
    )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "first tenth 1.0000 → last tenth 0.5000" in out and "9.000 vs grey baseline 12.000" in out
    rows[-1]["eval/ab_l1"] = 13.0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 1
    assert main([str(tmp_path / "missing")]) == 2

    # With an EMA generator both need to beat grey, shown side by side; the critic's accuracy is shown.
    rows[-1] |= {"eval/ab_l1": 9.0, "eval/ema/ab_l1": 8.5, "eval/ema/psnr": 25.5}
    rows += [
        {"step": 101, "phase": "critic", "train/d_acc_fake": 0.48, "train/d_acc_real": 0.5},
        {"step": 110, "phase": "critic", "train/d_acc_fake": 0.91, "train/d_acc_real": 0.87},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "generator 9.000, EMA generator 8.500 vs grey baseline 12.000" in out
    assert "D's accuracy on G's colours 0.48 (step 101) → 0.91 (step 110)" in out
    rows[-3]["eval/ema/ab_l1"] = 12.5
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 1


@pytest.mark.gpu
def test_one_bf16_cuda_step_of_each_phase_is_finite():
    """The CUDA path: bf16 autocast, channels_last, fused Adam, both phases; losses finite."""
    from launch.bench.step import synthetic_batch
    from launch.train import build_accelerator
    from launch.training.gan import build_gan

    cfg = load_config(
        None,
        ["run.device=cuda", "model.features=8", "model.disc_features=16", "loss.vgg_weights=none", "data.batch_size=2"],
    )
    accelerator = build_accelerator(cfg)
    assert accelerator.mixed_precision == "bf16"
    gan = build_gan(cfg, accelerator)
    assert all(o.defaults["fused"] for o in (gan.opt_nogan, gan.opt_G, gan.opt_D))
    L, ab = synthetic_batch(2, 256, accelerator.device)
    L, ab = L.contiguous(memory_format=torch.channels_last), ab.contiguous(memory_format=torch.channels_last)
    for step in (gan.nogan_step, gan.gan_step):
        terms = step(L, ab)
        assert all(torch.isfinite(v).item() for v in terms.values()), terms


class _FakeAccelerator:
    """What the build functions read from an Accelerator, recording `main_process_first` use."""

    def __init__(self, events: list[str]) -> None:
        self.events, self.device, self.is_main_process, self.num_processes = events, torch.device("cpu"), True, 1

    def main_process_first(self):
        import contextlib

        @contextlib.contextmanager
        def ordered():
            self.events.append("main first: enter")
            yield
            self.events.append("main first: exit")

        return ordered()


def test_vgg_weights_are_fetched_by_the_main_process_first(monkeypatch):
    import launch.training.gan as train

    events: list[str] = []
    monkeypatch.setattr(train, "build_feature_loss", lambda cfg: events.append("build VGG") or torch.nn.Identity())
    cfg = load_config(None, ["loss.vgg_weights=none"])
    assert train.build_feature_loss_if_used(cfg, _FakeAccelerator(events)) is not None
    assert events == ["main first: enter", "build VGG", "main first: exit"]


@pytest.mark.parametrize(
    "weights, built",
    [
        (["loss.feature_weight_gan=0.5"], True),
        (["loss.feature_weight_gan=0.5", "schedule.gan_steps=1"], True),
        (["loss.feature_weight_gan=0.5", "schedule.gan_steps=0"], False),
        (["loss.feature_weight_gan=0"], False),
        (["loss.feature_weight_nogan=0.5", "schedule.nogan_steps=1"], True),
        (["loss.feature_weight_nogan=0.5", "schedule.nogan_steps=0"], False),
    ],
)
def test_the_vgg_is_built_exactly_when_a_phase_that_runs_weighs_its_features(weights, built):
    from launch.training.gan import build_feature_loss_if_used

    cfg = load_config(None, ["loss.vgg_weights=none", "loss.feature_weight_nogan=0", *weights])
    assert (build_feature_loss_if_used(cfg, _FakeAccelerator([])) is not None) == built


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cuda_settings_apply_only_on_cuda_and_sync_batchnorm_only_across_processes(device):
    """channels_last (G, D, the average, the VGG) and fused Adam on CUDA only; SyncBatchNorm only syncs
    across processes, so one process keeps plain BatchNorm."""
    from launch.train import build_accelerator
    from launch.training.gan import build_gan

    settings = ["model.channels_last=true", "model.sync_batchnorm=true", "model.ema_decay=0.5"]
    cfg = load_config(
        None,
        [f"run.device={device}", "model.features=8", "model.disc_features=8", "loss.vgg_weights=none", *settings],
    )
    accelerator = build_accelerator(cfg)
    assert accelerator.num_processes == 1 and cfg.loss.feature_weight_nogan > 0
    gan = build_gan(cfg, accelerator)
    on_cuda = device == "cuda"
    layout = torch.channels_last if on_cuda else torch.contiguous_format
    for network in (gan.G_module, gan.D_module, gan.ema.module, gan.feature_loss):
        weights = [p for p in network.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1]
        assert weights and all(p.is_contiguous(memory_format=layout) for p in weights), type(network)
    assert all(plain_batchnorm(network) for network in (gan.G_module, gan.D_module))
    assert [bool(o.defaults["fused"]) for o in (gan.opt_nogan, gan.opt_G, gan.opt_D)] == [on_cuda] * 3


def plain_batchnorm(network: torch.nn.Module) -> bool:
    """`network` has BatchNorm layers, all plain BatchNorm2d (none converted to SyncBatchNorm)."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return bool(norms) and all(type(m) is torch.nn.BatchNorm2d for m in norms)


def test_a_cpu_run_of_two_processes_keeps_plain_batchnorm_with_sync_batchnorm_on():
    """SyncBatchNorm is CUDA-only (DDP refuses it on the CPU); tests/test_train_distributed.py runs
    two CPU processes for real, this is the quick check of what `build_models` gives them."""
    from launch.training.gan import build_models

    accelerator = _FakeAccelerator([])
    accelerator.num_processes = 2
    cfg = load_config(None, ["model.features=8", "model.disc_features=8", "model.sync_batchnorm=true"])
    assert all(plain_batchnorm(network) for network in build_models(cfg, accelerator))


def test_sample_grid_decodes_one_batch_of_exactly_its_images(monkeypatch):
    import launch.train as train

    asked = []

    def fake_loader(data_cfg, rank, world_size, device, **kwargs):
        asked.append((data_cfg.per_process_batch(world_size), kwargs["split"], kwargs["endless"]))
        return iter([(torch.zeros(data_cfg.batch_size, 1, 4, 4), torch.zeros(data_cfg.batch_size, 2, 4, 4))])

    monkeypatch.setattr(train, "make_loader", fake_loader)
    cfg = load_config(None, ["data.batch_size=64", "logging.sample_count=3"])
    L, ab = train.build_sample_batch(cfg, _FakeAccelerator([]), has_val=True)
    assert asked == [(3, "val", False)] and L.shape[0] == ab.shape[0] == 3


def test_a_checkpoint_resumes_only_with_the_number_of_processes_that_wrote_it(tmp_path):
    from launch.training.checkpoint import check_processes
    from launch.training.errors import TrainingError

    for rank in (0, 1):
        (tmp_path / f"loader_rank{rank}.pt").write_bytes(b"")
    check_processes(tmp_path, 2)
    with pytest.raises(TrainingError, match=r"written by a run of 2 processes, this run has 4: resume with 2"):
        check_processes(tmp_path, 4)


def test_a_checkpoint_resumes_with_an_ema_generator_exactly_when_it_holds_one(tmp_path):
    from launch.training.checkpoint import EMA_FILE, check_ema
    from launch.training.errors import TrainingError

    without, holding = tmp_path / "without", tmp_path / "with"
    without.mkdir()
    holding.mkdir()
    (holding / EMA_FILE).write_bytes(b"")
    check_ema(without, 0.0)
    check_ema(holding, 0.999)
    with pytest.raises(
        TrainingError,
        match=r"without an EMA generator and this run has model.ema_decay = 0.999: resume with model.ema_decay = 0$",
    ):
        check_ema(without, 0.999)
    with pytest.raises(
        TrainingError,
        match=r"with an EMA generator and this run has model.ema_decay = 0.0: resume with model.ema_decay > 0$",
    ):
        check_ema(holding, 0.0)


class _LoaderPosition:
    """What a checkpoint needs of a data loader: its position as a state dict, refused (ValueError)
    when it was saved by a loader of another backend."""

    def __init__(self, batches: int, backend: str = "test") -> None:
        self.batches, self.backend = batches, backend

    def state_dict(self) -> dict:
        return {"backend": self.backend, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        if state["backend"] != self.backend:
            raise ValueError(f"loader state is for backend {state['backend']!r}, not {self.backend!r}")
        self.batches = state["batches"]


class _Payload:
    """Unpickling this runs code: it creates the file named in `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_restores_weights_optimiser_progress_and_loader_position(tmp_path):
    from accelerate import Accelerator

    from launch.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint
    from launch.training.errors import TrainingError

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(4, 2))
    optimizer = accelerator.prepare(torch.optim.Adam(model.parameters(), lr=0.1))
    state, loader = TrainingState(), _LoaderPosition(0)
    assert (state.step, state.phase) == (0, NOGAN)  # a fresh run starts at the first NoGAN step
    accelerator.register_for_checkpointing(state)

    def train_to(step: int) -> None:
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
        state.step, state.phase, loader.batches = step, GAN if step > 3 else NOGAN, 10 * step

    root = tmp_path / "checkpoints"  # not there yet: the first save makes it
    train_to(3)
    save_checkpoint(accelerator, root, 3, loader, keep_last=2)
    (root / "step_7.tmp").mkdir()  # left by a run killed while saving step 7
    (root / "step_7.tmp" / "half-written").write_bytes(b"")
    for step in (5, 7):
        train_to(step)
        saved = save_checkpoint(accelerator, root, step, loader, keep_last=2)
    assert saved == root / "step_7" and not (saved / "half-written").exists()
    assert sorted(p.name for p in root.iterdir()) == ["step_5", "step_7"]  # the last two
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    train_to(8)  # everything moves on, then the checkpoint takes it back
    state.phase, loader.batches = NOGAN, 0
    load_checkpoint(accelerator, saved, loader)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], moments)
    assert (state.step, state.phase, loader.batches) == (7, GAN, 70)

    # A resumed run that saves step 7 again replaces it.
    train_to(7)
    loader.batches = 71
    save_checkpoint(accelerator, root, 7, loader, keep_last=2)
    load_checkpoint(accelerator, saved, loader)
    assert loader.batches == 71 and not torch.equal(model.state_dict()["weight"], weights["weight"])

    # A loader of another backend cannot take the position: one error naming the checkpoint.
    with pytest.raises(TrainingError, match=f"{saved}: loader state is for backend 'test', not 'dali'"):
        load_checkpoint(accelerator, saved, _LoaderPosition(0, backend="dali"))
    # The loader position is read as weights only: a file that would run code when unpickled is refused.
    marker = tmp_path / "ran"
    torch.save({"backend": "test", "batches": _Payload(str(marker))}, saved / "loader_rank0.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(accelerator, saved, loader)
    assert not marker.exists()


def test_eval_runs_only_the_generator_under_autocast():
    """With bf16 autocast (here the CPU's), the generator runs in bf16 but the colour maths and the
    metrics stay in float32: the figures equal a float32 scoring of the generator's output, and
    differ from scoring everything under autocast. The generator's average is scored the same way,
    on the same images (eval/ema/*)."""
    import types

    from accelerate import Accelerator

    import launch.train as train
    from configs import ModelConfig
    from launch.bench.step import synthetic_batch
    from launch.eval.evaluate import evaluate_batches
    from launch.training.ema import GeneratorEMA
    from models import build_generator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    torch.manual_seed(0)
    generator = build_generator(ModelConfig(features=8))
    ema = GeneratorEMA(generator, build_generator(ModelConfig(features=8)), decay=0.5)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ema.update()  # an average that differs from the generator
    batches = [synthetic_batch(2, 256, torch.device("cpu"), seed=s) for s in range(2)]
    run = types.SimpleNamespace(
        val_loader=batches,
        accelerator=accelerator,
        gan=types.SimpleNamespace(G=generator, ema=ema),
        cfg=types.SimpleNamespace(logging=types.SimpleNamespace(eval_batches=0)),
        logger=types.SimpleNamespace(write=lambda message: None),
    )
    got = train.run_eval(run, step=1)
    assert generator.training  # its mode is restored

    def bf16_generator(L):
        with accelerator.autocast():
            return generator.forward(L)

    generator.eval()
    with torch.no_grad():
        fp32_metrics = evaluate_batches(bf16_generator, batches, metrics=("ab_l1", "psnr"))["metrics"]
        with accelerator.autocast():
            all_bf16 = evaluate_batches(generator.forward, batches, metrics=("ab_l1", "psnr"))["metrics"]
    assert got["eval/psnr"] == fp32_metrics["psnr"]["model"] and got["eval/ab_l1"] == fp32_metrics["ab_l1"]["model"]
    assert got["eval/psnr"] != all_bf16["psnr"]["model"]

    def bf16_average(L):
        with accelerator.autocast():
            return ema.module.forward(L)

    with torch.no_grad():
        average = evaluate_batches(bf16_average, batches, metrics=("ab_l1", "psnr"))["metrics"]
    assert (got["eval/ema/ab_l1"], got["eval/ema/psnr"]) == (average["ab_l1"]["model"], average["psnr"]["model"])
    assert got["eval/ema/ab_l1"] != got["eval/ab_l1"] and got["eval/ab_l1_grey"] == average["ab_l1"]["grey"]


def test_cudnn_autotunes_unless_determinism_is_asked(monkeypatch):
    import launch.train as train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train, "Accelerator", lambda **kwargs: kwargs)  # no CUDA here to start
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    assert train.build_accelerator(load_config(None, ["run.device=cuda"]))["mixed_precision"] == "bf16"
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    train.build_accelerator(load_config(None, ["run.device=cuda", "run.deterministic=true"]))
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
