"""Precision of the shipped model (data/backpack-mini) on CPU: bf16 against fp32, and cached
generation against full recomputation, in each dtype. Run as a script for the numbers:

    python tests/test_precision.py          # JSON on stdout

fp32 is the workbench's default for inspection, sessions and edits (docs/API.md, "Precision");
these tests state how far bf16 is from it, and that the cache changes nothing in fp32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "data" / "backpack-mini"
TEXT = ("The bank by the river was full of water, and the bank in the town was full of money. "
        "She said that the doctor and the nurse went to the bank to ask about the river.")
PROMPT = "The history of the river"
STEPS = 40  # the script; the tests take fewer (CPU time)
TEST_STEPS = 12


def greedy(model, ids: torch.Tensor, steps: int, cached: bool) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation of ids (1, s): (tokens, per-step logits (steps, vocab)), with the
    generation cache (one new token per forward) or by full recomputation at every step."""
    tokens, logits, cache = [], [], None
    text, new = ids, ids
    for _ in range(steps):
        if cached:
            out = model(new, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            out = model(text)
        step = out.logits[0, -1].float()
        next_id = int(step.argmax())
        tokens.append(next_id)
        logits.append(step)
        new = torch.tensor([[next_id]])
        text = torch.cat([text, new], 1)
    return tokens, torch.stack(logits)


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def measure(models: dict, tokenizer, steps: int = STEPS) -> dict:
    """bf16 against fp32, and cached against full greedy decoding (all on CPU)."""
    ids = torch.tensor([tokenizer.encode(TEXT)])
    prompt = torch.tensor([tokenizer.encode(PROMPT)])
    result: dict = {"text_tokens": ids.shape[1], "prompt_tokens": prompt.shape[1], "steps": steps}
    with torch.inference_mode():
        outs = {name: m(ids, output_contextualization=True) for name, m in models.items()}
        ref, low = outs["float32"], outs["bfloat16"]
        result["bf16_vs_fp32"] = {
            "contextualization_max_abs": float(
                (low.contextualization.float() - ref.contextualization).abs().max()),
            "logits_max_abs": float((low.logits.float() - ref.logits).abs().max()),
            "next_token_agreement": float(
                (low.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean()),
        }
        runs = {}
        for name, model in models.items():
            cached, cached_logits = greedy(model, prompt, steps, cached=True)
            full, full_logits = greedy(model, prompt, steps, cached=False)
            same_until = first_difference(cached, full)
            n = steps if same_until is None else same_until  # logits compared while texts agree
            result[f"{name}_cached_vs_full"] = {
                "first_token_difference": same_until,
                "logits_max_abs_while_equal": float(
                    (cached_logits[:n] - full_logits[:n]).abs().max()) if n else None,
            }
            runs[name] = cached
        result["bf16_vs_fp32_greedy_first_difference"] = first_difference(runs["bfloat16"],
                                                                          runs["float32"])
    return result


@pytest.fixture(scope="module")
def numbers():
    from backpack_core import load_backpack

    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip("the shipped model data/backpack-mini is not in this checkout")
    fp32, tokenizer = load_backpack(SHIPPED, device="cpu")
    bf16, _ = load_backpack(SHIPPED, device="cpu", dtype="bfloat16")
    return measure({"float32": fp32, "bfloat16": bf16}, tokenizer, TEST_STEPS)


def test_fp32_cached_generation_equals_full_recomputation(numbers):
    run = numbers["float32_cached_vs_full"]
    assert run["first_token_difference"] is None, numbers
    assert run["logits_max_abs_while_equal"] < 1e-3, numbers


def test_bf16_stays_near_fp32(numbers):
    """Stated tolerances of bf16 against fp32 on the shipped model (CPU); the numbers with
    `python <this file>`. Measured with float32 sense-weight scores: contextualization 0.121,
    logits 0.262, bf16 cached vs full 0.156. With the scores in bf16 (upcast after the einsum,
    the bug this guards against) they were 0.495, 1.27 and 0.758: each bound below fails."""
    close = numbers["bf16_vs_fp32"]
    assert close["contextualization_max_abs"] < 0.25, numbers
    assert close["logits_max_abs"] < 0.6, numbers
    assert close["next_token_agreement"] > 0.9, numbers
    assert numbers["bfloat16_cached_vs_full"]["logits_max_abs_while_equal"] < 0.4, numbers


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from backpack_core import load_backpack

    fp32, tokenizer = load_backpack(SHIPPED, device="cpu")
    bf16, _ = load_backpack(SHIPPED, device="cpu", dtype="bfloat16")
    print(json.dumps(measure({"float32": fp32, "bfloat16": bf16}, tokenizer), indent=2))
