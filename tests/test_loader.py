"""The data pipeline: Lab parity across backends, rank split, resume, bad data, endless vs one pass."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

from configs import ConfigError, DataConfig
from pipeline import make_loader
from pipeline.baseline_loader import SeedDataset
from pipeline.dali_loader import DaliLoader
from pipeline.lab import rgb_to_network
from pipeline.lab_uint8 import lab_step, uint8_planar_to_network_fast
from pipeline.loader_base import BadShardError
from pipeline.shard_list import ShardsDirError, split_shards

from _loader_helpers import all_keys, jpeg_bytes, keys_of, sample_keys, write_test_shards

CPU = torch.device("cpu")
BACKENDS = ("dali", "torch", "baseline")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, colour_photos):
    """3 train shards of 16 samples, 1 val shard of 12."""
    out = tmp_path_factory.mktemp("shards")
    return out, write_test_shards(out, colour_photos)


def cfg_for(root: Path, **kw) -> DataConfig:
    # The compiled Lab step has its own test; eager keeps the others free of compile time.
    base = dict(shards=str(root), batch_size=8, shuffle_buffer=16, num_threads=2, compile_lab=False)
    base.update(kw)
    return DataConfig(**base)


# ------------------------------------------------------------------------------------------ Lab parity
def test_uint8_lab_step_matches_reference_and_skimage(colour_photos):
    rgb = torch.from_numpy(np.stack([colour_photos[n][:256, :256] for n in ("astronaut", "coffee", "chelsea")]))
    planar = rgb.permute(0, 3, 1, 2).contiguous()
    ref_l, ref_ab = rgb_to_network(planar.double() / 255)
    eager_l, eager_ab = lab_step(compile=False)(planar)  # the reference, from uint8
    assert (eager_l - ref_l).abs().max() < 1e-5 and (eager_ab - ref_ab).abs().max() < 1e-5
    lightness, ab = uint8_planar_to_network_fast(planar)  # the kernel torch.compile fuses, run eagerly
    assert (lightness - ref_l).abs().max() < 1e-4 and (ab - ref_ab).abs().max() < 1e-4
    sk = torch.from_numpy(rgb2lab(rgb[0].numpy())).permute(2, 0, 1)
    assert (lightness[0, 0].double() - (sk[0] / 50 - 1)).abs().max() < 1e-4


@pytest.mark.slow
def test_fast_lab_step_matches_reference_on_every_uint8_colour():
    code = torch.arange(2**24, dtype=torch.int32)  # every (r, g, b), as a 1×3×4096×4096 image
    rgb = torch.stack([code >> 16, (code >> 8) & 255, code & 255]).to(torch.uint8).reshape(1, 3, 4096, 4096)
    ref_l, ref_ab = rgb_to_network(rgb.double() / 255)
    for step in (uint8_planar_to_network_fast, lab_step(compile=True)):
        lightness, ab = step(rgb)
        assert (lightness - ref_l).abs().max() < 1e-4 and (ab - ref_ab).abs().max() < 1e-4


COMPILE_WITHOUT_A_COMPILER = """
import torch
from pipeline.lab_uint8 import lab_step, reference
rgb = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
got, expected = lab_step(compile=True)(rgb), reference(rgb)
print(all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)))
"""


@pytest.mark.slow
def test_compiled_lab_step_falls_back_to_the_reference_without_a_compiler(tmp_path):
    """No working C++ compiler (and no compiled kernel cached): the Lab step still gives the
    reference's values, with one warning line, instead of stopping the loader."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_WITHOUT_A_COMPILER], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "True"
    warnings = [line for line in done.stderr.splitlines() if "torch.compile of the Lab step failed" in line]
    assert len(warnings) == 1 and warnings[0].endswith("); using the reference Lab"), done.stderr[-3000:]


@pytest.mark.slow
def test_three_backends_produce_the_same_lab_from_the_same_pixels(tmp_path, colour_photos):
    """Same decoded, resized uint8 RGB (a 256×256 JPEG needs no resize) through each backend's Lab step."""
    out = tmp_path / "s"
    rgb = np.ascontiguousarray(colour_photos["astronaut"][100:356, 100:356])
    write_test_shards(out, {"a": rgb}, train=(2,), val=(2,), code=False)
    decoded = np.array(Image.open(io.BytesIO(jpeg_bytes(rgb))).convert("RGB"))  # what each decoder sees
    ref_l, ref_ab = rgb_to_network(torch.from_numpy(decoded).permute(2, 0, 1).double()[None] / 255)
    for backend in BACKENDS:
        cfg = cfg_for(out, backend=backend, crop="resize", flip=False, batch_size=2, num_threads=1)
        lightness, ab = next(iter(make_loader(cfg, 0, 1, CPU, split="val", endless=False)))
        assert lightness.shape == (2, 1, 256, 256) and ab.shape == (2, 2, 256, 256)
        assert lightness.dtype == ab.dtype == torch.float32
        # Decoders (libjpeg-turbo in DALI, torchvision and PIL) may differ by a code value on a few
        # pixels, so compare where the decoded pixels are identical: there the Lab must agree.
        assert (lightness[0, 0] - ref_l[0, 0]).abs().median() < 1e-3, backend
        assert (ab[0] - ref_ab[0]).abs().median() < 1e-3, backend
    # The seed's per-image skimage float64 step vs ours on identical pixels, all pixels:
    seed_item = SeedDataset([], 256, False, "error")
    seed_lab = torch.from_numpy(rgb2lab(decoded)).permute(2, 0, 1).float()
    ours_l, ours_ab = uint8_planar_to_network_fast(torch.from_numpy(decoded).permute(2, 0, 1)[None].contiguous())
    assert (ours_l[0, 0] - (seed_lab[0] / 50 - 1)).abs().max() < 1e-3
    assert (ours_ab[0] - seed_lab[1:] / 128).abs().max() < 1e-3
    assert seed_item.transform is not None


