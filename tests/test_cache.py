"""The generation cache (`BackpackCache`) for both model kinds: a cached step equals the full
forward pass, left padding works, beam reordering works with the twin's empty sense fields."""

from __future__ import annotations

import pytest
import torch

from backpack_core import Backpack, ModelConfig
from backpack_core.config import PRESETS


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


@pytest.mark.parametrize("kind", KINDS)
def test_each_cached_step_equals_the_full_forward(kind):
    model = tiny(kind)
    ids = torch.randint(1, 500, (2, 12))
    with torch.no_grad():
        full = model(ids).logits  # (b, s, vocab)
        out = model(ids[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, 12):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_cached_steps_equal_the_unpadded_row(kind):
    model = tiny(kind)
    ids = torch.randint(1, 500, (1, 8))
    pad = 3
    batch = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids], 1)  # (1, pad + 8)
    mask = torch.ones_like(batch)
    mask[:, :pad] = 0
    with torch.no_grad():
        alone = model(ids).logits
        out = model(batch[:, :pad + 5], attention_mask=mask[:, :pad + 5], use_cache=True)
        steps = [out.logits[:, pad:]]
        for t in range(pad + 5, pad + 8):
            out = model(batch[:, t:t + 1], attention_mask=mask[:, :t + 1],
                        past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), alone, atol=1e-5, rtol=0)


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
