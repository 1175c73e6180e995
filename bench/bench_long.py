"""Benchmark: inference forward time on long texts, Backpack (old and new mixing) vs HF GPT-2.

    python bench/bench_long.py [--lengths 64,256,1024] [--runs 7] [--threads 2] [--smoke]

At the shipped model's shape (data/backpack-mini/config.json; n_positions raised to the
longest length), random weights, batch 1, `torch.inference_mode()`. Models:

- backpack_old: the fused mixing before issue 14: SDPA with queries d/k = 8 wide and values
  d = 128, which on CPU runs the math kernel (the (b, k, s, s) weights materialised);
- backpack_flash: the first round of issue 14 (`flash_mix`: queries and keys zero-padded to
  width d, so SDPA's flash kernel runs on CPU; still what training runs);
- backpack: now (`blocked_mix`: blocks of 64 query rows, the weights of each block over the
  keys up to its end at the narrow width d/k, softmax, weighted sum; inference on CPU);
- backpack_weights: the explicit path, as inspection runs it (output_contextualization=True);
- hf_gpt2: transformers' GPT2LMHeadModel with the same n_embd, n_layer, n_head, vocab.

Interleaved (each model in turn, --runs times, after 2 warm-up calls), medians in ms; `ratio`
is each model's time over hf_gpt2's at the same length (`best_*`: the fastest calls, the least
disturbed on a shared machine). Goal: backpack <= 1.6x at 1024.

Prints one JSON object and writes bench/results/long.json (smoke: long_smoke.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backpack_core import Backpack, ModelConfig  # noqa: E402
from backpack_core.model import backpack as model_module
from bench.bench_train import old_fused_mix, shipped_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def mixing(fn):
    saved = model_module.fused_mix
    model_module.fused_mix = fn
    try:
        yield
    finally:
        model_module.fused_mix = saved


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,256,1024")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 runs (tests)")
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.smoke:
        lengths, args.runs = [16, 64], 2
    torch.set_num_threads(args.threads)
    fields = shipped_config(args.smoke)
    fields["n_positions"] = max(lengths)
    torch.manual_seed(0)
    backpack = Backpack(ModelConfig(**fields, bos_token_id=0, eos_token_id=0)).eval()
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=fields["vocab_size"], n_positions=max(lengths),
                                    n_embd=fields["n_embd"], n_layer=fields["n_layer"],
                                    n_head=fields["n_head"], bos_token_id=0, eos_token_id=0)).eval()
    calls = {
        "backpack_old": lambda ids: _with(old_fused_mix, backpack, ids),
        "backpack_flash": lambda ids: _with(model_module.flash_mix, backpack, ids),
        "backpack": lambda ids: backpack(ids).logits,
        "backpack_weights": lambda ids: backpack(ids, output_contextualization=True).logits,
        "hf_gpt2": lambda ids: hf(ids).logits,
    }
    out = {"bench": "long", "smoke": args.smoke, "threads": args.threads, "shape": fields,
           "runs": args.runs, "results": {}}
    gen = torch.Generator().manual_seed(0)
    for n in lengths:
        ids = torch.randint(0, fields["vocab_size"], (1, n), generator=gen)
        times = {name: [] for name in calls}
        with torch.inference_mode():
            same = torch.allclose(calls["backpack"](ids), calls["backpack_weights"](ids),
                                  rtol=1e-4, atol=1e-4)
            same = same and torch.allclose(calls["backpack_flash"](ids),
                                           calls["backpack_weights"](ids), rtol=1e-4, atol=1e-4)
            for call in calls.values():
                for _ in range(2):
                    call(ids)
            for _ in range(args.runs):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call(ids)
                    times[name].append((time.perf_counter() - start) * 1000)
        row = {name: round(statistics.median(t), 2) for name, t in times.items()}
        best = {name: round(min(t), 2) for name, t in times.items()}
        ratios = {f"{name}_vs_hf": round(row[name] / row["hf_gpt2"], 2) for name in calls}
        best_ratios = {f"best_{name}_vs_hf": round(best[name] / best["hf_gpt2"], 2) for name in calls}
        out["results"][str(n)] = {"ms": row, "min_ms": best, **ratios, **best_ratios,
                                  "speedup_vs_old": round(row["backpack_old"] / row["backpack"], 2),
                                  "speedup_vs_flash": round(row["backpack_flash"] / row["backpack"], 2),
                                  "fast_equals_explicit": same}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("long_smoke.json" if args.smoke else "long.json")).write_text(
        json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


def _with(fn, model, ids):
    with mixing(fn):
        return model(ids).logits


if __name__ == "__main__":
    main()