# Saturated colours, each a flat 256×256 JPEG: every decoder (libjpeg-turbo in DALI and torchcodec,
# PIL's) gives a flat image the same pixels, and no resize is needed, so each backend's Lab can be held
# to the reference's precision. A scale error of under 1 % in ab (a /127 for /128) moves these
# saturated ab by several 1e-3.
SATURATED = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "yellow": (255, 255, 0),
    "orange": (255, 128, 0),
    "violet": (128, 0, 255),
}


@pytest.fixture(scope="module")
def saturated_shards(tmp_path_factory):
    """(shards dir, {colour: (L_net, ab_net) of its decoded pixel by `pipeline/lab.py` in float64})."""
    flat = {name: np.full((256, 256, 3), rgb, np.uint8) for name, rgb in SATURATED.items()}
    out = tmp_path_factory.mktemp("saturated")
    write_test_shards(out, flat, train=(8,), val=(8,), code=False)  # val: one sample of each colour
    reference = {}
    for name, image in flat.items():
        decoded = np.array(Image.open(io.BytesIO(jpeg_bytes(image))).convert("RGB"))
        assert (decoded == decoded[0, 0]).all()  # flat after decoding too
        pixel = torch.from_numpy(decoded[0, 0].copy()).double().view(1, 3, 1, 1) / 255
        reference[name] = tuple(t.view(-1) for t in rgb_to_network(pixel))
    return out, reference


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_matches_the_reference_lab_on_saturated_colours(saturated_shards, backend):
    root, reference = saturated_shards
    # The product's defaults for the colour step (the compiled kernel on the dali and torch backends).
    cfg = DataConfig(shards=str(root), backend=backend, crop="resize", flip=False, batch_size=8, num_threads=1)
    lightness, ab = next(iter(make_loader(cfg, 0, 1, CPU, split="val", endless=False)))
    seen = []
    for image_l, image_ab in zip(lightness.double(), ab.double(), strict=True):
        # Which colour this is: the nearest reference ab (they are far apart; a scale error is not).
        name = min(reference, key=lambda n: (image_ab[:, 0, 0] - reference[n][1]).abs().max().item())
        ref_l, ref_ab = reference[name]
        l_error = (image_l - ref_l.view(1, 1, 1)).abs().max().item()
        ab_error = (image_ab - ref_ab.view(2, 1, 1)).abs().max().item()
        assert l_error < 1e-4 and ab_error < 1e-4, (backend, name, l_error, ab_error)
        seen.append(name)
    assert sorted(seen) == sorted(SATURATED)


# -------------------------------------------------------------------------------------- shard listing
def test_shard_paths_follow_the_manifest_and_name_what_is_missing(shards, tmp_path):
    root, manifest = shards
    assert [s.name for s in split_shards(root, "train", need_index=False)] == [
        e["name"] for e in manifest["shards"][:3]
    ]
    with pytest.raises(ShardsDirError, match="no_such_dir"):
        split_shards(tmp_path / "no_such_dir", "train")
    (tmp_path / "m").mkdir()
    with pytest.raises(ShardsDirError, match="manifest.json"):
        split_shards(tmp_path / "m", "train")
    with pytest.raises(ShardsDirError, match="'test'"):
        split_shards(root, "test")


def test_batch_size_must_divide_by_world_size(shards):
    with pytest.raises(ConfigError, match="data.batch_size"):
        make_loader(cfg_for(shards[0], batch_size=9), 0, 2, CPU)


# -------------------------------------------------------------------------------- ranks and coverage
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_read_disjoint_samples_that_cover_the_split(shards, backend):
    root, manifest = shards
    cfg = cfg_for(root, backend=backend, batch_size=8, num_threads=1)
    per_rank = [keys_of(make_loader(cfg, r, 2, CPU, split="train", endless=False)) for r in (0, 1)]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(all_keys(manifest, "train"))


@pytest.fixture(scope="module")
def five_shards(tmp_path_factory, colour_photos):
    """5 train shards of 3 samples, 1 val shard of 1."""
    out = tmp_path_factory.mktemp("five")
    return out, write_test_shards(out, colour_photos, train=(3,) * 5, val=(1,))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["shards", "five_shards"])
