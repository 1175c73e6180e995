"""Progress on long work: a tqdm bar on stderr, or a callback (the app's progress bar), the time
left, and the number of torch threads for a request.

Threads. torch uses every core by default. On a busy CPU (a server with other sessions, a
training run) oversubscribed threads make small requests several times slower: a 30-token
generation took 16.7 s on 2 threads and 0.53 s on 1 (issue 23). `choose_threads(work)` picks
1 thread for a small request, or for any request when the machine is already busy (1-minute load
at or above its cores), and the cores for large work on an idle machine; BACKPACK_THREADS, when
set, overrides it. `torch_threads(n)` sets them for one block (OpenMP keeps the count per calling
thread, so one server thread's request does not change another's).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    pass


def progress_bar(iterable: Iterable, desc: str, total: int | None = None, enabled: bool | None = None):
    """tqdm on stderr, also when stderr is not a terminal (a log, a pipe: then an update every
    10 s, and the last one stays); enabled=False: none. stdout (the result, --json) is untouched."""
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=not terminal,
                mininterval=0.1 if terminal else 10.0, disable=enabled is False)


def track(iterable: Iterable, desc: str, total: int,
          progress: bool | Callable[[int, int], None] | None = True) -> Iterator:
    """`iterable` with progress: a tqdm bar on stderr (True/None; False: none), or a
    callback `progress(done, total)` called after each item has been processed (the app's bar)."""
    if not callable(progress):
        return iter(progress_bar(iterable, desc, total=total, enabled=progress))

    def reported():
        for done, item in enumerate(iterable, 1):
            yield item
            progress(done, total)

    return reported()


def set_threads(n: int | None) -> None:
    """torch's intra-op threads (None: leave them). The experiments run many small forward
    passes, which on a busy CPU are several times faster on one thread than on two."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)


THREADS_ENV = "BACKPACK_THREADS"
LARGE_WORK_TOKENS = 20_000  # a request reading fewer tokens than this runs on one thread


def threads_override() -> int | None:
    """BACKPACK_THREADS as a positive integer, or None when unset; ValueError when malformed."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
    return threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(work_tokens: int, load: float | None = None, cores: int | None = None) -> int:
    """torch threads for a request that reads about `work_tokens` tokens (a generation: the
    tokens generated times the context; an atlas: the corpus): BACKPACK_THREADS when set; else 1
    for small work or on a busy machine (1-minute `load` >= `cores`, read from the system when
    None); else every core."""
    override = threads_override()
    if override is not None:
        return override
    cores = available_cores() if cores is None else cores
    if work_tokens < LARGE_WORK_TOKENS or cores <= 1:
        return 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return 1 if load >= cores else cores


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """torch's intra-op threads set to `n` inside the block, restored after it."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def time_left(done: int, total: int, elapsed_s: float) -> str:
    """'about 1 min 20 s left' from the pace so far (done of total steps in elapsed_s); '' before
    the first step."""
    if done <= 0 or total <= done:
        return ""
    seconds = elapsed_s / done * (total - done)
    if seconds < 1:
        return "less than a second left"
    if seconds < 60:
        return f"about {seconds:.0f} s left"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"about {minutes} min {rest:02d} s left"
