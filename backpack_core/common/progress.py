"""Progress on long work: a tqdm bar on stderr, or a callback (the app's progress bar), and the
number of torch threads for many small forward passes.
"""

from __future__ import annotations

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
