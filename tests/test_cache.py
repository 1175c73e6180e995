"""The generation cache (`BackpackCache`) for both model kinds: a cached step equals the full
forward pass, left padding works, beam reordering works with the twin's empty sense fields."""

from __future__ import annotations

import pytest
import torch

from backpack_core import Backpack, ModelConfig
from backpack_core.model.config import PRESETS


def tiny(kind: str) -> Backpack:
    torch.manual_seed(0)
    model = Backpack(ModelConfig(**{**PRESETS["tiny"], "n_positions": 64, "model_kind": kind}))
    with torch.no_grad():  # spread the logits so that a wrong position shows clearly
        model.wte.weight.mul_(10.0)
    return model.eval()


KINDS = ["backpack", "transformer"]


@pytest.mark.parametrize("kind", KINDS)
def test_cache_counts_the_tokens_it_has_seen(kind):
    model = tiny(kind)
    ids = torch.randint(1, 500, (2, 5))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        assert cache.get_seq_length() == 5
        cache = model(ids[:, :1], past_key_values=cache, use_cache=True).past_key_values
    assert cache.get_seq_length() == 6


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_each_cached_step_equals_the_full_forward(kind, pad):
    """A prefix, then one token per call through the cache, left-padded by `pad` tokens: the
    logits of the real tokens equal one full forward pass over the unpadded text."""
    model = tiny(kind)
    ids = torch.randint(1, 500, (2, 12))
    batch = torch.cat([torch.zeros(2, pad, dtype=torch.long), ids], 1)  # (2, pad + 12)
    mask = torch.ones_like(batch)
    mask[:, :pad] = 0
    first = pad + 4
    with torch.no_grad():
        full = model(ids).logits  # (b, s, vocab)
        out = model(batch[:, :first], attention_mask=mask[:, :first], use_cache=True)
        steps = [out.logits[:, pad:]]
        for t in range(first, pad + 12):
            out = model(batch[:, t:t + 1], attention_mask=mask[:, :t + 1],
                        past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_reorder_cache_selects_rows_and_keeps_empty_fields(kind):
    model = tiny(kind)
    ids = torch.randint(1, 500, (3, 6))
    with torch.no_grad():
        cache = model(ids[:, :5], use_cache=True).past_key_values
        cache.reorder_cache(torch.tensor([2, 2, 0]))
        step = model(ids[[2, 2, 0], 5:], past_key_values=cache, use_cache=True).logits
        full = model(ids[[2, 2, 0]]).logits[:, 5:]
    if kind == "transformer":
        assert cache.senses is None and cache.token_ids is None
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