def test_two_ranks_of_two_torch_workers_read_every_sample_exactly_once(which, request):
    # Four readers. With 3 shards, each reads every 4th sample of all of them; with 5 shards, shards
    # are dealt out to the ranks, then to their workers. Either way the four read each sample once.
    root, manifest = request.getfixturevalue(which)
    cfg = cfg_for(root, backend="torch", batch_size=4, num_threads=2)
    read: Counter[str] = Counter()
    for rank in (0, 1):
        loader = make_loader(cfg, rank, 2, CPU, split="train", endless=False)
        keys = keys_of(loader)
        assert len(keys) == loader.samples_per_epoch
        read.update(keys)
    assert read == Counter(all_keys(manifest, "train"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_shards_than_ranks_still_feeds_every_rank(shards, backend):
    root, manifest = shards  # val: a single shard of 12 samples, 3 ranks
    cfg = cfg_for(root, backend=backend, batch_size=6, num_threads=1)
    got = []
    for rank in range(3):
        loader = make_loader(cfg, rank, 3, CPU, split="val", endless=False)
        keys = keys_of(loader)
        assert len(keys) == loader.samples_per_epoch == 4
        got += keys
    assert sorted(got) == all_keys(manifest, "val")


# ---------------------------------------------------------------------------------- endless vs pass
@pytest.mark.slow
@pytest.mark.parametrize("backend", ("dali", "torch"))
def test_one_pass_ends_keeps_the_partial_batch_and_repeats_identically(shards, backend):
    root, manifest = shards
    loader = make_loader(
        cfg_for(root, backend=backend, batch_size=8, num_threads=1),
        0,
        1,
        CPU,
        split="val",
        endless=False,
    )
    sizes = [b[0].shape[0] for b in loader]
    assert sizes == [8, 4]  # 12 samples: one full batch, then the partial one, nothing dropped
    first = [b[0] for b in loader]
    second = [b[0] for b in loader]
    assert len(first) == len(second) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_one_pass_dali_loader_is_reused_across_passes_without_rebuilding(shards, device, monkeypatch):
    """Evaluation keeps one loader: every iter() is a full, identical pass on the same pipeline."""
    root, manifest = shards
    loader = DaliLoader(cfg_for(root, num_threads=1), 0, 1, torch.device(device), split="val", endless=False)
    builds = []
    build = loader._build
    monkeypatch.setattr(loader, "_build", lambda: builds.append(1) or build())
    passes = [[(L.cpu(), sample_keys(L, ab)) for L, ab in loader] for _ in range(3)]
    assert len(builds) == 1
    assert [k for _, keys in passes[0] for k in keys] == all_keys(manifest, "val")
    for other in passes[1:]:
        assert len(other) == len(passes[0])
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(other, passes[0], strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pass_left_half_way_does_not_shift_the_next_one(shards, backend):
    """Evaluation reads the first N batches of one reused val loader: every iter() starts again at
    the first sample, whatever the previous consumer left unread."""
    root, _ = shards
    loader = make_loader(
        cfg_for(root, backend=backend, batch_size=4, num_threads=1),
        0,
        1,
        CPU,
        split="val",
        endless=False,
    )
    whole = keys_of(loader)
    assert len(whole) == 12
    for _ in range(2):
        assert keys_of(loader, batches=1) == whole[:4]
    assert keys_of(loader) == whole


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_endless_loader_runs_past_the_end_of_the_epoch_with_full_batches(shards, backend):
    root, _ = shards  # train: 48 samples = 6 batches per epoch
    loader = make_loader(cfg_for(root, backend=backend, num_threads=1), 0, 1, CPU, split="train", endless=True)
    batches = 0
    for lightness, ab in loader:
        assert lightness.shape == (8, 1, 256, 256) and ab.shape == (8, 2, 256, 256)
        assert -1.0 - 1e-6 <= lightness.min() and lightness.max() <= 1.0 + 1e-6
        batches += 1
        if batches == 9:
            break
    assert batches == 9


# ------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("backend", ("dali", "torch"))
def test_restored_loader_yields_exactly_the_next_batches(shards, backend, device):
    """On CUDA: DALI's GPU pipeline checkpoint (reader, crop and flip RNGs), and the torch GPU-decode mode."""
    root, _ = shards
    cfg = cfg_for(root, backend=backend)
    loader = make_loader(cfg, 0, 1, torch.device(device), seed=3)
    it = iter(loader)
    for _ in range(4):  # past the prefetch queue, and into the second epoch after 6 more
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(4)]
    restored = make_loader(cfg, 0, 1, torch.device(device), seed=3)
    restored.load_state_dict(state)
    got = list(islice(restored, 4))
    # Bit-equal textured crops: the same samples, crops and flips (the chroma names the samples too).
    assert [sample_keys(*b) for b in got] == [sample_keys(*b) for b in expected]
    for (el, eab), (gl, gab) in zip(expected, got, strict=True):
        assert torch.equal(el, gl) and torch.equal(eab, gab)


def test_dali_cpu_path_flips_some_images_and_leaves_the_rest(shards):
    # With the seed's whole-image resize the only random op is the flip: every training image must
    # equal the deterministic view of its sample, or that view mirrored, and both must occur; an
    # evaluation pass gives the views themselves.
    root, _ = shards
    views = {}
    for L, ab in make_loader(cfg_for(root, crop="resize", flip=False), 0, 1, CPU, split="train", endless=False):
        views.update({k: torch.cat([L[i], ab[i]]) for i, k in enumerate(sample_keys(L, ab))})
    # Evaluation never flips, whatever data.flip says.
    evaluation = make_loader(cfg_for(root, crop="resize", flip=True), 0, 1, CPU, split="train", endless=False)
    for L, ab in evaluation:
        for i, key in enumerate(sample_keys(L, ab)):
            assert torch.equal(torch.cat([L[i], ab[i]]), views[key]), f"{key} flipped in evaluation"
    loader = make_loader(cfg_for(root, crop="resize", flip=True), 0, 1, CPU)
    flipped = kept = 0
    for L, ab in islice(loader, 6):
        for i, key in enumerate(sample_keys(L, ab)):
            image, view = torch.cat([L[i], ab[i]]), views[key]
            if torch.allclose(image, view, atol=1e-5):
                kept += 1
            else:
                assert torch.allclose(image, view.flip(-1), atol=1e-5), f"{key} is neither the view nor its mirror"
                flipped += 1
    assert flipped > 0 and kept > 0


@pytest.fixture(scope="module")
def wide_shards(tmp_path_factory, colour_photos):
    """Shards whose images are all 192×288 (H×W, aspect ratio 3:2), each carrying its chroma code:
    2 train shards of 12, 1 val shard of 4."""
    wide = {name: np.ascontiguousarray(photo[:192, :288]) for name, photo in colour_photos.items()}
    out = tmp_path_factory.mktemp("wide")
    write_test_shards(out, wide, train=(12, 12), val=(4,))
    return out


def one_pass_views(cfg: DataConfig) -> dict[str, torch.Tensor]:
    """Sample key → its (L, ab) 3×S×S view, for every train sample, from a one-pass loader."""
    views = {}
    for L, ab in make_loader(cfg, 0, 1, CPU, split="train", endless=False):
        views.update({k: torch.cat([L[i], ab[i]]) for i, k in enumerate(sample_keys(L, ab))})
    return views


def training_views(cfg: DataConfig, batches: int) -> list[tuple[str, torch.Tensor]]:
    """(sample key, (L, ab) 3×S×S) of the first `batches` batches of a training loader."""
    return [
        (key, torch.cat([L[i], ab[i]]))
        for L, ab in islice(make_loader(cfg, 0, 1, CPU), batches)
        for i, key in enumerate(sample_keys(L, ab))
    ]


def test_dali_cpu_random_window_of_the_whole_image_is_the_resize_view(wide_shards):
    # Area fraction 1 at the images' own aspect ratio leaves one window: the whole image. A training
    # path that crops anything else (the evaluation's centre square, say) does not give the squash.
    squashed = one_pass_views(cfg_for(wide_shards, crop="resize", num_threads=1))
    cfg = cfg_for(wide_shards, crop_scale=(1.0, 1.0), crop_ratio=(1.5, 1.5), flip=False, num_threads=1)
    views = training_views(cfg, 2)
    assert len(views) == 16
    for key, image in views:
        difference = (image - squashed[key]).abs().max().item()
        assert difference < 1e-5, (key, difference)


def test_dali_cpu_random_windows_differ_from_the_fixed_views(wide_shards):
    # The default random windows (35–100 % of the area, aspect 3:4 to 4:3) never match the centre
    # square of a 3:2 image, nor the whole image, exactly; a training path that ignores its window
    # gives one of those two.
    centre = one_pass_views(cfg_for(wide_shards, num_threads=1))
    squashed = one_pass_views(cfg_for(wide_shards, crop="resize", num_threads=1))
    views = training_views(cfg_for(wide_shards, flip=False, num_threads=1), 2)
    assert len(views) == 16
    for key, image in views:
        assert not torch.allclose(image, centre[key], atol=1e-3), f"{key}: the centre view"
        assert not torch.allclose(image, squashed[key], atol=1e-3), f"{key}: the whole image"


def test_dali_pipeline_runs_on_the_loaders_cuda_index(shards, monkeypatch):
    """device_id follows the device's index; a bare "cuda" is the current device (the local rank under
    accelerate), not GPU 0. Nothing is built, so no GPU is needed."""
    root = shards[0]
    assert DaliLoader(cfg_for(root), 0, 1, torch.device("cuda", 1)).device_id == 1
    assert DaliLoader(cfg_for(root), 0, 1, torch.device("cuda", 0)).device_id == 0
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    bare = DaliLoader(cfg_for(root), 0, 1, torch.device("cuda"))
    assert bare.device_id == 3 and bare.device == torch.device("cuda", 3)
    assert DaliLoader(cfg_for(root), 0, 1, CPU).device_id is None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("dali", "torch"))
def test_training_loader_on_gpu_crops_and_flips(shards, backend):
    """Random resized crops and flips on the GPU: full batches in range on cuda:0, crops that change
    between epochs; with the squash resize every training image is its evaluation view or its mirror."""
    root, _ = shards
    device = torch.device("cuda", 0)
    loader = make_loader(cfg_for(root, backend=backend), 0, 1, device, seed=1)
    seen: dict[str, list[torch.Tensor]] = {}
    for L, ab in islice(loader, 13):  # two epochs of 6 batches, and one more
        assert L.device == ab.device == device and L.shape == (8, 1, 256, 256) and ab.shape == (8, 2, 256, 256)
        assert L.dtype == ab.dtype == torch.float32 and -1 - 1e-5 <= L.min() and L.max() <= 1 + 1e-5
        for k, image in zip(sample_keys(L, ab), L, strict=True):
            seen.setdefault(k, []).append(image)
    twice = [v for v in seen.values() if len(v) >= 2]
    assert twice and any(not torch.allclose(a, b, atol=1e-3) for a, b, *_ in twice)

    views = {}
    eval_view = cfg_for(root, backend=backend, crop="resize", flip=False)
    for L, ab in make_loader(eval_view, 0, 1, device, split="train", endless=False):
        views.update({k: torch.cat([L[i], ab[i]]) for i, k in enumerate(sample_keys(L, ab))})
    flipped = kept = 0
    train = make_loader(cfg_for(root, backend=backend, crop="resize", flip=True), 0, 1, device)
    for L, ab in islice(train, 6):
        for i, key in enumerate(sample_keys(L, ab)):
            image, view = torch.cat([L[i], ab[i]]), views[key]
            if torch.allclose(image, view, atol=1e-4):
                kept += 1
            else:
                assert torch.allclose(image, view.flip(-1), atol=1e-4), f"{key} is neither the view nor its mirror"
                flipped += 1
    assert flipped > 0 and kept > 0


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("dali", "torch"))
def test_loader_runs_on_the_given_cuda_index(shards, backend):
    """The local rank's device, given with its index (the last GPU, so a multi-GPU host shows a wrong
    default): batches land there and DALI's pipeline runs there."""
    index = torch.cuda.device_count() - 1
    device = torch.device("cuda", index)
    loader = make_loader(cfg_for(shards[0], backend=backend), 0, 1, device)
    L, ab = next(iter(loader))
    assert L.device == ab.device == device
    if backend == "dali":
        assert loader.device_id == index and loader._iterator._pipes[0].device_id == index


