"""Checkpoints, atomic as a unit: a kill at any moment leaves a run that resumes consistently.

    out_dir/checkpoints/step-00000040/   one complete checkpoint, a model in our format plus
        config.json, model.safetensors,  the optimizer: load_backpack() reads it
        tokenizer.json, tokenizer_config.json,
        train_state.pt                   step, tokens seen, optimizer state (keyed by parameter
                                         name), and what the run must keep to resume exactly
        manifest.json                    written last: step, every file's size and sha256
    out_dir/checkpoints/step-00000030/   the previous good checkpoint (kept)
    out_dir/checkpoints/current          symlink -> step-00000040, switched with os.replace
    out_dir/config.json, model.safetensors, tokenizer.json, ... symlinks into checkpoints/current,
                                         so the run directory itself loads as the latest model

A checkpoint is written into `checkpoints/.partial-step-N-*`, every file flushed, the manifest
last; the directory is then renamed to `step-N` (atomic), the `current` link switched, and all but
the two newest complete checkpoints removed. `--resume` takes the newest complete checkpoint (its
manifest present and every size matching), so weights and optimizer always come from the same
step; before loading it, `resume_point` checks it whole (every file's sha256, the step in its
name, manifest, config.json and train_state.pt, finite weights and optimizer state) and falls back
to the previous good checkpoint, with a note, when it is damaged. A full disk keeps the last good
checkpoint and says how much space was needed.
There is no RNG state to keep: the batch and dropout masks of step N are functions of (seed, N).
Under FSDP, full (unsharded) state dicts are gathered to rank 0, which alone writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
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

from backpack_core.common.files import (
    atomic_write,
    fsync_dir,
    is_disk_full,
    make_dir_readable,
    os_error_of,
    write_text_atomic,
)
from backpack_core.model.backpack import Backpack
from backpack_core.model.loading import (
    CHECKPOINTS_DIR,
    CURRENT_LINK,
    WEIGHTS_FILE,
    CheckpointError,
    save_backpack,
)
from backpack_core.model.tokenizer import TOKENIZER_FILE, Tokenizer
from backpack_core.training.distributed import Dist

STATE_FILE = "train_state.pt"
MANIFEST = "manifest.json"
# Files of a checkpoint linked from the run directory (the run directory loads as a model).
LINKED_FILES = ("config.json", WEIGHTS_FILE, TOKENIZER_FILE, "tokenizer_config.json", STATE_FILE)
KEEP = 2  # complete checkpoints kept: the newest and the previous good one
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class DiskFullError(CheckpointError):
    """The disk (or quota) ran out while saving; the last good checkpoint is kept."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _complete_step(ckpt: Path) -> int | None:
    """The step of a complete checkpoint directory (manifest present, every file of its size)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = manifest["files"]
        if any((ckpt / name).stat().st_size != size for name, size in files.items()):
            return None
        step = int(manifest["step"])
        return step if ckpt.name == checkpoint_name(step) else None  # an edited step is not trusted
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def find_checkpoint(out_dir: Path) -> tuple[Path, int] | None:
    """(directory, step) of the newest complete checkpoint in a run directory, or None.
    A run directory of the older flat layout (train_state.pt beside config.json) is one too."""
    found = []
    root = out_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for ckpt in root.glob("step-*"):
            step = _complete_step(ckpt) if ckpt.is_dir() and not ckpt.is_symlink() else None
            if step is not None:
                found.append((step, ckpt))
    if found:
        step, ckpt = max(found)
        return ckpt, step
    state, config = out_dir / STATE_FILE, out_dir / "config.json"
    if state.is_file() and not state.is_symlink() and config.is_file():  # the flat layout
        try:
            return out_dir, int(json.loads(config.read_text()).get("train_step", -1))
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
            return out_dir, -1
    return None


def saved_step(out_dir: Path) -> int | None:
    """The step of the newest complete checkpoint in out_dir, or None if there is none."""
    found = find_checkpoint(out_dir)
    return None if found is None else found[1]


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _disk_full(out_dir: Path, step: int, needed: int, free: int) -> DiskFullError:
    last = saved_step(out_dir)
    kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
            else "no earlier checkpoint exists")
    return DiskFullError(f"not enough disk space to save the checkpoint of step {step} in {out_dir}: "
                         f"it needs about {_mb(needed)}, {_mb(free)} free; {kept}. Free some space, "
                         f"then continue with --resume {out_dir}")


def _link(target: str, link: Path) -> None:
    """Make `link` a symlink to `target`, replacing whatever is there in one atomic step."""
    tmp = link.parent / f".{link.name}.{os.getpid()}.link"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def point_to(out_dir: Path, ckpt: Path) -> None:
    """Switch checkpoints/current to `ckpt` (atomic) and link the model files from out_dir."""
    root = out_dir / CHECKPOINTS_DIR
    current = root / CURRENT_LINK
    if not (current.is_symlink() and os.readlink(current) == ckpt.name):
        _link(ckpt.name, current)
        fsync_dir(root)
    for name in LINKED_FILES:
        target = f"{CHECKPOINTS_DIR}/{CURRENT_LINK}/{name}"
        link = out_dir / name
        if not (link.is_symlink() and os.readlink(link) == target):
            _link(target, link)
    fsync_dir(out_dir)


def prune(out_dir: Path, keep: int = KEEP) -> None:
    """Remove unfinished checkpoints and all complete ones but the `keep` newest (the one
    `current` points to is always kept)."""
    root = out_dir / CHECKPOINTS_DIR
    current = root / CURRENT_LINK
    pointed = os.readlink(current) if current.is_symlink() else None
    for partial in root.glob(".partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
    complete = sorted(((_complete_step(c), c) for c in root.glob("step-*") if c.is_dir()),
                      key=lambda sc: -1 if sc[0] is None else sc[0], reverse=True)
    kept = 0
    for step, ckpt in complete:
        if ckpt.name == pointed or (step is not None and kept < keep):
            kept += step is not None
            continue
        shutil.rmtree(ckpt, ignore_errors=True)


def _torch_save(obj, path: Path) -> None:
    """torch.save through a Python file, so a failed write keeps its OSError (as the context of
    torch's RuntimeError) instead of only "unexpected pos"."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _write_failed(err: Exception, out_dir: Path, step: int, needed: int) -> Exception:
    """The one-line error for a save that failed while writing: DiskFullError for a full disk or
    quota, CheckpointError for any other refused write; `err` itself when it is not about files."""
    root = out_dir / CHECKPOINTS_DIR
    if is_disk_full(err):
        return _disk_full(out_dir, step, needed, shutil.disk_usage(root).free)
    os_err = os_error_of(err)
    if os_err is None:
        return err
    last = saved_step(out_dir)
    kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
            else "no earlier checkpoint exists")
    return CheckpointError(f"cannot write the checkpoint of step {step} in {root}: "
                           f"{os_err.strerror or os_err}; {kept}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(partial: Path, shell: Backpack, tokenizer: Tokenizer, state: dict, optim: dict) -> None:
    """Every file of one checkpoint into `partial`, the manifest last."""
    save_backpack(shell, tokenizer, partial,
                  extra_config={"train_step": state["step"], "train_tokens": state["tokens"]})
    atomic_write(partial / STATE_FILE, lambda p: _torch_save({**state, "optimizer": optim}, p))
    names = sorted(p.name for p in partial.iterdir() if not p.name.startswith("."))
    manifest = {"step": state["step"], "files": {name: (partial / name).stat().st_size for name in names},
                "sha256": {name: sha256_file(partial / name) for name in names}}
    write_text_atomic(partial / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    fsync_dir(partial)


def save_checkpoint(out_dir: Path, model: Backpack, optimizer: torch.optim.Optimizer,
                    tokenizer: Tokenizer, state: dict, d: Dist) -> Path | None:
    """Called on every rank (FSDP gathers); rank 0 writes. `state` holds step, tokens, resume keys.
    Returns the new checkpoint directory (rank 0). DiskFullError / CheckpointError on failure,
    with the previous checkpoint untouched."""
    weights = get_model_state_dict(model, options=FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not d.is_main:
        return None
    step = state["step"]
    with torch.device("meta"):
        shell = Backpack(model.config)
    shell.load_state_dict(weights, assign=True)  # the full fp32 weights, on the CPU
    root = out_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    needed = _tensor_bytes(weights) + _tensor_bytes(optim) + 4 * 2**20  # + tokenizer, config, headers
    free = shutil.disk_usage(root).free
    if free < needed:
        raise _disk_full(out_dir, step, needed, free)
    partial = Path(tempfile.mkdtemp(dir=root, prefix=f".partial-{checkpoint_name(step)}-"))
    make_dir_readable(partial)
    final = root / checkpoint_name(step)
    try:
        _write(partial, shell, tokenizer, state, optim)
        if final.exists():  # left by an earlier, abandoned continuation of this run
            shutil.rmtree(final)
        os.rename(partial, final)
        fsync_dir(root)
    except Exception as err:  # any writer's failure (safetensors, torch, Python): never a half checkpoint
        shutil.rmtree(partial, ignore_errors=True)
        failed = _write_failed(err, out_dir, step, needed)
        if failed is err:
            raise
        raise failed from err
    try:
        point_to(out_dir, final)
        prune(out_dir)
    except OSError as err:  # step N is complete on disk; --resume finds it
        raise _write_failed(err, out_dir, step, needed) from err
    return final


def remove_checkpoints(out_dir: Path) -> None:
    """Remove every checkpoint of a run directory (starting over with --overwrite)."""
    shutil.rmtree(out_dir / CHECKPOINTS_DIR, ignore_errors=True)
    for name in (*LINKED_FILES, MANIFEST):
        path = out_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()


def read_train_state(ckpt: Path) -> dict:
    """train_state.pt of a checkpoint directory (tensors and plain data only), checked against
    its config.json."""
    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: say so
        raise CheckpointError(f"cannot read {ckpt / STATE_FILE}: {str(err).splitlines()[0]}") from err
    try:
        step = int(json.loads((ckpt / "config.json").read_text()).get("train_step", -1))
    except (OSError, json.JSONDecodeError, ValueError, TypeError, AttributeError):
        step = -1
    if not isinstance(state, dict) or step != state.get("step"):
        got = state.get("step") if isinstance(state, dict) else None
        raise CheckpointError(f"the checkpoint in {ckpt} is inconsistent: weights at step {step}, "
                              f"optimizer at step {got}")
    return state


def _read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return {k.removeprefix("backpack."): v for k, v in load_file(str(ckpt / WEIGHTS_FILE)).items()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {ckpt / WEIGHTS_FILE}: {err}") from err


def _nonfinite(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list holding NaN or Inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    if isinstance(tree, dict):
        items = tree.items()
    else:
        items = enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return [name for k, v in items for name in _nonfinite(v, f"{prefix}.{k}" if prefix else str(k))]


def check_checkpoint(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a checkpoint to resume from, checked whole: every file against the sha256 in its
    manifest, one step in the directory's name, the manifest, config.json and train_state.pt,
    finite weights and optimizer state. Returns (train state, weights); CheckpointError says
    what is wrong. (The older flat layout has no manifest: only the steps and values are checked.)"""
    if ckpt.name.startswith("step-"):
        try:
            manifest = json.loads((ckpt / MANIFEST).read_text())
            step, sums = int(manifest["step"]), manifest.get("sha256", {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"its {MANIFEST} is unreadable ({err})") from None
        if ckpt.name != checkpoint_name(step):
            raise CheckpointError(f"its {MANIFEST} says step {step}, its name another step")
        for name, digest in sums.items() if isinstance(sums, dict) else ():
            if not (ckpt / name).is_file() or sha256_file(ckpt / name) != digest:
                raise CheckpointError(f"{name} does not match its checksum (altered or corrupt)")
    state = read_train_state(ckpt)
    weights = _read_weights(ckpt)
    bad = _nonfinite(weights) + _nonfinite(state.get("optimizer", {}), "optimizer")
    if bad:
        raise CheckpointError(f"NaN or infinite values in {len(bad)} tensor(s): {', '.join(bad[:3])}")
    return state, weights


def resume_point(out_dir: Path, move_aside: bool = True) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """(directory, train state, weights) of the newest checkpoint that passes `check_checkpoint`.
    A damaged newer one is skipped; with `move_aside` (the writing rank) it is renamed to
    checkpoints/damaged-step-N, so that it is neither resumed nor kept in place of a good one,
    with a one-line note on stderr. CheckpointError (never advising --overwrite) when none is good."""
    root = out_dir / CHECKPOINTS_DIR
    dirs = sorted((c for c in root.glob("step-*") if c.is_dir() and not c.is_symlink()),
                  key=lambda c: c.name, reverse=True) if root.is_dir() else []
    if not dirs and find_checkpoint(out_dir) is not None:
        dirs = [out_dir]  # the older flat layout
    damaged = []
    for ckpt in dirs:
        if ckpt != out_dir and not (ckpt / MANIFEST).is_file():
            continue  # never completed (a save cut short): not a checkpoint
        try:
            state, weights = check_checkpoint(ckpt)
        except CheckpointError as err:
            damaged.append((ckpt, str(err)))
            continue
        for bad, why in damaged if move_aside else ():
            aside = root / f"damaged-{bad.name}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(bad, aside)
            print(f"note: checkpoint {bad} is damaged ({why}); moved to {aside.name}, resuming from "
                  f"step {state['step']} instead", file=sys.stderr, flush=True)
        return ckpt, state, weights
    if not damaged:
        raise CheckpointError(f"nothing to resume: {out_dir} holds no complete checkpoint")
    raise CheckpointError(f"no checkpoint in {out_dir} can be resumed: "
                          + "; ".join(f"{c.name}: {why}" for c, why in damaged)
                          + ". Restore the run directory from a copy, or start a new run in another "
                          "train.out_dir")


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                    weights: dict[str, torch.Tensor] | None = None) -> None:
    """Load a checkpoint directory's weights (or `weights`, already read from it) and `state`'s
    optimizer state into a (possibly sharded) model."""
    if weights is None:
        weights = _read_weights(ckpt)
    try:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"the checkpoint in {ckpt} does not fit this model: {err}") from err
