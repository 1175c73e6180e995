"""Checkpoints: the run directory is itself a model in our format, plus the optimizer.

    out_dir/config.json, model.safetensors, tokenizer.json   save_backpack: load_backpack(out_dir)
    out_dir/train_state.pt   step, tokens seen, optimizer state (keyed by parameter name), and what
                             the run must keep to resume exactly (model config, seed, batch, data)

Every file is written to a temporary name and renamed into place; train_state.pt goes last and
the step is recorded in both it and config.json, so a save cut short is detected on resume.
There is no RNG state to keep: the batch and dropout masks of step N are functions of (seed, N).
Under FSDP, full (unsharded) state dicts are gathered to rank 0, which alone writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..loading import WEIGHTS_FILE, CheckpointError, save_backpack
from ..model import Backpack
from ..tokenizer import Tokenizer
from .distributed import Dist

STATE_FILE = "train_state.pt"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def saved_step(out_dir: Path) -> int | None:
    """The step of the checkpoint in out_dir, or None if there is none."""
    config = out_dir / "config.json"
    if not (out_dir / STATE_FILE).is_file() or not config.is_file():
        return None
    try:
        return int(json.loads(config.read_text()).get("train_step", -1))
    except (json.JSONDecodeError, ValueError, TypeError):
        return -1


def save_checkpoint(out_dir: Path, model: Backpack, optimizer: torch.optim.Optimizer,
                    tokenizer: Tokenizer, state: dict, d: Dist) -> None:
    """Called on every rank (FSDP gathers); rank 0 writes. `state` holds step, tokens, resume keys."""
    weights = get_model_state_dict(model, options=FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not d.is_main:
        return
    with torch.device("meta"):
        shell = Backpack(model.config)
    shell.load_state_dict(weights, assign=True)  # the full fp32 weights, on the CPU
    save_backpack(shell, tokenizer, out_dir,
                  extra_config={"train_step": state["step"], "train_tokens": state["tokens"]})
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{STATE_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        torch.save({**state, "optimizer": optim}, tmp)
        os.replace(tmp, out_dir / STATE_FILE)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_train_state(out_dir: Path) -> dict:
    """train_state.pt of a checkpoint (tensors and plain data only), checked against config.json."""
    try:
        state = torch.load(out_dir / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: say so
        raise CheckpointError(f"cannot read {out_dir / STATE_FILE}: {err}") from err
    step = saved_step(out_dir)
    if step != state.get("step"):
        raise CheckpointError(f"the checkpoint in {out_dir} is inconsistent: weights at step {step}, "
                              f"optimizer at step {state.get('step')} (a save was cut short). "
                              "Start over with --overwrite, or restore the directory from a copy")
    return state


def load_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load the weights and `state`'s optimizer state into a (possibly sharded) model."""
    from safetensors.torch import load_file

    weights = {k.removeprefix("backpack."): v for k, v in load_file(str(out_dir / WEIGHTS_FILE)).items()}
    try:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"the checkpoint in {out_dir} does not fit this model: {err}") from err