@pytest.mark.gpu
@pytest.mark.parametrize("endless", (True, False))
def test_torch_gpu_decode_matches_the_cpu_worker_mode(shards, endless):
    """nvJPEG (batched decode_jpeg on CUDA) + crops + Lab on the GPU vs the CPU-worker mode: same
    samples, same crops and flips; pixels differ by decoder and float-resampler rounding only."""
    root, _ = shards
    device = torch.device("cuda", 0)
    split = "train" if endless else "val"
    gpu = make_loader(cfg_for(root, backend="torch"), 0, 1, device, split=split, endless=endless, seed=2)
    cpu_cfg = cfg_for(root, backend="torch", decode_device="cpu")
    cpu = make_loader(cpu_cfg, 0, 1, device, split=split, endless=endless, seed=2)
    assert gpu.decode_on == device and cpu.decode_on is None
    for (gl, gab), (cl, cab) in zip(islice(gpu, 3), islice(cpu, 3), strict=True):
        assert sample_keys(gl, gab) == sample_keys(cl, cab) and gl.device == device and cl.device == device
        assert (gl - cl).abs().mean() < 4e-3 and (gab - cab).abs().mean() < 4e-3


@pytest.mark.gpu
def test_torch_gpu_decode_names_or_skips_bad_samples(bad_shards):
    root, manifest, bad = bad_shards
    device = torch.device("cuda", 0)
    with pytest.raises(BadShardError, match=r"train-00000[01]\.tar.*img-000(05|20)"):
        list(make_loader(cfg_for(root, backend="torch", num_threads=1), 0, 1, device, split="train", endless=False))
    cfg = cfg_for(root, backend="torch", on_bad_sample="skip", num_threads=1)
    loader = make_loader(cfg, 0, 1, device, split="train", endless=False)
    keys = keys_of(loader)
    # nvJPEG may decode the truncated JPEG's first half (libjpeg refuses it): it is then kept.
    assert loader.skipped in (1, 2) and set(keys) >= set(all_keys(manifest, "train")) - bad


