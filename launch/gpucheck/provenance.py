"""Which code a GPU check measured: the files that travel to the node, and a stamp naming their commit.

A device call copies the working tree to the GPU node — the files git tracks plus the untracked files
it does not ignore — but not `.git`, so the node cannot tell which commit it runs. `write_stamp`
(here, by `make gpu-kit`) records the commit, whether the tree differs from it (`dirty`: changed,
added or untracked files) and the SHA-256 of every travelling file in `.gpu-kit/source.json`, which
every call carries. `check_stamp` (there) re-hashes those files, so each result file names the commit
and says whether the code that ran is exactly the code stamped.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

from configs.atomic import write_text_atomic

STAMP = "source.json"
GIT_TIMEOUT_S = 30


class ProvenanceError(RuntimeError):
    """Not a git checkout, or git failed: the message is one line."""


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise ProvenanceError(f"git {' '.join(args[:2])} failed in {repo}: {error}") from None
    return done.stdout


def travelling_files(repo: Path) -> list[str]:
    """Paths (relative, sorted) of the files a device call copies: tracked plus untracked-not-ignored,
    those that exist (a tracked file deleted in the work tree does not travel)."""
    listed = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sorted({name for name in listed if name and (repo / name).is_file()})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def make_stamp(repo: Path) -> dict:
    """The commit, the dirty flag and every travelling file's SHA-256 (see the module doc)."""
    files = travelling_files(repo)
    status = _git(repo, "status", "--porcelain", "--untracked-files=normal")
    return {
        "commit": _git(repo, "rev-parse", "HEAD").strip(),
        "dirty": bool(status.strip()),
        "stamped_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: sha256_file(repo / name) for name in files},
    }


def write_stamp(repo: Path, path: Path) -> dict:
    """Write `make_stamp(repo)` to `path` (atomically); returns it."""
    stamp = make_stamp(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(stamp, indent=1) + "\n")
    return stamp


def check_stamp(repo: Path, path: Path) -> dict:
    """What the stamp at `path` says about the code in `repo`: commit, dirty flag, and whether every
    stamped file is present with the stamped bytes (`matches`; up to 10 `differs` named)."""
    try:
        stamp = json.loads(path.read_text())
        files = dict(stamp["files"])
    except FileNotFoundError:
        return {"commit": None, "matches": None, "note": f"no stamp ({path.name} was not carried)"}
    except (OSError, ValueError, KeyError, TypeError) as error:
        return {"commit": None, "matches": None, "note": f"{path} is not a stamp ({type(error).__name__})"}
    differs = [
        name for name, digest in files.items() if not (repo / name).is_file() or sha256_file(repo / name) != digest
    ]
    return {
        "commit": stamp.get("commit"),
        "dirty": stamp.get("dirty"),
        "stamped_at": stamp.get("stamped_at"),
        "matches": not differs,
        "files": len(files),
        "differs": differs[:10],
    }
