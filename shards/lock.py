"""One writer per shards folder, and per part: an exclusive `fcntl.flock` on a lock file naming its holder.

Who may write OUT at the same time: the parts of one split (`--part K/N`, same N, other K), each
writing only its own shards. Everything else excludes each other: two builds of the whole plan, two
attempts of the same part (a Slurm requeue while the first attempt still runs), a whole build and a
part, parts of splits into different N (part 1/1 writes every shard), and a hand-run `merge` with a
whole build.

Each writer holds `OUT/.progress/<role>.lock` (`build.lock`, `part-K-of-N.lock`, `merge.lock`) with
`flock(LOCK_EX)` for its whole run; the file's content names host, PID and role. A second writer of
the same role stops with one line naming the holder. Having its own lock, a writer then probes every
other lock file its role excludes: one that is held means another writer is at work, and it stops the
same way (two writers starting at the same moment may both stop; neither writes anything). The kernel
drops a flock when its holder dies (kill -9, the OOM killer; NFSv4, Lustre with `flock` and GPFS drop
a dead node's locks too), so a lock file naming a process that no longer holds it is stale and the next
writer takes it over. Where the file system has no flock (the call fails with ENOLCK, EOPNOTSUPP or
ENOSYS), the content alone decides: a holder on this host that no longer runs is taken over; a holder
on another host is trusted (delete the lock file once that process is gone). Lock files are never
deleted (deleting one races with a writer opening it); a writer that ends empties its file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

from shards.errors import BuildError
from shards.progress import progress_dir

_LOCK_FILE = re.compile(r"^(build|merge|part-(\d+)-of-(\d+))\.lock$")
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
# A writer probing this one holds a shared lock on it for microseconds: retry before calling it taken.
_OWN_LOCK_TRIES, _OWN_LOCK_PAUSE = 20, 0.05


def role_of(part: tuple[int, int] | None, merge: bool = False) -> str:
    """The lock role of a whole build, a part (K, N), or a hand-run merge."""
    if merge:
        return "merge"
    return "build" if part is None else f"part-{part[0]}-of-{part[1]}"


def _describe(role: str) -> str:
    match = _LOCK_FILE.match(f"{role}.lock")
    if match and match[2]:
        return f"part {match[2]}/{match[3]}"
    return {"build": "a build", "merge": "a merge"}.get(role, role)


def _excludes(mine: str, other: str) -> bool:
    """Whether roles `mine` and `other` (different lock files) may not write OUT at the same time."""
    if "build" in (mine, other):
        return True
    if "merge" in (mine, other):
        return False
    n_mine, n_other = (_LOCK_FILE.match(f"{role}.lock")[3] for role in (mine, other))  # type: ignore[index]
    return n_mine != n_other


def _holder(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _who(path: Path, role: str) -> str:
    holder = _holder(path)
    if not holder:
        return f"{_describe(role)} (holder not recorded)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"{_describe(role)} (pid {holder.get('pid')} on host {holder.get('host')!r}, since {since})"


def _alive_here(holder: dict) -> bool:
    """Whether `holder` may still run: on another host (unknowable) or a live PID on this one."""
    if not holder or holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _try_flock(fd: int, operation: int) -> bool | None:
    """True when locked, False when another process holds it, None when the file system has no flock."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in _NO_FLOCK:
            return None
        raise
    return True


class OutputLock:
    """Context manager: hold OUT for one writer `role` (`role_of`); `BuildError` naming the holder when taken."""

    def __init__(self, out: Path, role: str) -> None:
        self.out, self.role = Path(out), role
        self.path = progress_dir(self.out) / f"{role}.lock"
        self._fd: int | None = None
        self._holding = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, path: Path, role: str) -> BuildError:
        error = BuildError(
            f"output folder {str(self.out)!r} is being written by {_who(path, role)}; wait for it to end or "
            f"stop it (lock file {path})"
        )
        self.release()
        return error

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise BuildError(f"cannot create the lock file {self.path}: {error.strerror or error}") from None
        for _ in range(_OWN_LOCK_TRIES):
            locked = _try_flock(self._fd, fcntl.LOCK_EX)
            if locked is not False:
                break
            time.sleep(_OWN_LOCK_PAUSE)
        if locked is False or (locked is None and _alive_here(_holder(self.path))):
            raise self._refuse(self.path, self.role)
        self._holding = True
        os.ftruncate(self._fd, 0)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "role": self.role, "since": int(time.time())}
        os.pwrite(self._fd, json.dumps(holder).encode("utf-8"), 0)
        for other in sorted(self.path.parent.iterdir()):
            match = _LOCK_FILE.match(other.name)
            if not match or other == self.path or not _excludes(self.role, match[1]):
                continue
            if self._held(other):
                raise self._refuse(other, match[1])

    def _held(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            locked = _try_flock(fd, fcntl.LOCK_SH)
            if locked is None:
                return _alive_here(_holder(path))
            return not locked  # a shared lock we got is dropped by the close below
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._holding:
                os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # drops the flock
            self._fd, self._holding = None, False
