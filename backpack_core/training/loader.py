"""Token shards -> batches, deterministically.

The rows of the batch of step N are a pure function of (seed, N): resuming at step N replays
exactly the data an uninterrupted run would have seen, and distributed training needs no
sampler state (rank r of w takes rows r::w of the same global batch).

Sampling: the split is cut into `W = n_tokens // seq_len` windows of `seq_len` tokens. Row g of
the run (g = step * global_batch + i) is window `perm_e[g % W]` of epoch `e = g // W`, where
`perm_e` is a permutation and `offset_e` (0 <= offset < seq_len) a shift of all window starts,
both drawn from `numpy.random.default_rng([seed, e])`. Each epoch sees every window once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from backpack_core.model.tokenizer import Tokenizer

MANIFEST = "manifest.json"
FORMAT = "backpack-token-shards"
SPLITS = ("train", "val")


class DataError(ValueError):
    """Token shards are missing or unusable; the message says how to build them."""


def build_hint(directory: str | Path) -> str:
    return ("build them with:\n  python -m backpack_core.training.prepare --input <text files or "
            f"directories> --tokenizer gpt2 --out {directory}\n(see docs/TRAINING.md)")


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a shard directory, checked to describe our format."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        what = "does not exist" if not Path(directory).exists() else f"has no {MANIFEST}"
        raise DataError(f"token shard directory {directory} {what}; {build_hint(directory)}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); rebuild the shards with --force") from err
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a token shard manifest (format {manifest.get('format')!r})")
    return manifest


def open_split(directory: str | Path, manifest: dict, split: str) -> np.ndarray:
    """Token ids of one split as a read-only memmap (1-D, uint16 or uint32)."""
    info = manifest["splits"][split]
    dtype = np.dtype(manifest["dtype"])
    path = Path(directory) / info["file"]
    expected = info["tokens"] * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        raise DataError(f"{path} is missing or has the wrong size (expected {expected} bytes); "
                        "rebuild the shards with prepare --force")
    if info["tokens"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(info["tokens"],))


class ShardSet:
    """A prepared shard directory: `train` and `val` token arrays, the manifest, the tokenizer."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.train = open_split(self.directory, self.manifest, "train")
        self.val = open_split(self.directory, self.manifest, "val")

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def eos_token_id(self) -> int:
        return int(self.manifest["eos_token_id"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.directory)


def gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    """Windows tokens[s : s + seq_len] for s in starts -> (len(starts), seq_len) int64."""
    rows = np.stack([np.asarray(tokens[s:s + seq_len]) for s in starts]) if len(starts) else \
        np.zeros((0, seq_len), dtype=np.int64)
    return torch.from_numpy(rows.astype(np.int64))


class TrainBatches:
    """The training rows of every step; see the module docstring for the order."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int):
        if len(tokens) < seq_len:
            raise DataError(f"the train split has {len(tokens)} tokens, fewer than one sequence of "
                            f"data.seq_len={seq_len}; use more text or a shorter seq_len")
        self.tokens, self.seq_len, self.global_batch, self.seed = tokens, seq_len, global_batch, seed
        self.windows = len(tokens) // seq_len
        self.slack = len(tokens) - self.windows * seq_len  # room to shift windows per epoch
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self.slack + 1))
            perm = rng.permutation(self.windows)
            if len(self._epochs) >= 2:  # a step spans at most two epochs
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (offset, perm)
        return self._epochs[epoch]

    def epoch_at(self, step: int) -> float:
        """Fractional epochs completed before `step`."""
        return step * self.global_batch / self.windows

    def starts(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Token offsets of rank `rank`'s rows of step `step`: rows rank::world_size."""
        rows = step * self.global_batch + np.arange(rank, self.global_batch, world_size)
        epochs, index = np.divmod(rows, self.windows)
        out = np.empty(len(rows), dtype=np.int64)
        for e in np.unique(epochs):
            offset, perm = self._epoch(int(e))
            sel = epochs == e
            out[sel] = offset + perm[index[sel]] * self.seq_len
        return out

    def micro_batches(self, step: int, micro_batch: int, rank: int = 0, world_size: int = 1
                      ) -> list[torch.Tensor]:
        """This rank's rows of step `step`, as grad-accumulation micro-batches (micro_batch, seq)."""
        rows = gather(self.tokens, self.starts(step, rank, world_size), self.seq_len)
        return list(rows.split(micro_batch))


def eval_windows(tokens: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """Start offsets of up to `count` fixed, non-overlapping windows spread over the split."""
    windows = len(tokens) // seq_len
    if windows == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    picks = np.unique(np.linspace(0, windows - 1, min(count, windows)).round().astype(np.int64))
    return picks * seq_len
