"""Architecture hyperparameters of a Backpack LM (and of its Transformer twin).

`ModelConfig` is a plain dataclass so that the light code paths (command-line lookups) never
import transformers. `backpack_core.model.hf.BackpackConfig` is the transformers `PretrainedConfig`
with exactly these fields; `config.json` on disk holds them under the same names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MODEL_KINDS = ("backpack", "transformer")
ACTIVATIONS = ("gelu_new", "gelu")


@dataclass
class ModelConfig:
    """Every number that fixes the computation. Names follow GPT-2's config where one exists."""

    vocab_size: int = 50264
    n_positions: int = 512  # longest sequence (position embeddings)
    n_embd: int = 768  # model width d
    n_layer: int = 12  # contextualizer blocks
    n_head: int = 12  # contextualizer attention heads
    n_inner: int | None = None  # contextualizer MLP width; None means 4 * n_embd
    num_senses: int = 16  # k: sense vectors per word
    sense_intermediate_scale: int = 4  # final sense MLP: d -> scale * d -> k * d
    model_kind: str = "backpack"  # "backpack", or "transformer" for the twin (GPT-2 head)
    activation_function: str = "gelu_new"  # "gelu_new" (tanh approximation, GPT-2) or "gelu"
    scale_attn_by_inverse_layer_idx: bool = False  # published GPT-2 detail
    # Additive mask value of the sense-weight softmax. The published model adds -10000 to
    # masked scores; None masks them out exactly (probability 0).
    sense_mask_value: float | None = None
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    # Training only: each sense vector of each source token is zeroed with this probability
    # (the others scaled by 1 / (1 - p)), so that no prediction leans on one sense alone.
    # 0 (the default) is left out of `to_dict`, so configs and keys made of them stay as before.
    sense_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    # An exported edited model (backpack_core.edit.export) carries its edits as tables whose
    # sizes are fixed here: {"sense_tokens": n, "contextualization_tokens": m} (see
    # `backpack.EditOverrides`). None for an unedited model (and then left out of `to_dict`).
    edit_overrides: dict[str, int] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.model_kind not in MODEL_KINDS:
            problems.append(f"model_kind must be one of {MODEL_KINDS}, got {self.model_kind!r}")
        if self.activation_function not in ACTIVATIONS:
            problems.append(
                f"activation_function must be one of {ACTIVATIONS}, got {self.activation_function!r}"
            )
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "num_senses",
                     "sense_intermediate_scale"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or isinstance(self.n_inner, bool)
                                         or self.n_inner < 1):
            problems.append(f"n_inner must be a positive integer or null, got {self.n_inner!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "sense_pdrop"):
            if not _is_number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be a number in [0, 1), got {getattr(self, name)!r}")
        if not _is_number(self.layer_norm_epsilon) or not 0 < self.layer_norm_epsilon < 1:
            problems.append(f"layer_norm_epsilon must be a number in (0, 1), got {self.layer_norm_epsilon!r}")
        if self.sense_mask_value is not None and not _is_number(self.sense_mask_value):
            problems.append("sense_mask_value must be a finite number or null, got "
                            f"{self.sense_mask_value!r}")
        if not isinstance(self.scale_attn_by_inverse_layer_idx, bool):
            problems.append("scale_attn_by_inverse_layer_idx must be true or false, got "
                            f"{self.scale_attn_by_inverse_layer_idx!r}")
        if not problems:
            if self.n_embd % self.n_head:
                problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            if self.model_kind == "backpack" and self.n_embd % self.num_senses:
                problems.append(
                    f"n_embd ({self.n_embd}) must be divisible by num_senses ({self.num_senses})"
                )
        if self.edit_overrides is not None and not problems:
            problems += _edit_override_problems(self.edit_overrides, self.model_kind,
                                                self.vocab_size)
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems))

    @property
    def is_backpack(self) -> bool:
        return self.model_kind == "backpack"

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["edit_overrides"] is None:  # an unedited model's config (and keys made of it) as before
            del out["edit_overrides"]
        if out["sense_pdrop"] == 0:  # likewise for a model trained without sense dropout
            del out["sense_pdrop"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict; keys this class does not know (HF bookkeeping) are ignored."""
        if not isinstance(values, dict):
            raise ValueError(f"Invalid model config: expected a JSON object of settings, got a "
                             f"{type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def parameter_count(self) -> int:
        """Parameters of the model this config builds (the tied embedding once), computed
        without building it: the size check before anything is allocated."""
        d, m = self.n_embd, self.mlp_width

        def linear(n_in: int, n_out: int) -> int:
            return n_in * n_out + n_out

        norm = 2 * d
        block = 2 * norm + linear(d, 3 * d) + linear(d, d) + linear(d, m) + linear(m, d)
        total = self.vocab_size * d + self.n_positions * d + self.n_layer * block + norm
        if self.is_backpack:
            scale = self.sense_intermediate_scale
            total += (3 * norm + linear(d, 4 * d) + linear(4 * d, d)
                      + linear(d, scale * d) + linear(scale * d, self.num_senses * d))  # sense network
            total += linear(d, 2 * d)  # sense weight network
        return total


EDIT_OVERRIDE_SIZES = ("sense_tokens", "contextualization_tokens")


def _edit_override_problems(value: Any, model_kind: str, vocab_size: int) -> list[str]:
    """What is wrong with `edit_overrides` (token counts: each token at most once per table)."""
    if model_kind != "backpack":
        return ["edit_overrides: a Transformer twin has no senses to carry edits"]
    if not isinstance(value, dict) or set(value) != set(EDIT_OVERRIDE_SIZES):
        return [f"edit_overrides must be an object with exactly {', '.join(EDIT_OVERRIDE_SIZES)}, "
                f"got {value!r}"]
    return [f"edit_overrides.{name} must be an integer from 0 to vocab_size ({vocab_size}), got "
            f"{value[name]!r}" for name in EDIT_OVERRIDE_SIZES
            if not isinstance(value[name], int) or isinstance(value[name], bool)
            or not 0 <= value[name] <= vocab_size]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The paper's sizes (reference doc), a tiny one for tests, and the shipped default's shape.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=2, num_senses=4,
                 sense_intermediate_scale=2, bos_token_id=0, eos_token_id=0),
    "backpack-mini-256": dict(n_embd=256, n_layer=6, n_head=8, num_senses=16,
                              sense_intermediate_scale=4),
    "micro": dict(n_embd=384, n_layer=6, n_head=6, num_senses=16),
    "mini": dict(n_embd=640, n_layer=8, n_head=8, num_senses=16),
    "small": dict(n_embd=768, n_layer=12, n_head=12, num_senses=16),
}


def published_gpt2_details() -> dict[str, Any]:
    """The contextualizer details the published stanfordnlp/backpack-gpt2 was trained with."""
    return dict(activation_function="gelu_new", scale_attn_by_inverse_layer_idx=True,
                sense_mask_value=-10000.0)
