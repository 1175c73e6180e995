"""Backpack Workbench core: the model, loading, inspection, edits, generation and training.

The light entry points (`load_backpack`, `ModelConfig`, `Backpack`) import no transformers code;
`load_model`, `BackpackLM` and `BackpackConfig` do (lazily, on first use).

`import backpack_core` registers the model with transformers' Auto classes, so that
`AutoModelForCausalLM.from_pretrained(dir)` and `pipeline("text-generation", model=dir)` work on
our directories without remote code. The registration runs when transformers is imported (at
once if it already is), so importing the core alone stays fast.
"""

import importlib as _importlib

import wrapt as _wrapt

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




def _register_with_transformers(_transformers) -> None:
    # importing backpack_core.hf registers the Auto classes (at its end; when this hook fires
    # while backpack_core.hf itself is importing transformers, that module finishes the job)
    _importlib.import_module(f"{__name__}.hf")


_wrapt.register_post_import_hook(_register_with_transformers, "transformers")


def __getattr__(name: str):
    if name in ("BackpackLM", "BackpackConfig"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'backpack_core' has no attribute {name!r}")
