"""transformers integration: `BackpackConfig` and `BackpackLM`.

`BackpackLM` is a `PreTrainedModel` around `backpack_core.model.backpack.Backpack`, so that
`save_pretrained`, `from_pretrained`, the Auto classes and `generate()` work as users expect.
It adds nothing to the computation. Generation keeps a `BackpackCache`: the contextualizer's
keys and values and every prefix token's sense vectors are computed once.

Importing this module costs transformers' import time (seconds); the model itself does not
need it (`backpack_core.model.backpack`).
"""

from __future__ import annotations

from dataclasses import fields, make_dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.generation.utils import ALL_CACHE_NAMES
from transformers.utils import ModelOutput

from backpack_core.model.backpack import Backpack, BackpackCache, Intervention
from backpack_core.model.config import ModelConfig


class BackpackConfig(PretrainedConfig):
    """transformers config with the fields of `ModelConfig` (see there for their meaning)."""

    model_type = "backpack"

    def __init__(self, **kwargs):
        defaults = ModelConfig()
        own = {f.name: kwargs.pop(f.name, getattr(defaults, f.name)) for f in fields(ModelConfig)}
        for name, value in own.items():
            setattr(self, name, value)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(bos_token_id=own["bos_token_id"], eos_token_id=own["eos_token_id"],
                         **kwargs)

    @property
    def num_hidden_layers(self) -> int:  # names transformers' utilities look for
        return self.n_layer

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> BackpackConfig:
        return cls(**config.to_dict())


# The name under which transformers' `generate()` passes the cache to `forward` and reads it
# back from the output: "cache" from transformers 5.24 on, "past_key_values" before. We accept
# both as arguments and return the cache under the name of the transformers that is installed.
CACHE_NAME = ALL_CACHE_NAMES[0]

# BackpackLMOutput(loss, logits, <CACHE_NAME>, contextualization, senses, hidden_states):
#   logits (b, s, vocab); contextualization (b, k, s, t); senses (b, k, t, d); hidden_states
#   (b, s, d). A dataclass like transformers' own outputs, with the cache field named as above.
BackpackLMOutput = make_dataclass(
    "BackpackLMOutput",
    [("loss", torch.Tensor | None, None),
     ("logits", torch.Tensor | None, None),
     (CACHE_NAME, BackpackCache | None, None),
     ("contextualization", torch.Tensor | None, None),
     ("senses", torch.Tensor | None, None),
     ("hidden_states", torch.Tensor | None, None)],
    bases=(ModelOutput,),
)
BackpackLMOutput.__module__ = __name__


class BackpackLM(PreTrainedModel, GenerationMixin):
    config_class = BackpackConfig
    base_model_prefix = "backpack"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: BackpackConfig):
        super().__init__(config)
        self.backpack = Backpack(config.to_model_config())  # initialised by Backpack itself
        self.post_init()

    def _init_weights(self, module):  # Backpack.__init__ already initialised everything
        pass

    def get_input_embeddings(self):
        return self.backpack.wte

    def set_input_embeddings(self, value):
        self.backpack.wte = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we keep our own BackpackCache (it also holds the sense vectors)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: BackpackCache | None = None,
        use_cache: bool | None = None,
        output_contextualization: bool = False,
        output_senses: bool = False,
        output_hidden_states: bool = False,
        intervention: Intervention | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackpackLMOutput:
        """See `Backpack.forward`. The cache may also be passed as `past_key_values` (its name
        before transformers 5.24). Extra transformers kwargs (position_ids, cache_position, ...)
        are accepted and ignored: positions are derived from the attention mask."""
        cache = _one_cache(cache, kwargs.pop("past_key_values", None))
        out = self.backpack(
            input_ids,
            attention_mask=attention_mask,
            labels=labels,
            past_key_values=cache,
            use_cache=bool(use_cache),
            output_contextualization=output_contextualization,
            output_senses=output_senses,
            output_hidden_states=output_hidden_states,
            intervention=intervention,
        )
        return BackpackLMOutput(**{"loss": out.loss, "logits": out.logits,
                                   CACHE_NAME: out.past_key_values,
                                   "contextualization": out.contextualization,
                                   "senses": out.senses, "hidden_states": out.hidden_states})

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None,
                                      use_cache=True, intervention=None, **kwargs):
        """Feed only the tokens the cache has not seen yet."""
        cache = _one_cache(cache, kwargs.pop("past_key_values", None))
        seen = cache.get_seq_length() if cache is not None else 0
        return {
            "input_ids": input_ids[:, seen:],
            CACHE_NAME: cache,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
            "intervention": intervention,
        }

    @classmethod
    def from_backpack(cls, backpack: Backpack) -> BackpackLM:
        """Wrap an existing core model (its parameters are shared, not copied)."""
        config = BackpackConfig.from_model_config(backpack.config)
        config.pad_token_id = config.eos_token_id
        with torch.device("meta"):  # build the wrapper without allocating a second model
            lm = cls(config)
        lm.backpack = backpack
        lm.generation_config.pad_token_id = config.eos_token_id
        return lm


def _one_cache(cache, past_key_values):
    """The cache passed under either name (`cache`, or `past_key_values` before 5.24)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the generation cache once, as `cache` or as `past_key_values`")
    return cache if cache is not None else past_key_values


def register_auto_classes(_transformers=None) -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM.from_pretrained(dir)` build our classes for a
    directory whose config.json says `"model_type": "backpack"` (no remote code). Idempotent.
    `import backpack_core` arranges for this to run as soon as transformers is imported."""
    AutoConfig.register("backpack", BackpackConfig, exist_ok=True)
    AutoModelForCausalLM.register(BackpackConfig, BackpackLM, exist_ok=True)


register_auto_classes()
