"""Architecture hyperparameters of a Backpack LM (and of its Transformer twin).

`ModelConfig` is a plain dataclass so that the light code paths (command-line lookups) never
import transformers. `backpack_core.hf.BackpackConfig` is the transformers `PretrainedConfig`
with exactly these fields; `config.json` on disk holds them under the same names.
"""

from __future__ import annotations

import dataclasses
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
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256

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
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems:
            if self.n_embd % self.n_head:
                problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            if self.model_kind == "backpack" and self.n_embd % self.num_senses:
                problems.append(
                    f"n_embd ({self.n_embd}) must be divisible by num_senses ({self.num_senses})"
                )
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems))

    @property
    def is_backpack(self) -> bool:
        return self.model_kind == "backpack"

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict; keys this class does not know (HF bookkeeping) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


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