def test_dali_state_is_small_and_picklable(shards):
    import pickle

    loader = make_loader(cfg_for(shards[0]), 0, 1, CPU)
    next(iter(loader))
    assert len(pickle.dumps(loader.state_dict())) < 10_000


# ------------------------------------------------------------------------------- torch: GPU decode mode
def test_torch_views_equal_the_torchvision_transforms_they_replace(colour_photos):
    """sample_view + apply_view, given the same seed, give the bytes v2.Compose([...]) gave."""
    from torchvision.transforms import v2

    from pipeline.torch_loader import apply_view, sample_view

    images = [
        torch.from_numpy(np.ascontiguousarray(colour_photos[n])).permute(2, 0, 1).contiguous()
        for n in ("astronaut", "chelsea", "coffee", "rocket")
    ]
    for crop, train in (("random_resized", True), ("resize", True), ("random_resized", False), ("resize", False)):
        cfg = DataConfig(crop=crop, size=256)
        if train and crop == "random_resized":
            steps = [v2.RandomResizedCrop(256, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True)]
        elif crop == "resize":
            steps = [v2.Resize((256, 256), antialias=True)]
        else:
            steps = [v2.Resize(256, antialias=True), v2.CenterCrop(256)]
        old = v2.Compose(steps + ([v2.RandomHorizontalFlip(0.5)] if train else []))
        flips = set()
        for seed in range(12):
            image = images[seed % len(images)]
            torch.manual_seed(seed)
            expected = old(image)
            torch.manual_seed(seed)
            view = sample_view(cfg, train, *image.shape[-2:])
            flips.add(view.flip)
            assert torch.equal(apply_view(image, view, cfg, train), expected), (crop, train, seed)
        assert flips == ({False, True} if train else {False})


def test_jpeg_size_reads_the_header_and_refuses_what_is_no_jpeg(colour_photos):
    from pipeline.torch_loader import jpeg_size

    rgb = np.ascontiguousarray(colour_photos["coffee"][:301, :457])
    for mode, kwargs in (("RGB", {}), ("RGB", {"progressive": True}), ("L", {}), ("RGB", {"subsampling": 0})):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", quality=90, **kwargs)
        assert jpeg_size(buf.getvalue()) == (301, 457), (mode, kwargs)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    for bad in (b"not a jpeg at all", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"", png.getvalue()):
        with pytest.raises(ValueError):
            jpeg_size(bad)


