"""One process or many: torchrun's environment, process groups, DDP / FSDP wrapping, gradient
sync during accumulation, and the stop flag every rank agrees on.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set) each process drives one GPU (NCCL) or, on a
machine without GPUs, one CPU process (gloo). Without torchrun: a single process, no group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from backpack_core.model.loading import resolve_device
from backpack_core.training.config import ConfigError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: object | None = None  # a gloo group for CPU-side flags (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def setup(device: str = "auto") -> Dist:
    """Join torchrun's process group when launched by it; otherwise a single process."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but no CUDA GPU is available; use train.device=cpu or auto")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        try:
            return Dist(device=resolve_device(device))
        except ValueError as err:
            raise ConfigError(f"train.device={device}: {err}") from err
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"train.device={device} under torchrun: use auto or cuda (each process drives "
                          "the GPU of its LOCAL_RANK), or cpu (gloo)")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        dist.init_process_group("nccl", device_id=target)
        control = dist.new_group(backend="gloo")  # flags travel on the CPU: no GPU sync
    else:
        target = torch.device("cpu")
        dist.init_process_group("gloo")
        control = None
    return Dist(rank, local_rank, world, target, control)


def teardown(d: Dist) -> None:
    if d.is_distributed:
        dist.destroy_process_group()


def all_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    if d.is_distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_mean(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    return all_sum(d, tensor) / d.world_size


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank if it is true on any: lets all ranks stop at the same step."""
    if not d.is_distributed:
        return flag
    t = torch.tensor([int(flag)], device="cpu" if d.control is not None else d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control)
    return bool(t.item())


def wrap_model(model: nn.Module, d: Dist, fsdp: bool, compile: bool, bf16: bool) -> nn.Module:
    """The module the training step calls. `model` itself stays the plain Backpack (its
    parameters are shared, or sharded in place by FSDP), for evaluation and checkpoints."""
    if fsdp:
        if not d.is_distributed:
            print("train.fsdp=true needs torchrun; training one process without sharding", file=sys.stderr)
        else:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                      reduce_dtype=torch.float32)
            units = list(model.contextualizer.h)
            if hasattr(model, "sense_network"):
                units.append(model.sense_network)
            for unit in units:
                if compile:
                    unit.compile()
                fully_shard(unit, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            return model
    if d.is_distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        model = DDP(model, device_ids=ids, gradient_as_bucket_view=True)
    if compile:  # in place: parameter names (and checkpoints) stay the same; around DDP, so
        model.compile()  # that its graph is split at gradient buckets (communication overlaps)
    return model


def gradient_sync(model: nn.Module, sync: bool):
    """Context for one accumulation micro-step: gradients are reduced across ranks only on the
    last one (DDP's no_sync; FSDP2's set_requires_gradient_sync)."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


class StopSignal:
    """Ctrl-C / SIGTERM set a flag: the loop finishes its step, saves a checkpoint and exits.
    The same signal a second time acts at once (the previous handler is restored)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, d: Dist):
        self.d = d
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if self.d.is_main:
            print(f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then "
                  "exiting (send it again to stop at once, without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """Whether any rank got a signal; the same answer on every rank."""
        stop = any_rank(self.d, self.received is not None)
        if stop and self.received is None:
            self.received = "SIGTERM"  # another rank was signalled
        return stop

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.received)) if self.received else 0
