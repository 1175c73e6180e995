"""Learning rate of each step: linear warmup from 0, then linear or cosine decay to min_lr at the
last step (or constant). A pure function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
          schedule: str = "linear") -> float:
    """The learning rate of optimizer step `step` (0-based) of `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay_steps = max(1, max_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        weight = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        weight = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_lr + weight * (lr - min_lr)
