"""The GPU kit: the wheels an air-gapped GPU node lacks, as chunks that each travel with one device call.

The GPU node has python 3.12 with torch, torchvision, accelerate, numpy, scikit-image, pyyaml, pytest
(+ pytest-timeout), six, packaging and typing-extensions, but no DALI or webdataset, and cannot
download. One device call carries at most 64 MiB (the working tree included), so the kit travels over
the GPU check's three calls, one chunk each: `build` (here, through `make gpu-kit`) downloads the cp312
manylinux wheels in `WHEELS` with pip's cross-platform download, unpacks them into one tree, drops what
Python 3.12 on x86-64 cannot use (other Pythons' extension modules, headers, static libraries, test
suites, command-line tools), writes the tree as ONE `tar.xz` stream and splits it into `part1 … partN`
of equal size, with `manifest.json` holding each chunk's size and SHA-256 and the whole stream's.
`unpack` (on the node) needs the standard library alone (`lzma` + `tarfile`; the node may lack `zstd`):
it checks every chunk, then streams their concatenation into a temp dir that goes first on `PYTHONPATH`.

Library lookup: DALI's and nvImageCodec's shared objects carry RUNPATHs relative to themselves
(`$ORIGIN/../cu13/lib`, `$ORIGIN/../../cu13/lib`, `$ORIGIN/../nvimgcodec`, `$ORIGIN/../libnvcomp/lib64`),
and nvImageCodec's nvJPEG extension `dlopen`s `libnvjpeg.so.13` through that RUNPATH, so the unpacked
tree works as laid out by the wheels with no environment. `library_dirs` still names the tree's
`nvidia/cu13/lib` for `LD_LIBRARY_PATH`, so anything else wanting nvJPEG (torchvision's GPU decode)
finds it too.

The tree's `nvidia/__init__.py` (shipped by nvImageCodec) is replaced by one that extends the
package's path over every `nvidia/` folder on `sys.path`: whichever of the kit's and the node's
`nvidia` package Python picks first, `nvidia.dali` and torch's `nvidia.cu13`/`nvidia.cudnn` both stay
importable.

    python -m launch.gpucheck.kit build      # here: download, pack, split (`make gpu-kit` runs this first)
    python -m launch.gpucheck.kit receive    # which chunks have arrived intact
    python -m launch.gpucheck.kit unpack     # verify + unpack; prints the unpacked tree's path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, cast

from configs.atomic import write_text_atomic

KIT_DIR = Path(".gpu-kit")
MANIFEST = "manifest.json"
CHUNK_PREFIX = "part"
MiB = 2**20
CHUNKS = 3
"""One chunk per device call of the GPU check (`launch.gpucheck.check.COMMANDS`)."""
PRESET = 9
"""xz preset: -9's 64 MiB dictionary spans DALI's 243 MB operator library better than -6's 8 MiB."""
DOWNLOAD_TIMEOUT_S = 1800
PYTHON_TAG = "312"
"""The node's Python (3.12): extension modules built for any other CPython are dropped."""
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
WHEELS = (
    # DALI, the version installed by pyproject, and what its METADATA requires that the node lacks.
    "nvidia-dali-cuda130==2.4.0",
    "nvidia-nvimgcodec-cu13==0.9.0.20",
    "nvidia-libnvcomp-cu13==5.3.0.16",
    # nvJPEG itself (`nvidia-nvjpeg-cu13` is a 1 KB placeholder): the newest on the index, which
    # nvImageCodec 0.9 accepts (it names `nvidia-nvjpeg` unversioned). CUDA 13.3's release notes list a
    # fix for region-of-interest decodes with NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION, the training
    # decode (random crop, `jpeg_fancy_upsampling`); CUDA 13.3 shipped nvJPEG 13.2.x, so 13.3.x has it
    # (tests/test_gpu_decode.py checks the pixels). Its CUDA runtime is linked in statically: on the
    # node's driver (580, CUDA 13.0) it runs through CUDA's minor-version compatibility.
    "nvidia-nvjpeg==13.3.2.43",
    # nvImageCodec's other codecs (DALI requires nvimgcodec[all]): JPEG 2000 and TIFF. Small (6 MB packed),
    # and without them every decoder start logs "[ERROR] Failed to load nvJPEG2000/nvTIFF library".
    "nvidia-nvjpeg2k-cu13==0.11.0.51",
    "nvidia-nvtiff-cu13==0.8.0.82",
    "astunparse==1.6.3",
    "gast==0.7.0",
    "optree==0.20.0",
    "nvtx==0.2.17",
    "makefun==1.16.0",
    "libcst==1.9.0",
    # The project's fallback loader and shard reader, and the pytest timeout plugin pyproject configures.
    "webdataset==1.0.2",
    "braceexpand==0.1.7",
    # The torch loader's JPEG decode (CPU and nvJPEG; images need no FFmpeg): 0.16 is the first release
    # with image decoding and supports torch >= 2.11, the node's. PSNR in evaluation: torchmetrics.
    "torchcodec==0.16.0",
    "torchmetrics==1.9.0",
    "lightning-utilities==0.15.3",
    "pytest-timeout==2.4.0",
)
"""Pinned, so every kit holds the same bytes. Not carried: six, packaging, numpy, pyyaml, wheel and
typing-extensions (DALI's, libcst's, astunparse's and optree's other needs: the node has them), and
wandb and gradio (training with `logging.wandb=disabled` does not import wandb)."""

