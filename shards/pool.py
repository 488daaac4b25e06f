"""The decode pool: inspect source files in worker processes, results in input order, and a worker
that dies is caught and named instead of hanging the build.

`concurrent.futures.ProcessPoolExecutor`, fed a window of at most two chunks per worker (so memory
stays flat whatever the source's size), yields each file's `Inspection` in input order. Each worker
notes in shared memory which file it is on. When one dies (kill -9, the out-of-memory killer, a crash
inside a decoder), the executor notices at once (`BrokenProcessPool`) and stops the other workers with
SIGTERM, which they note as such before exiting; the file the dead worker was on is then the one
whose slot still shows it, and `WorkerDied` names its index. The builder decides what follows
(`shards.build`). With one worker, files are inspected in the calling process.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from shards.convert import KEPT, Inspection, inspect_read

_IDLE, _STOPPED = -1, -2
_CHUNKS_PER_WORKER = 2


class WorkerDied(Exception):
    """A decode worker died; `index` is the input position of the file it was on (None: between files)."""

    def __init__(self, index: int | None) -> None:
        super().__init__(index)
        self.index = index


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every inspection needs besides the file: the source's reader and the build options."""

    reader: object
    short_side: int | None
    quality: int
    keep_colourless: bool
    max_pixels: int


# Per-process state of a worker, set once by the initializer instead of pickled with every task.
_settings: Settings | None = None
_slots = None
_slot = -1


def _inspect(locator) -> Inspection:
    assert _settings is not None, "the worker's settings are set first"
    reader = _settings.reader
    result = inspect_read(
        functools.partial(reader.read, locator),  # type: ignore[attr-defined]
        _settings.short_side,
        _settings.quality,
        _settings.keep_colourless,
        _settings.max_pixels,
    )
    if result.status == KEPT and not result.converted and reader.cheap_reread:  # type: ignore[attr-defined]
        # The parent re-reads kept source bytes itself (from the page cache): cheaper than shipping
        # ~100 KB per image through the pool's pipe, which costs a pickle and two copies each way.
        return dataclasses.replace(result, jpeg=None)
    return result


def _on_terminate(signum, frame) -> None:
    # The executor stops the surviving workers of a broken pool with SIGTERM: say so, so that the
    # file a worker is on when stopped is not mistaken for the one that killed the dead worker.
    if _slots is not None:
        _slots[_slot] = _STOPPED
    os._exit(128 + signum)


def _init_worker(settings: Settings, slots, claimed) -> None:
    global _settings, _slots, _slot
    # Ctrl-C is the parent's to handle (it stops the pool); workers would only add tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_terminate)
    with claimed.get_lock():
        _slot = claimed.value
        claimed.value += 1
    _settings, _slots = settings, slots
    slots[_slot] = _IDLE


def _inspect_chunk(items: list[tuple[int, object]]) -> list[tuple[int, Inspection]]:
    assert _slots is not None
    done = []
    for index, locator in items:
        _slots[_slot] = index
        done.append((index, _inspect(locator)))
    _slots[_slot] = _IDLE
    return done


def inspections(
    settings: Settings, locators: Sequence, workers: int, start: int = 0, given: Mapping[int, Inspection] | None = None
) -> Generator[Inspection, None, None]:
    """The inspection of `locators[start:]`, in order; `given` holds results known without inspecting
    (by input position). Raises `WorkerDied` when a worker dies; nothing is yielded out of order."""
    global _settings
    given = given or {}
    todo = [index for index in range(start, len(locators)) if index not in given]
    if workers == 1 or len(todo) <= 1:
        _settings = settings
        for index in range(start, len(locators)):
            yield given[index] if index in given else _inspect(locators[index])
        return
    # Chunks amortise inter-process overhead yet stay small enough to keep every worker busy.
    size = max(1, min(64, len(todo) // (workers * 8)))
    chunks = iter([todo[i : i + size] for i in range(0, len(todo), size)])
    context = multiprocessing.get_context()
    slots = context.Array("q", workers, lock=False)
    executor = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(settings, slots, context.Value("i", 0))
    )
    window: deque = deque()

    def top_up() -> None:
        while len(window) < _CHUNKS_PER_WORKER * workers and (chunk := next(chunks, None)) is not None:
            window.append(executor.submit(_inspect_chunk, [(index, locators[index]) for index in chunk]))

    try:
        top_up()
        ready: dict[int, Inspection] = {}
        for index in range(start, len(locators)):
            if index in given:
                yield given[index]
                continue
            if index not in ready:
                future = window.popleft()
                top_up()
                ready = dict(future.result())
            yield ready.pop(index)
    except BrokenProcessPool:
        executor.shutdown(wait=True)  # the surviving workers are stopped and have marked their slots
        busy = sorted(index for index in slots if index >= 0)
        raise WorkerDied(busy[0] if busy else None) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
