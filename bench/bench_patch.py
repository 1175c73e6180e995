"""Benchmark: the cost of patching a clean prompt into a corrupted one (interpret/patching.py)
against the naive way, one full forward pass per patched cell, measured in the same run.

    python bench/bench_patch.py [--tokens 16] [--baseline-cells 64] [--runs 3] [--threads 2]
        [--models shipped,published] [--smoke]

Models: `shipped` (data/backpack-mini, its real weights, a factual pair of 5 tokens) and
`published` (random weights at the published size: d 768, 12 layers, 12 heads, 16 senses,
vocabulary 50,264; two random prompts of --tokens tokens differing at one position).
For each, float32, batch 1, `torch.inference_mode()`:

- ours: `PatchPair` (the two instrumented runs), the sense patching (`analyse(contextualizer=
  False)`: no transformer pass), and the contextualizer grid ((n_layer + 1) x n cells, each
  blocks L.. over positions p.. only); medians of --runs.
- baseline: what a generic tool does, a full forward pass of the corrupted prompt per cell:
  with an `Intervention` patching one (sense, position) sense vector or weight (2 k n cells),
  and with a hook on block L's input (the contextualizer grid). At most --baseline-cells cells
  of each kind are run (spread over the grid) and timed; the full grid's time is the measured
  mean per cell times the number of cells (`baseline_measured` says how many were run). The
  baseline's effects are checked against ours on those cells (`max_abs_diff`).

Prints one JSON object and writes --out (default bench/results/patch.json; smoke: patch_smoke.json; tiny
random model only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backpack_core import Backpack, ModelConfig  # noqa: E402
from backpack_core.interpret.patching import PatchPair  # noqa: E402
from backpack_core.model.backpack import Intervention  # noqa: E402
from backpack_core.model.config import PRESETS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHIPPED_PAIR = ("The language of France is", "The language of Germany is", " French", " German")


class OneCell(Intervention):
    """The corrupted run with the clean sense vector or the clean last-row weight at (l, j)."""

    def __init__(self, pair: PatchPair, kind: str, l: int, j: int):
        self.pair, self.kind, self.l, self.j = pair, kind, l, j

    def on_senses(self, senses, token_ids, positions):
        if self.kind != "senses":
            return senses
        out = senses.clone()
        out[0, self.l, self.j] = self.pair.clean.senses[self.l, self.j]
        return out

    def on_contextualization(self, contextualization, *args):
        if self.kind != "weights":
            return contextualization
        out = contextualization.clone()
        out[0, self.l, -1, self.j] = self.pair.clean.row[self.l, self.j]
        return out


def spread(cells: list, limit: int) -> list:
    """At most `limit` cells, evenly spread over the list."""
    if len(cells) <= limit:
        return cells
    step = len(cells) / limit
    return [cells[int(i * step)] for i in range(limit)]


def effect(logits, result) -> float:
    diff = float(logits[result.target_id] - logits[result.foil_id])
    return (diff - result.logit_diff_corrupted) / (result.logit_diff_clean - result.logit_diff_corrupted)


def baseline(model, pair: PatchPair, result, limit: int) -> dict:
    """Full forward passes, one per cell: timed, and checked against `result`."""
    k, n, n_layer = model.config.num_senses, pair.n, model.config.n_layer
    ids = torch.tensor(pair.corrupted.token_ids)[None]
    out: dict = {"ms": {}, "measured": {}, "max_abs_diff": {}}
    sense_cells = spread([(kind, l, j) for kind in ("senses", "weights") for l in range(k)
                          for j in range(n)], limit)
    start, worst = time.perf_counter(), 0.0
    with torch.inference_mode():
        for kind, l, j in sense_cells:
            logits = model(ids, intervention=OneCell(pair, kind, l, j)).logits[0, -1]
            worst = max(worst, abs(effect(logits, result) - float(getattr(result, kind)[l, j])))
    per_cell = (time.perf_counter() - start) / len(sense_cells)
    out["ms"]["senses"] = round(per_cell * 2 * k * n * 1000, 1)
    out["measured"]["senses"] = f"{len(sense_cells)} of {2 * k * n}"
    out["max_abs_diff"]["senses"] = worst
    grid = spread([(layer, p) for layer in range(n_layer + 1) for p in range(n)], limit)
    ctx = model.contextualizer
    start, worst = time.perf_counter(), 0.0
    with torch.inference_mode():
        for layer, p in grid:
            module = ctx.h[layer] if layer < n_layer else ctx.ln_f

            def hook(_module, args, layer=layer, p=p):
                x = args[0].clone()
                x[0, p] = pair.clean.residuals[layer, p]
                return (x, *args[1:])

            handle = module.register_forward_pre_hook(hook)
            try:
                logits = model(ids).logits[0, -1]
            finally:
                handle.remove()
            worst = max(worst, abs(effect(logits, result) - float(result.layers[layer, p])))
    per_cell = (time.perf_counter() - start) / len(grid)
    out["ms"]["contextualizer"] = round(per_cell * (n_layer + 1) * n * 1000, 1)
    out["measured"]["contextualizer"] = f"{len(grid)} of {(n_layer + 1) * n}"
    out["max_abs_diff"]["contextualizer"] = worst
    return out


def ours(model, tokenizer, clean, corrupted, target, foil, runs: int):
    timings = {"runs": [], "senses": [], "contextualizer": []}
    for _ in range(runs):
        start = time.perf_counter()
        pair = PatchPair(model, tokenizer, clean, corrupted)
        timings["runs"].append(time.perf_counter() - start)
        start = time.perf_counter()
        pair.analyse(target, foil, contextualizer=False)
        timings["senses"].append(time.perf_counter() - start)
        start = time.perf_counter()
        result = pair.analyse(target, foil, contextualizer=True)
        timings["contextualizer"].append(time.perf_counter() - start - timings["senses"][-1])
    ms = {name: round(statistics.median(v) * 1000, 2) for name, v in timings.items()}
    return pair, result, ms


def bench_model(name: str, model, tokenizer, clean, corrupted, target, foil, args) -> dict:
    cfg = model.config
    pair, result, ms = ours(model, tokenizer, clean, corrupted, target, foil, args.runs)
    base = baseline(model, pair, result, args.baseline_cells)
    with torch.inference_mode():
        ids = torch.tensor(pair.corrupted.token_ids)[None]
        model(ids)  # warm
        start = time.perf_counter()
        for _ in range(args.runs):
            model(ids)
        forward_ms = (time.perf_counter() - start) / args.runs * 1000
    return {
        "model": {"d": cfg.n_embd, "layers": cfg.n_layer, "heads": cfg.n_head,
                  "senses": cfg.num_senses, "vocab": cfg.vocab_size,
                  "weights": "shipped" if name == "shipped" else "random"},
        "tokens": pair.n, "target": result.target, "foil": result.foil,
        "cells": {"senses": 2 * cfg.num_senses * pair.n, "contextualizer": (cfg.n_layer + 1) * pair.n},
        "forward_ms": round(forward_ms, 2),
        "ours_ms": ms,
        "baseline_ms": base["ms"], "baseline_measured": base["measured"],
        "max_abs_diff": base["max_abs_diff"],
        "speedup": {kind: round(base["ms"][kind] / max(ms[kind], 1e-6), 1)
                    for kind in ("senses", "contextualizer")},
    }


def random_pair(vocab: int, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n,), generator=generator).tolist()
    corrupted = list(clean)
    corrupted[n // 2] = (clean[n // 2] + 1) % vocab  # one word changed, mid-prompt
    return clean, corrupted


def two_words(model, clean: list[int], corrupted: list[int]) -> tuple[int, int]:
    """Target and foil for random prompts: the clean prompt's two most probable next tokens."""
    with torch.inference_mode():
        top = model(torch.tensor(clean)[None]).logits[0, -1].topk(2).indices.tolist()
    return top[0], top[1]


