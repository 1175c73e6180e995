"""Text generation, optionally under an edit set, through transformers' `generate()`.

`BackpackLM.from_backpack(model)` wraps the core model without copying its parameters, and the
compiled edits travel as the `intervention` argument of every forward pass. The generation
cache stores each token's sense vectors after `on_senses`, so a sense edit is applied once per
token, when it enters the cache; contextualization edits apply at every step.

transformers is imported here lazily, only when a generation actually runs.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch

from .edits import to_intervention

if TYPE_CHECKING:  # pragma: no cover
    from .model import Backpack
    from .tokenizer import Tokenizer

_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _wrapper(model: Backpack):
    """The (cached) BackpackLM sharing `model`'s parameters."""
    lm = _WRAPPERS.get(model)
    if lm is None:
        from .hf import BackpackLM

        lm = BackpackLM.from_backpack(model)
        _WRAPPERS[model] = lm
    return lm


def generate(model: Backpack, tokenizer: Tokenizer, prompt: str, edits: Any = None, *,
             max_new_tokens: int = 40, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
    """The continuation of `prompt` (text after the prompt), greedy by default.

    With the same `seed`, a run with and a run without edits draw the same random numbers, so
    their outputs are comparable side by side. The global RNG state is left as it was.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.eos_token_id]  # generate from the start-of-text token
    n_max = model.config.n_positions
    if len(ids) + max_new_tokens > n_max:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's context of {n_max} tokens")
    intervention = to_intervention(edits, model, tokenizer)
    lm = _wrapper(model)
    device = model.wte.weight.device
    input_ids = torch.tensor([ids], device=device)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  pad_token_id=tokenizer.eos_token_id,
                                  attention_mask=torch.ones_like(input_ids))
    if do_sample:
        kwargs.update(temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
    else:  # make greedy decoding explicit whatever the generation config holds
        kwargs.update(temperature=None, top_k=None, top_p=None)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = lm.generate(input_ids, intervention=intervention, **kwargs)
    return tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def generate_side_by_side(model: Backpack, tokenizer: Tokenizer, prompt: str, edits: Any,
                          **kwargs) -> dict[str, str]:
    """{"prompt", "before", "after"}: the same generation (same seed) without and with edits."""
    return {"prompt": prompt, "before": generate(model, tokenizer, prompt, None, **kwargs),
            "after": generate(model, tokenizer, prompt, edits, **kwargs)}
