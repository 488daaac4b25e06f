"""The CUDA training path: NCCL DDP, SyncBatchNorm, compiled networks, and a real bf16 run.

All marked `gpu`: they skip where CUDA is absent and run in `make test-gpu` / `make gpu-check`.
"""

from __future__ import annotations

import json

import pytest
import torch

from configs import load_config

from _train_helpers import build_tiny_shards, run_train, subprocess_env, tiny_config

pytestmark = pytest.mark.gpu


def _tiny_cuda_config(*extra: str):
    return load_config(
        None,
        [
            "run.device=cuda",
            "model.features=8",
            "model.disc_features=16",
            "loss.vgg_weights=none",
            "data.batch_size=2",
            *extra,
        ],
    )


def _context(cfg):
    from launch.train import build_accelerator
    from launch.training.gan import build_gan

    accelerator = build_accelerator(cfg)
    return accelerator, build_gan(cfg, accelerator)


@pytest.fixture
def nccl_group(tmp_path):
    """A one-process NCCL group (a file store: no port to find)."""
    import torch.distributed as dist

    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, device_id=torch.device("cuda", 0)
    )
    yield dist
    dist.destroy_process_group()


def test_ddp_over_nccl_with_syncbatchnorm_trains_the_generator(nccl_group):
    from torch.nn.parallel import DistributedDataParallel

    from launch.bench.step import synthetic_batch
    from models import build_generator

    cfg = _tiny_cuda_config()
    G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_generator(cfg.model)).cuda()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in G.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in G.modules())
    ddp = DistributedDataParallel(G, device_ids=[0])
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3, fused=True)
    L, ab = synthetic_batch(2, 256, torch.device("cuda"))
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (ddp(L).float() - ab).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_compiled_networks_train_both_phases_without_recompiling():
    """Compiled G and D: one graph per network and input shape during warm-up, none after, and none at
    the NoGAN → GAN switch or for an evaluation's eager forward."""
    from launch.bench.step import compiled_frames, synthetic_batch

    accelerator, gan = _context(_tiny_cuda_config("model.compile=true"))
    L, ab = synthetic_batch(2, 256, accelerator.device)
    L, ab = L.contiguous(memory_format=torch.channels_last), ab.contiguous(memory_format=torch.channels_last)
    for step in (gan.nogan_step, gan.gan_step, gan.nogan_step, gan.gan_step):
        terms = step(L, ab)
    warm = compiled_frames()
    G = accelerator.unwrap_model(gan.G)
    G.eval()
    with torch.no_grad():
        G.forward(L)
    G.train()
    for step in (gan.nogan_step, gan.gan_step):
        terms = step(L, ab)
    assert all(torch.isfinite(v).item() for v in terms.values()), terms
    assert compiled_frames() == warm


def test_real_bf16_training_run_on_cuda_learns(tmp_path):
    """`launch/train.py` on CUDA with the DALI GPU path: bf16, ten NoGAN steps then GAN steps; every
    logged loss finite, the NoGAN L1 falling."""
    shards = build_tiny_shards(tmp_path)
    config = tiny_config(
        tmp_path / "tiny.yaml",
        shards,
        tmp_path / "runs",
        run={"name": "tiny", "out_dir": str(tmp_path / "runs"), "seed": 0, "device": "cuda"},
        data={"batch_size": 4, "crop": "resize", "flip": False},
        optim={"nogan": {"lr": 2e-3}},
        schedule={"nogan_steps": 10, "gan_steps": 4},
    )
    env = subprocess_env()
    env.pop("CUDA_VISIBLE_DEVICES")
    proc = run_train(["--config", str(config)], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/l1" in r]
    assert len(train) == 14
    assert all(torch.isfinite(torch.tensor(v)) for r in train for k, v in r.items() if k.startswith("train/"))
    l1 = [r["train/l1"] for r in train if r["phase"] == "nogan"]
    assert sum(l1[-3:]) < sum(l1[:3]), l1
    assert all(0 <= r["data/wait_fraction"] <= 1 for r in train)