def random_model(fields: dict) -> Backpack:
    torch.manual_seed(0)
    model = Backpack(ModelConfig(**fields)).eval()
    with torch.no_grad():  # spread the logits (a random init predicts near-uniformly)
        model.wte.weight.mul_(10.0)
    return model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="prompt length of the random model")
    parser.add_argument("--baseline-cells", type=int, default=64,
                        help="full forward passes timed per kind (spread over the grid)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="shipped,published")
    parser.add_argument("--smoke", action="store_true", help="the tiny random model only (tests)")
    parser.add_argument("--out", default=None,
                        help="JSON file to write (default bench/results/patch.json; smoke: patch_smoke.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    if args.smoke:
        args.runs, args.baseline_cells = 1, 8
        model = random_model({**PRESETS["tiny"]})
        clean, corrupted = random_pair(model.config.vocab_size, 8)
        results["tiny_random"] = bench_model("tiny_random", model, None, clean, corrupted,
                                             *two_words(model, clean, corrupted), args)
    else:
        names = args.models.split(",")
        if "shipped" in names:
            from backpack_core.model.loading import load_backpack

            model, tokenizer = load_backpack()
            results["shipped"] = bench_model("shipped", model, tokenizer, *SHIPPED_PAIR, args)
            del model
        if "published" in names:
            fields = {**PRESETS["small"], "vocab_size": 50264, "n_positions": 512,
                      "bos_token_id": 0, "eos_token_id": 0}
            model = random_model(fields)
            clean, corrupted = random_pair(model.config.vocab_size, args.tokens)
            results["published"] = bench_model("published", model, None, clean, corrupted,
                                               *two_words(model, clean, corrupted), args)
    out = {"bench": "patch", "smoke": args.smoke, "threads": args.threads, "runs": args.runs,
           "torch": torch.__version__, "results": results}
    path = Path(args.out) if args.out else RESULTS / ("patch_smoke.json" if args.smoke else "patch.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