def _gpu_mode_on(loader, device):
    """Run the torch loader's GPU-decode flow (header read in workers, batched decode + views + Lab in
    this process) with `device` as the decoder: CPU here, to check the flow without a GPU."""
    loader.decode_on = device
    return loader


@pytest.mark.slow
@pytest.mark.parametrize("endless,crop", [(True, "random_resized"), (True, "resize"), (False, "random_resized")])
def test_torch_gpu_mode_flow_equals_cpu_mode_on_cpu(shards, endless, crop):
    """Same keys, crops, flips and bytes as the CPU-worker mode when its decoder is libjpeg on the CPU."""
    root, _ = shards
    cfg = cfg_for(root, backend="torch", crop=crop, num_threads=2)
    split = "train" if endless else "val"
    cpu_mode = make_loader(cfg, 0, 1, CPU, split=split, endless=endless, seed=5)
    flow = _gpu_mode_on(make_loader(cfg, 0, 1, CPU, split=split, endless=endless, seed=5), CPU)
    assert cpu_mode.decode_on is None
    for (el, eab), (gl, gab) in zip(islice(cpu_mode, 3), islice(flow, 3), strict=True):
        assert torch.equal(el, gl) and torch.equal(eab, gab)


@pytest.mark.slow
def test_torch_gpu_mode_flow_resumes_exactly(shards):
    root, _ = shards
    cfg = cfg_for(root, backend="torch")
    loader = _gpu_mode_on(make_loader(cfg, 0, 1, CPU, seed=3), CPU)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(3)]
    restored = _gpu_mode_on(make_loader(cfg, 0, 1, CPU, seed=3), CPU)
    restored.load_state_dict(state)
    for (el, eab), (gl, gab) in zip(expected, islice(restored, 3), strict=True):
        assert torch.equal(el, gl) and torch.equal(eab, gab)


def test_decode_device_cpu_keeps_the_worker_mode_on_cuda(shards):
    """No GPU needed: only the mode choice is read."""
    root = shards[0]
    from pipeline.torch_loader import TorchLoader

    assert TorchLoader(cfg_for(root, backend="torch"), 0, 1, torch.device("cuda", 0)).decode_on == torch.device(
        "cuda", 0
    )
    assert (
        TorchLoader(cfg_for(root, backend="torch", decode_device="cpu"), 0, 1, torch.device("cuda", 0)).decode_on
        is None
    )
    assert TorchLoader(cfg_for(root, backend="torch"), 0, 1, CPU).decode_on is None


