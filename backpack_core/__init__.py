"""Backpack Workbench core: the model, loading, inspection, edits, generation and training.

The light entry points (`load_backpack`, `ModelConfig`, `Backpack`) import no transformers code;
`load_model`, `BackpackLM` and `BackpackConfig` do. Every name is imported on first use, so that
`backpack_core.cli` (the command-line error handler) and `--help` import no torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ModelConfig": "config",
    "CheckpointError": "loading", "load_backpack": "loading", "load_model": "loading",
    "resolve_device": "loading", "resolve_dtype": "loading", "save_backpack": "loading",
    "Backpack": "model", "BackpackCache": "model", "BackpackOutput": "model", "Intervention": "model",
    "Tokenizer": "tokenizer", "gpt2_tokenizer": "tokenizer", "train_bpe": "tokenizer",
    "BackpackLM": "hf", "BackpackConfig": "hf",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backpack_core' has no attribute {name!r}")
