"""Threads per request, the time left of long work (backpack_core.common.progress)."""

from __future__ import annotations

import pytest
import torch

from backpack_core.common import progress


def test_choose_threads_one_for_small_or_busy_all_cores_for_large_work_on_idle(monkeypatch):
    monkeypatch.delenv(progress.THREADS_ENV, raising=False)
    large = progress.LARGE_WORK_TOKENS
    assert progress.choose_threads(30, load=0.0, cores=8) == 1  # a generation: small
    assert progress.choose_threads(large, load=0.5, cores=8) == 8  # an atlas on an idle machine
    assert progress.choose_threads(large, load=9.0, cores=8) == 1  # ... on a busy one
    assert progress.choose_threads(large, load=0.0, cores=1) == 1
    monkeypatch.setenv(progress.THREADS_ENV, "3")  # the operator's override wins
    assert progress.choose_threads(30, load=99.0, cores=2) == 3
    monkeypatch.setenv(progress.THREADS_ENV, "zero")
    with pytest.raises(ValueError, match="positive integer"):
        progress.choose_threads(30)


def test_torch_threads_restores_and_time_left_reads_well():
    before = torch.get_num_threads()
    with progress.torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with progress.torch_threads(0):
            pass
    assert progress.time_left(0, 10, 5.0) == "" and progress.time_left(10, 10, 5.0) == ""
    assert progress.time_left(1, 5, 2.0) == "about 8 s left"
    assert progress.time_left(1, 3, 50.0) == "about 1 min 40 s left"
    assert progress.time_left(9, 10, 0.5) == "less than a second left"
