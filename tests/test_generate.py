"""generate() through transformers, with our cache, equals decoding without it."""

import pytest
import torch

from backpack_core import Backpack, BackpackLM, ModelConfig
from backpack_core.model.config import PRESETS


def tiny_lm(**overrides):
    torch.manual_seed(0)
    config = ModelConfig(**{**PRESETS["tiny"], "n_positions": 128, **overrides})
    return BackpackLM.from_backpack(Backpack(config).eval())


def greedy_without_cache(model, ids, n):
    for _ in range(n):
        next_id = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_greedy_generate_with_cache_equals_full_recompute():
    lm = tiny_lm()
    prompt = torch.randint(1, 512, (1, 6))
    with torch.no_grad():
        generated = lm.generate(prompt, max_new_tokens=50, do_sample=False)
        reference = greedy_without_cache(lm.backpack, prompt, 50)
    assert generated.shape == (1, 56)
    assert torch.equal(generated, reference)


@pytest.mark.parametrize("padded", [False, True])
def test_twin_cached_generation_matches_full_forward_at_every_step(padded):
    """Every step's logits equal a full forward over the text so far (not just the argmax), and
    each step feeds the model one new token per row: the cache is used, no prefix re-fed."""
    lm = tiny_lm(model_kind="transformer")
    with torch.no_grad():
        lm.backpack.wte.weight.mul_(10.0)  # spread logits: a wrong position shows clearly
    prompt = torch.randint(1, 512, (1, 4))
    pad = 3 if padded else 0
    ids = torch.cat([torch.zeros(1, pad, dtype=torch.long), prompt], 1)
    mask = torch.ones_like(ids)
    mask[:, :pad] = 0
    fed = []
    hook = lm.backpack.register_forward_pre_hook(lambda m, args: fed.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            out = lm.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                              output_logits=True, return_dict_in_generate=True)
    finally:
        hook.remove()
    assert fed == [pad + 4] + [1] * 19
    text = out.sequences[:, pad:]  # (1, 24) the prompt and the generated tokens, unpadded
    with torch.no_grad():
        full = lm.backpack(text).logits[0, 3:-1]  # (20, vocab): predictions after each prefix
    torch.testing.assert_close(torch.cat(out.logits), full, atol=1e-4, rtol=0)


def test_sampling_is_seeded_and_respects_top_k():
    lm = tiny_lm()
    prompt = torch.randint(1, 512, (2, 5))
    kwargs = dict(max_new_tokens=15, do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    torch.manual_seed(123)
    a = lm.generate(prompt, **kwargs)
    torch.manual_seed(123)
    b = lm.generate(prompt, **kwargs)
    assert torch.equal(a, b)
    # with top_k=1 sampling is greedy
    torch.manual_seed(5)
    assert torch.equal(lm.generate(prompt[:1], max_new_tokens=10, do_sample=True, top_k=1),
                       lm.generate(prompt[:1], max_new_tokens=10, do_sample=False))


def test_left_padded_batch_generates_like_single_prompts():
    lm = tiny_lm()
    long, short = torch.randint(1, 512, (1, 7)), torch.randint(1, 512, (1, 4))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    with torch.no_grad():
        together = lm.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
        alone_long = lm.generate(long, max_new_tokens=12, do_sample=False)
        alone_short = lm.generate(short, max_new_tokens=12, do_sample=False)
    assert torch.equal(together[0], alone_long[0])
    assert torch.equal(together[1, 3:], alone_short[0])


@pytest.mark.parametrize("kind", ["backpack", "transformer"])
def test_beam_search_with_cache_equals_without(kind):
    """Beam search reorders the cache (`reorder_cache`), also with the twin's empty sense fields."""
    lm = tiny_lm(model_kind=kind)
    with torch.no_grad():
        lm.backpack.wte.weight.mul_(10.0)
    prompt = torch.randint(1, 512, (1, 5))
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=2, num_return_sequences=2)
    with torch.no_grad():
        cached = lm.generate(prompt, use_cache=True, **kwargs)
        uncached = lm.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