NAMESPACE_INIT = '''"""`nvidia` spread over several folders (the GPU kit's and the site's): merge them all."""
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
'''
_OTHER_PYTHON_EXTENSION = re.compile(r"\.cpython-(\d+t?)-[^/]*\.so$")
_DROPPED_DIRS = frozenset({"include", "tests", "__pycache__", "bin"})
_DROPPED_SUFFIXES = (".a", ".h", ".hpp", ".cuh", ".pyc")
_UNUSED_CODECS = re.compile(r"(^|/)nvimgcodec/extensions/lib(opencv|tiff)_ext\.so")


class KitError(RuntimeError):
    """A missing, partial or corrupted kit: the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------- build


def wheel_name(spec: str) -> tuple[str, str]:
    """`name==version` → (the wheel file name's normalised distribution, version)."""
    name, _, version = spec.partition("==")
    return re.sub(r"[-_.]+", "_", name).lower(), version


def find_wheel(wheel_dir: Path, spec: str) -> Path | None:
    """The wheel for `spec` already downloaded into `wheel_dir`, or None."""
    name, version = wheel_name(spec)
    for path in sorted(wheel_dir.glob("*.whl")):
        dist, wheel_version = path.name.split("-")[:2]
        if dist.lower() == name and wheel_version == version:
            return path
    return None


def download_wheels(wheel_dir: Path, specs: Iterable[str] = WHEELS) -> list[Path]:
    """The cp312 manylinux x86-64 wheel of each spec, downloaded into `wheel_dir` unless already there."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [spec for spec in specs if find_wheel(wheel_dir, spec) is None]
    if missing:
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(wheel_dir),
            *missing,
        ]
        print(f"downloading {len(missing)} wheel(s) for CPython 3.12 manylinux x86-64 …", flush=True)
        try:
            subprocess.run(command, check=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise KitError(f"pip download gave up after {DOWNLOAD_TIMEOUT_S} s (about 270 MB)") from None
    wheels = [find_wheel(wheel_dir, spec) for spec in specs]
    absent = [spec for spec, wheel in zip(specs, wheels, strict=True) if wheel is None]
    if absent:
        raise KitError(f"pip saved no wheel for {', '.join(absent)} in {wheel_dir}")
    return [wheel for wheel in wheels if wheel is not None]


def unpack_wheels(wheels: Iterable[Path], tree: Path) -> Path:
    """Extract every wheel (a zip) into a fresh `tree`; returns `tree`."""
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tree)
    return tree


def droppable(relative: str, python_tag: str = PYTHON_TAG) -> bool:
    """True for a kit path CPython `python_tag` on x86-64 cannot need: another Python's extension
    module, headers (`include/`, `*.h`), static libraries, test suites, byte code, command-line
    tools (`bin/`: nvCOMP's `nvlzcat`, 9 MB), and nvImageCodec's OpenCV and libtiff codecs (14 MB: the
    shards hold JPEGs only, which its nvJPEG and libjpeg-turbo codecs decode)."""
    path = PurePosixPath(relative)
    if _DROPPED_DIRS.intersection(path.parts) or path.name.endswith(_DROPPED_SUFFIXES):
        return True
    if _UNUSED_CODECS.search(relative):
        return True
    match = _OTHER_PYTHON_EXTENSION.search(path.name)
    return match is not None and match.group(1) != python_tag


def _tar_filter(python_tag: str, totals: dict[str, int]):
    """A `tarfile.add` filter that drops `droppable` members and zeroes owners (a reproducible tar)."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if droppable(info.name, python_tag):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        totals["bytes"] += info.size
        totals["files"] += info.isfile()
        return info

    return keep


def _write_tar(sources: Iterable[tuple[Path, str]], stream: IO[bytes], python_tag: str, totals: dict[str, int]) -> None:
    """Write a tar of `(path, name in the tar)` sources to `stream`, without droppable members."""
    keep = _tar_filter(python_tag, totals)
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in sources:
            tar.add(path, arcname=arcname, filter=keep)


def _compress_with_xz_cli(sources, out: BinaryIO, preset: int, threads: int, python_tag, totals) -> None:
    """tar → `xz -T<threads>` (much faster than Python's single-threaded lzma) → `out`."""
    process = subprocess.Popen(["xz", f"-T{threads}", f"-{preset}", "-c"], stdin=subprocess.PIPE, stdout=out)
    stdin = process.stdin
    assert stdin is not None  # a PIPE
    try:
        _write_tar(sources, stdin, python_tag, totals)
    finally:
        stdin.close()
        if process.wait() != 0:
            raise KitError(f"xz exited with status {process.returncode}")


def split_stream(stream: Path, kit_dir: Path, chunks: int) -> list[dict]:
    """Cut the file `stream` into `chunks` files `part1 … partN` of equal size (the last may be a few
    bytes shorter) in `kit_dir`; returns each chunk's name, size and SHA-256."""
    total = stream.stat().st_size
    size = -(-total // chunks)
    records = []
    with open(stream, "rb") as source:
        for number in range(1, chunks + 1):
            name, digest, left = f"{CHUNK_PREFIX}{number}", hashlib.sha256(), size
            with open(kit_dir / name, "wb") as part:
                while left and (block := source.read(min(left, 4 * MiB))):
                    part.write(block)
                    digest.update(block)
                    left -= len(block)
            records.append({"name": name, "bytes": (kit_dir / name).stat().st_size, "sha256": digest.hexdigest()})
    return records


def pack(
    sources: Iterable[tuple[Path, str]],
    kit_dir: Path,
    chunks: int = CHUNKS,
    preset: int = PRESET,
    python_tag: str = PYTHON_TAG,
    extra: dict | None = None,
) -> dict:
    """Write `sources` (`(path, name in the tar)` pairs) as one `tar.xz` stream split into `chunks`
    equal chunks in `kit_dir`, with `manifest.json` (written last, atomically); returns the manifest.

    Uses the `xz` program with two threads when present (a multi-block stream, which Python's `lzma`
    reads), else Python's `lzma`. Old chunks and the old manifest are removed first, so a kit is
    never a mix of two builds."""
    kit_dir.mkdir(parents=True, exist_ok=True)
    (kit_dir / MANIFEST).unlink(missing_ok=True)
    for old in kit_dir.glob(f"{CHUNK_PREFIX}*"):
        old.unlink()
    sources = list(sources)
    totals = {"bytes": 0, "files": 0}
    stream = kit_dir / "stream.tar.xz.partial"
    started = time.monotonic()
    try:
        with open(stream, "wb") as out:
            if shutil.which("xz"):
                _compress_with_xz_cli(sources, out, preset, 2, python_tag, totals)
            else:
                with lzma.LZMAFile(out, "w", preset=preset) as compressed:
                    _write_tar(sources, cast(IO[bytes], compressed), python_tag, totals)
        records = split_stream(stream, kit_dir, chunks)
        stream_digest = _sha256(stream)
        stream_bytes = stream.stat().st_size
    finally:
        stream.unlink(missing_ok=True)
    manifest = {
        "format": "tar.xz",
        "chunks": records,
        "stream": {"bytes": stream_bytes, "sha256": stream_digest},
        "unpacked": {"bytes": totals["bytes"], "files": totals["files"]},
        "python_tag": python_tag,
        "preset": preset,
        "pack_seconds": round(time.monotonic() - started, 1),
    } | (extra or {})
    write_text_atomic(kit_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def up_to_date(kit_dir: Path, wheel_names: list[str], chunks: int, preset: int) -> dict | None:
    """The manifest of an existing kit built from exactly these wheels, chunk count and preset, whose
    chunks are all present at their recorded sizes; None when it must be packed again."""
    try:
        manifest = read_manifest(kit_dir)
    except KitError:
        return None
    same = (
        manifest.get("wheels") == wheel_names
        and len(manifest["chunks"]) == chunks
        and manifest.get("preset") == preset
        and manifest.get("python_tag") == PYTHON_TAG
    )
    present = all(
        (kit_dir / chunk["name"]).is_file() and (kit_dir / chunk["name"]).stat().st_size == chunk["bytes"]
        for chunk in manifest["chunks"]
    )
    return manifest if same and present else None


def build(kit_dir: Path = KIT_DIR, chunks: int = CHUNKS, preset: int = PRESET, force: bool = False) -> dict:
    """Download (cached in `kit_dir/wheels`), unpack into `kit_dir/tree` (removed after), pack into
    chunks; returns the manifest. A kit already built from the same wheels is kept unless `force`."""
    wheels = download_wheels(kit_dir / "wheels")
    names = [wheel.name for wheel in wheels]
    if not force and (manifest := up_to_date(kit_dir, names, chunks, preset)) is not None:
        print(f"kit up to date ({len(names)} wheels, xz -{preset}); `--force` packs it again", flush=True)
        return manifest
    tree = unpack_wheels(wheels, kit_dir / "tree")
    (tree / "nvidia" / "__init__.py").write_text(NAMESPACE_INIT)
    print(f"packing {len(wheels)} wheels as tar.xz (xz -{preset}; several minutes on 2 cores) …", flush=True)
    try:
        return pack(
            [(path, path.name) for path in sorted(tree.iterdir())], kit_dir, chunks, preset, extra={"wheels": names}
        )
    finally:
        shutil.rmtree(tree, ignore_errors=True)  # ~500 MB, rebuilt from the cached wheels each time


# -------------------------------------------------------------------------------------------- receive


def read_manifest(kit_dir: Path = KIT_DIR) -> dict:
    """The kit's manifest; `KitError` naming it when absent or unreadable."""
    path = kit_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        for chunk in manifest["chunks"]:
            chunk["name"], chunk["bytes"], chunk["sha256"]
        manifest["stream"]["sha256"]
    except FileNotFoundError:
        raise KitError(f"{path} is missing (carry it with the first chunk)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KitError(f"{path} is not a kit manifest ({type(error).__name__}: {error})") from None
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def chunk_problem(kit_dir: Path, chunk: dict, total: int) -> str | None:
    """Why the chunk named in `chunk` cannot be used (missing, wrong size, wrong SHA-256), or None."""
    path = kit_dir / chunk["name"]
    if not path.is_file():
        return f"{path} is missing (chunk {chunk['name'][len(CHUNK_PREFIX) :]} of {total})"
    size = path.stat().st_size
    if size != chunk["bytes"]:
        return f"{path} has {size} bytes, the manifest says {chunk['bytes']} (partial or corrupted copy)"
    if _sha256(path) != chunk["sha256"]:
        return f"{path} does not match its SHA-256 in the manifest (corrupted copy)"
    return None


def verify(kit_dir: Path = KIT_DIR) -> tuple[dict, list[Path]]:
    """(manifest, chunk paths in order) once every chunk is present with its size and SHA-256;
    otherwise `KitError` naming the first bad chunk."""
    manifest = read_manifest(kit_dir)
    chunks = manifest["chunks"]
    for chunk in chunks:
        if problem := chunk_problem(kit_dir, chunk, len(chunks)):
            raise KitError(problem)
    return manifest, [kit_dir / chunk["name"] for chunk in chunks]


def receive(kit_dir: Path = KIT_DIR) -> str:
    """One line saying which chunks have arrived intact (each call's facts report it)."""
    manifest = read_manifest(kit_dir)
    chunks = manifest["chunks"]
    states = [
        f"{chunk['name']} {'missing' if not (kit_dir / chunk['name']).exists() else 'bad' if chunk_problem(kit_dir, chunk, len(chunks)) else 'ok'}"
        for chunk in chunks
    ]
    ready = sum(state.endswith(" ok") for state in states)
    return f"kit: {ready} of {len(chunks)} chunks here ({', '.join(states)})"


# --------------------------------------------------------------------------------------------- unpack


class ChunkReader:
    """A read-only stream over the chunk files in order (their concatenation), hashing what it reads."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._file: BinaryIO | None = None
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        parts = []
        while size != 0:
            if self._file is None:
                if not self._paths:
                    break
                self._file = open(self._paths.pop(0), "rb")
            block = self._file.read(size)
            if not block:
                self._file.close()
                self._file = None
                continue
            parts.append(block)
            size -= len(block) if size > 0 else 0
        data = b"".join(parts)
        self.sha256.update(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def default_destination(manifest: dict) -> Path:
    """Where a kit unpacks unless told: a temp folder named by its stream's SHA-256 (so a rerun on a
    warm machine reuses it)."""
    return Path(tempfile.gettempdir()) / f"colorize-gpu-kit-{manifest['stream']['sha256'][:16]}"


def unpack(kit_dir: Path = KIT_DIR, destination: Path | None = None) -> Path:
    """Verify the chunks, then untar their concatenated `tar.xz` stream into `destination`; returns it.

    Extracts into a sibling temp folder renamed into place at the end, so a killed unpack never looks
    complete; an already complete `destination` of the same stream is reused."""
    manifest, paths = verify(kit_dir)
    destination = destination or default_destination(manifest)
    marker = destination / ".kit-sha256"
    if marker.is_file() and marker.read_text().strip() == manifest["stream"]["sha256"]:
        return destination
    partial = destination.with_name(f"{destination.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    reader = ChunkReader(paths)
    try:
        # lzma.open calls only read() on a file object (typeshed asks for a whole IO[bytes]).
        with lzma.open(cast(IO[bytes], reader)) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(partial, filter="data")
            else:  # Python < 3.11.4: the members are our own build's (checked by SHA-256 above)
                tar.extractall(partial)
        if reader.sha256.hexdigest() != manifest["stream"]["sha256"]:
            raise KitError(f"{kit_dir / MANIFEST}: the chunks' concatenation does not match the stream SHA-256")
        (partial / ".kit-sha256").write_text(manifest["stream"]["sha256"] + "\n")
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(partial, destination)
    except (lzma.LZMAError, tarfile.TarError, EOFError) as error:
        raise KitError(f"{kit_dir}: the chunks do not unpack as tar.xz ({error})") from None
    finally:
        reader.close()
        shutil.rmtree(partial, ignore_errors=True)
    return destination


def library_dirs(tree: Path) -> list[Path]:
    """Folders of the unpacked tree worth putting on `LD_LIBRARY_PATH` (nvJPEG's, when carried)."""
    return [path for path in (tree / "nvidia" / "cu13" / "lib",) if path.is_dir()]


# ------------------------------------------------------------------------------------------------ CLI


def describe(manifest: dict) -> list[str]:
    """Lines summing up a built kit: each chunk's size, the total, and the unpacked size."""
    lines = [
        f"  {chunk['name']}: {chunk['bytes'] / MiB:6.1f} MiB  sha256 {chunk['sha256'][:16]}…"
        for chunk in manifest["chunks"]
    ]
    lines.append(
        f"  total: {manifest['stream']['bytes'] / MiB:.1f} MiB in {len(manifest['chunks'])} chunk(s); "
        f"unpacks to {manifest['unpacked']['bytes'] / MiB:.0f} MiB ({manifest['unpacked']['files']} files)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.gpucheck.kit", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("build", "receive", "verify", "unpack"))
    parser.add_argument("--kit", type=Path, default=KIT_DIR, help="kit folder (default .gpu-kit)")
    parser.add_argument("--chunks", type=int, default=CHUNKS, help=f"chunks to split into (build; default {CHUNKS})")
    parser.add_argument("--preset", type=int, default=PRESET, choices=range(10), help="xz preset (build)")
    parser.add_argument("--force", action="store_true", help="pack again even when the kit is up to date (build)")
    parser.add_argument("--dest", type=Path, help="unpack here (default: a temp folder named by the kit)")
    args = parser.parse_args(argv)
    try:
        if args.action == "build":
            manifest = build(args.kit, args.chunks, args.preset, args.force)
            print(f"kit in {args.kit}/ ({MANIFEST} + {len(manifest['chunks'])} chunk(s)):")
            print("\n".join(describe(manifest)))
        elif args.action == "receive":
            print(receive(args.kit))
        elif args.action == "verify":
            manifest, _ = verify(args.kit)
            print(f"kit: all {len(manifest['chunks'])} chunks intact")
        else:
            print(unpack(args.kit, args.dest))
    except KitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"error: {error.cmd[2:4]} exited with status {error.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
