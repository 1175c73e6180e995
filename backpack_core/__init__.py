"""Backpack Workbench core: the model, loading, inspection, edits, generation and training.

The light entry points (`load_backpack`, `ModelConfig`, `Backpack`) import no transformers code;
`load_model`, `BackpackLM` and `BackpackConfig` do (lazily, on first use).
"""

from .config import ModelConfig
from .loading import (
    CheckpointError,
    load_backpack,
    load_model,
    resolve_device,
    resolve_dtype,
    save_backpack,
)
from .model import Backpack, BackpackCache, BackpackOutput, Intervention
from .tokenizer import Tokenizer, gpt2_tokenizer, train_bpe

__all__ = ["Backpack", "BackpackCache", "BackpackConfig", "BackpackLM", "BackpackOutput",
           "CheckpointError", "Intervention", "ModelConfig", "Tokenizer", "gpt2_tokenizer",
           "load_backpack", "load_model", "resolve_device", "resolve_dtype", "save_backpack",
           "train_bpe"]


def __getattr__(name: str):
    if name in ("BackpackLM", "BackpackConfig"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'backpack_core' has no attribute {name!r}")
