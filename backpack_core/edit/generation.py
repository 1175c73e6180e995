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

from backpack_core.edit.specs import check_edited_logits, to_intervention

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _wrapper(model: Backpack):
    """The (cached) BackpackLM sharing `model`'s parameters."""
    lm = _WRAPPERS.get(model)
    if lm is None:
        from backpack_core.model.hf import BackpackLM

        lm = BackpackLM.from_backpack(model)
        _WRAPPERS[model] = lm
    return lm


def _seeded_sampling(temperature: float, top_k: int | None, top_p: float | None,
                     generator: torch.Generator):
    """Logits processors that sample the next token from `generator` (temperature, then top-k,
    then top-p, as transformers orders them) and leave only that token: with greedy decoding
    on top, generate() then takes it. transformers' own sampling draws from the process-wide
    RNG, which every thread shares."""
    from transformers import (
        LogitsProcessor,
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    class DrawFrom(LogitsProcessor):
        def __call__(self, input_ids, scores):  # scores (b, vocab) -> -inf but the drawn token
            probs = scores.float().softmax(-1)
            drawn = torch.multinomial(probs, num_samples=1, generator=generator)  # (b, 1)
            return torch.full_like(scores, float("-inf")).scatter_(1, drawn, 0.0)

    processors = [TemperatureLogitsWarper(temperature)]
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList([*processors, DrawFrom()])


def generate(model: Backpack, tokenizer: Tokenizer, prompt: str, edits: Any = None, *,
             max_new_tokens: int = 40, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
    """The continuation of `prompt` (text after the prompt), greedy by default.

    Sampling draws from a private `torch.Generator` seeded with `seed`: the same seed gives the
    same text, also when several threads generate at once, and a run with and a run without
    edits draw the same random numbers, so their outputs are comparable side by side. The
    global RNG is never used.
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
    # greedy decoding, explicitly, whatever the generation config holds; sampling is a logits
    # processor drawing from this call's own generator
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False,
                                  temperature=None, top_k=None, top_p=None,
                                  pad_token_id=tokenizer.eos_token_id,
                                  attention_mask=torch.ones_like(input_ids))
    if do_sample:
        generator = torch.Generator(device=device).manual_seed(seed)
        kwargs["logits_processor"] = _seeded_sampling(temperature, top_k, top_p, generator)
    if intervention is not None:  # edits that overflow: an error, never an empty generation
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(
            [lambda input_ids, scores: check_edited_logits(scores), *kwargs.get("logits_processor", [])])
    with torch.inference_mode():
        out = lm.generate(input_ids, intervention=intervention, **kwargs)
    return tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def generate_side_by_side(model: Backpack, tokenizer: Tokenizer, prompt: str, edits: Any,
                          **kwargs) -> dict[str, str]:
    """{"prompt", "before", "after"}: the same generation (same seed) without and with edits."""
    return {"prompt": prompt, "before": generate(model, tokenizer, prompt, None, **kwargs),
            "after": generate(model, tokenizer, prompt, edits, **kwargs)}