# ----------------------------------------------------------------------------------------- bad data
@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory, colour_photos):
    out = tmp_path_factory.mktemp("bad")
    good = jpeg_bytes(colour_photos["coffee"])
    bad = {"img-00005": b"not a jpeg at all " * 20, "img-00020": good[: len(good) // 2]}
    return out, write_test_shards(out, colour_photos, bad_keys=bad), set(bad)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_undecodable_sample_stops_with_the_shard_named(bad_shards, backend):
    root, _, _ = bad_shards
    loader = make_loader(cfg_for(root, backend=backend, num_threads=1), 0, 1, CPU, split="train", endless=False)
    with pytest.raises(Exception, match=r"train-00000[01]\.tar.*img-000(05|20)") as info:
        list(loader)
    assert "BadShardError" in type(info.value).__name__ or "BadShardError" in str(info.value)


@pytest.mark.slow
def test_torch_gpu_mode_flow_names_or_skips_bad_samples(bad_shards):
    """Not-a-JPEG bytes fail at the worker's header read; the truncated JPEG at the batched decode."""
    root, manifest, bad = bad_shards
    loader = _gpu_mode_on(
        make_loader(cfg_for(root, backend="torch", num_threads=1), 0, 1, CPU, split="train", endless=False), CPU
    )
    with pytest.raises(BadShardError, match=r"train-000000\.tar.*img-00005"):
        list(loader)
    cfg = cfg_for(root, backend="torch", on_bad_sample="skip", num_threads=1)
    loader = _gpu_mode_on(make_loader(cfg, 0, 1, CPU, split="train", endless=False), CPU)
    keys = keys_of(loader)
    assert loader.skipped == 2 and sorted(keys) == sorted(set(all_keys(manifest, "train")) - bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_mode_drops_and_counts_bad_samples(bad_shards, backend):
    root, manifest, bad = bad_shards
    cfg = cfg_for(root, backend=backend, on_bad_sample="skip", num_threads=1)
    loader = make_loader(cfg, 0, 1, CPU, split="train", endless=False)
    keys = keys_of(loader)
    assert loader.skipped == 2
    assert set(keys) >= set(all_keys(manifest, "train")) - bad
    if backend == "dali":  # the bad slots are refilled by neighbours: same count, two repeats
        assert len(keys) == 48 and not bad & set(keys)


def test_truncated_shard_is_named_or_skipped(tmp_path, colour_photos):
    out = tmp_path / "t"
    write_test_shards(out, colour_photos, train=(16, 16), val=(4,))
    tar = out / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(BadShardError, match="train-000001.tar.*truncated"):
        DaliLoader(cfg_for(out), 0, 1, CPU)
    loader = DaliLoader(cfg_for(out, on_bad_sample="skip"), 0, 1, CPU, split="train", endless=False)
    assert loader.skipped >= 7
    assert sum(b[0].shape[0] for b in loader) == 32


def test_dali_arithmetic_lab_of_the_gpu_path_matches_reference(colour_photos):
    """The GPU path's in-pipeline Lab (DALI arithmetic + coord_transform), evaluated on DALI's CPU."""
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.dali_pipeline import _lab_on_device

    rgb = np.ascontiguousarray(colour_photos["coffee"][:64, :96])

    @pipeline_def
    def lab_only():
        hwc = fn.external_source(source=lambda: [rgb], batch=True, layout="HWC", dtype=types.UINT8)
        unit = fn.crop_mirror_normalize(hwc, mean=[0.0], std=[255.0], dtype=types.FLOAT, output_layout="HWC")
        return fn.transpose(_lab_on_device(unit), perm=[2, 0, 1])

    pipe = lab_only(batch_size=1, num_threads=1, device_id=None)
    pipe.build()
    (out,) = pipe.run()
    got = torch.from_numpy(np.array(out.as_tensor()))[0]
    ref_l, ref_ab = rgb_to_network(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255)
    assert (got[:1] - ref_l).abs().max() < 1e-4 and (got[1:] - ref_ab).abs().max() < 1e-4


@pytest.mark.gpu
def test_gpu_pipeline_matches_cpu_path(shards):
    """nvJPEG + DALI-arithmetic Lab on the GPU vs libjpeg-turbo + torch Lab on the CPU; evaluation
    flips on neither, whatever data.flip says."""
    cfg = cfg_for(shards[0], crop="resize", flip=True)
    cpu = next(iter(make_loader(cfg, 0, 1, CPU, split="val", endless=False)))
    gpu = next(iter(make_loader(cfg, 0, 1, torch.device("cuda"), split="val", endless=False)))
    assert gpu[0].is_cuda
    # Decoders differ by a code value here and there; the Lab maths agrees to float precision.
    assert (gpu[0].cpu() - cpu[0]).abs().mean() < 2e-3
    assert (gpu[1].cpu() - cpu[1]).abs().mean() < 2e-3


def test_gpu_eval_centre_crop_takes_the_cpu_paths_window(colour_photos):
    """The GPU evaluation view's ROI resize, run on DALI's CPU backend, vs the CPU path's centre crop.

    Odd and even margins on either axis; the old view (shorter side to S, then centre crop) is kept
    as the counter-example: it lands about a source pixel off on the long axis.
    """
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.cpu_finish import resize_to_square
    from pipeline.dali_pipeline import centre_square_roi

    crops = [
        colour_photos["astronaut"][:375, :500],
        colour_photos["chelsea"][:300, :451],
        colour_photos["coffee"][:399, :300],
        colour_photos["rocket"][:427, :256],
    ]
    encoded = [np.frombuffer(jpeg_bytes(np.ascontiguousarray(c), quality=95), dtype=np.uint8) for c in crops]

    @pipeline_def
    def views():
        jpegs = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8)
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        start, end = centre_square_roi(jpegs)
        new = fn.resize(images, size=[256, 256], roi_start=start, roi_end=end)
        old = fn.crop_mirror_normalize(
            fn.resize(images, resize_shorter=256), crop=[256, 256], dtype=types.UINT8, output_layout="HWC"
        )
        return images, new, old, start

    pipe = views(batch_size=len(crops), num_threads=1, device_id=None)
    pipe.build()
    images, new, old, start = pipe.run()
    old_off = 0
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        side = min(h, w)
        assert list(np.array(start[i])) == [(h - side) // 2, (w - side) // 2]
        ref = resize_to_square(torch.from_numpy(np.array(images[i])), 256, True).permute(1, 2, 0).float()
        got = torch.from_numpy(np.array(new[i])).float()
        # DALI's and torch's antialiased bilinear resamplers differ by rounding only.
        assert (got - ref).abs().mean() < 0.5, i
        old_off = max(old_off, (torch.from_numpy(np.array(old[i])).float() - ref).abs().mean().item())
    assert old_off > 2.0  # the shifted window of the old view is visible; the new one is not


@pytest.mark.parametrize("train,crop", [(True, "random_resized"), (False, "random_resized"), (False, "resize")])
def test_gpu_pipeline_graph_is_valid_without_a_gpu(shards, train, crop):
    """Defining the GPU graph checks every operator argument against DALI's schema (no CUDA needed)."""
    from pipeline.dali_pipeline import colorization_pipeline
    from pipeline.shard_list import split_shards

    found = split_shards(shards[0], "train")
    pipe = colorization_pipeline(
        tar_paths=[s.path for s in found],
        index_paths=[s.index_path for s in found],
        size=256,
        crop=crop,
        crop_scale=(0.35, 1.0),
        crop_ratio=(0.75, 1.33),
        flip=True,
        train=train,
        shard_id=0,
        num_shards=1,
        shuffle_buffer=16,
        gpu=True,
        batch_size=4,
        num_threads=1,
        device_id=None,
    )
    graph = pipe.serialize()
    assert b"jpeg_fancy_upsampling" in graph and (train or crop == "resize" or b"roi_start" in graph)


@pytest.mark.gpu
def test_gpu_eval_view_matches_cpu_path(shards):
    """Evaluation batches (centre crop of random_resized) from the GPU pipeline vs DALI's CPU path."""
    cfg = cfg_for(shards[0], crop="random_resized", flip=False)
    cpu = next(iter(make_loader(cfg, 0, 1, CPU, split="val", endless=False)))
    gpu = next(iter(make_loader(cfg, 0, 1, torch.device("cuda"), split="val", endless=False)))
    assert gpu[0].is_cuda and gpu[0].shape == cpu[0].shape and gpu[1].shape == cpu[1].shape
    # Same window, fancy chroma upsampling: only decoder and resampler rounding remains. A one-pixel
    # shift of the window would show as a mean difference several times this bound.
    assert (gpu[0].cpu() - cpu[0]).abs().mean() < 4e-3
    assert (gpu[1].cpu() - cpu[1]).abs().mean() < 4e-3


# ------------------------------------------------------------------------------------------ benchmark
@pytest.mark.slow
def test_bench_loader_reports_every_backend_against_the_baseline_and_the_ceiling(shards, tmp_path, capsys):
    import json

    from launch.bench import main as bench

    out = tmp_path / "loader.json"
    code = bench(
        [
            "loader",
            "--shards",
            str(shards[0]),
            "--backends",
            "baseline,torch-cpu,dali",
            "--batch-size",
            "8",
            "--seconds",
            "1",
            "--rounds",
            "2",
            "--warmup",
            "1",
            "--threads",
            "2",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    baseline, dali = report["backends"]["baseline"], report["backends"]["dali"]
    assert baseline["ratio_vs_baseline"] == 1.0 and baseline["images_per_s"] > 0 and dali["images_per_s"] > 0
    assert dali["ratio_vs_baseline"] == pytest.approx(dali["images_per_s"] / baseline["images_per_s"], rel=0.01)
    assert dali["fraction_of_decode_ceiling"] == pytest.approx(
        dali["images_per_s"] / report["decode_ceiling_images_per_s"], rel=0.01
    )
    assert report["settings"]["rounds"] == 2
    assert report["backends"]["torch-cpu"]["images_per_s"] > 0 and "CPU" in report["decode_ceiling"]
    printed = capsys.readouterr().out
    assert "baseline" in printed and "dali" in printed and "ceiling" in printed


def test_bench_loader_defaults_and_clock_synchronisation():
    from launch.bench.loader import _timed, default_backends

    assert default_backends("cpu") == "baseline,torch,dali" and default_backends("cuda") == "dali,torch,torch-cpu"
    events = []

    def batches():
        while True:
            events.append("batch")
            yield (torch.zeros(4, 1, 2, 2),)

    images, _ = _timed(batches(), 4, 0.01, warmup=2, sync=lambda: events.append("sync"))
    # Synchronised after the warm-up (before the clock starts) and after the last timed batch.
    assert events[:3] == ["batch", "batch", "sync"] and events[-1] == "sync" and events.count("sync") == 2
    assert images == 4 * (events.count("batch") - 2)


@pytest.mark.gpu
def test_bench_loader_on_cuda_times_every_gpu_source_and_the_nvjpeg_ceiling(shards, tmp_path):
    import json

    from launch.bench import main as bench

    out = tmp_path / "loader.json"
    assert (
        bench(
            [
                "loader",
                "--shards",
                str(shards[0]),
                "--batch-size",
                "8",
                "--seconds",
                "1",
                "--rounds",
                "1",
                "--warmup",
                "1",
                "--threads",
                "2",
                "--device",
                "cuda",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert list(report["backends"]) == ["dali", "torch", "torch-cpu"]
    assert all(r["images_per_s"] > 0 and r["ratio_vs_baseline"] is None for r in report["backends"].values())
    assert "mixed" in report["decode_ceiling"] and report["decode_ceiling_images_per_s"] > 0


def test_bench_loader_rejects_bad_arguments_in_one_line(shards, capsys):
    from launch.bench import main as bench

    assert bench(["loader", "--shards", str(shards[0]), "--backends", "baseline,fast"]) == 2
    assert "unknown backend(s) ['fast']" in capsys.readouterr().err
    assert bench(["loader", "--shards", str(shards[0]), "--backends", "seed,dali"]) == 2
    assert "the source 'seed' was renamed: use 'baseline'" in capsys.readouterr().err
    assert bench(["loader", "--shards", str(shards[0]), "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err


@pytest.mark.slow
def test_dali_cpu_passes_stay_on_each_ranks_share_when_shares_differ(shards):
    """12 val samples over 5 ranks (shares of 2 or 3): every pass of every rank reads its own share,
    whole and unpadded, so that together they cover the split once, pass after pass."""
    root, manifest = shards
    cfg = cfg_for(root, batch_size=10, num_threads=1)  # 2 per rank
    seen = []
    for rank in range(5):
        loader = make_loader(cfg, rank, 5, CPU, split="val", endless=False)
        passes = [keys_of(loader) for _ in range(3)]
        assert passes[0] == passes[1] == passes[2] and len(passes[0]) == len(set(passes[0])) in (2, 3)
        seen += passes[0]
    assert sorted(seen) == sorted(all_keys(manifest, "val"))


@pytest.mark.parametrize("backend", ("torch", "baseline"))
def test_iterating_a_loader_leaves_the_global_rng_alone(shards, backend):
    """A resumed run restores the global RNG (dropout draws from it on the CPU); starting the loader's
    pass must not move it, or the resumed run would differ from an uninterrupted one."""
    root, _ = shards
    loader = make_loader(cfg_for(root, backend=backend, num_threads=1), 0, 1, CPU, split="val", endless=False)
    state = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)
