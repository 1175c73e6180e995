"""Backpack Workbench core: the model, loading, inspection, edits, generation and training.

The light entry points (`load_backpack`, `ModelConfig`, `Backpack`) import no transformers code;
`load_model`, `BackpackLM` and `BackpackConfig` do. Every name is imported on first use, so that
`backpack_core.common.cli` (the command-line error handler) and `--help` import no torch.

`import backpack_core` registers the model with transformers' Auto classes, so that
`AutoModelForCausalLM.from_pretrained(dir)` and `pipeline("text-generation", model=dir)` work on
our directories without remote code. The registration runs when transformers is imported (at
once if it already is), so importing the core alone stays fast.
"""

import importlib as _importlib

import wrapt as _wrapt

_WHERE = {
    "ModelConfig": "model.config",
    "CheckpointError": "model.loading", "load_backpack": "model.loading", "load_model": "model.loading",
    "resolve_device": "model.loading", "resolve_dtype": "model.loading", "save_backpack": "model.loading",
    "Backpack": "model.backpack", "BackpackCache": "model.backpack", "BackpackOutput": "model.backpack",
    "Intervention": "model.backpack",
    "Tokenizer": "model.tokenizer", "gpt2_tokenizer": "model.tokenizer", "train_bpe": "model.tokenizer",
    "BackpackLM": "model.hf", "BackpackConfig": "model.hf",
}

__all__ = sorted(_WHERE)


def _register_with_transformers(_transformers) -> None:
    # importing backpack_core.model.hf registers the Auto classes (at its end; when this hook fires
    # while backpack_core.model.hf itself is importing transformers, that module finishes the job)
    _importlib.import_module(f"{__name__}.model.hf")


_wrapt.register_post_import_hook(_register_with_transformers, "transformers")


def __getattr__(name: str):
    if name in _WHERE:  # imported on first use
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backpack_core' has no attribute {name!r}")
