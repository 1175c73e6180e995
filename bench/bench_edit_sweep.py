"""Benchmark: a strength sweep of an edit set over a corpus, cached vs naive full passes.

    python bench/bench_edit_sweep.py [--model DIR] [--edits E.json] [--dataset ptb | --data FILE]
        [--max-tokens 4096] [--strengths 0.2,0.4,...,2] [--repeats 3] [--threads 2] [--smoke]
        [--out bench/results/edit_sweep.json (smoke: edit_sweep_smoke.json)]

- cached: `evaluate_edits` (backpack_core.interpret.edit_effects): the model runs once per window, and
  each strength is re-evaluated from the window's cached contextualization and senses, only at
  the positions of the blast radius;
- naive: for each strength, a full forward pass over every window with the edits applied
  (`naive_losses`, the model rerun with the intervention), then the mean next-token loss.

Both give the mean loss after the edits at every strength; the bench reports the largest
difference between them (it must be float rounding) and the median wall time of each side over
--repeats interleaved runs. Default: the shipped model, its example edit set
(analyses/data/edits_last_week.json), the first 4,096 tokens of the Penn Treebank test split,
10 strengths. --smoke: a tiny random model on 300 random tokens, one repeat (a test runs it; no
timing is asserted). Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backpack_core.common.corpus import Corpus, corpus_sha256, read_corpus  # noqa: E402
from backpack_core.edit.specs import EditSet  # noqa: E402
from backpack_core.interpret.edit_effects import evaluate_edits, naive_losses, parse_strengths  # noqa: E402

DEFAULT_STRENGTHS = "0.2,0.4,0.6,0.8,1,1.2,1.4,1.6,1.8,2"


def smoke_setup():
    """A tiny random Backpack, an edit set by token id, a random corpus (no tokenizer)."""
    from backpack_core import Backpack, ModelConfig
    from backpack_core.model.config import PRESETS

    torch.manual_seed(0)
    model = Backpack(ModelConfig(**PRESETS["tiny"])).eval()
    ids = torch.randint(0, 40, (300,), generator=torch.Generator().manual_seed(0))
    edits = EditSet.from_dict({"version": 1, "edits": [
        {"kind": "knowledge_edit", "word": 7, "remove": 8, "add": 9},
        {"kind": "scale_contextualization", "word": 11, "sense": "all", "factor": 2.0}]})

    class _Ids:  # what corpus_sha256 needs of a tokenizer
        def get_vocab(self):
            return {}

    corpus = Corpus("random", ids, corpus_sha256(ids, _Ids()))
    return model, None, edits, corpus, 32


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--edits", default=str(ROOT / "analyses" / "data" / "edits_last_week.json"))
    p.add_argument("--dataset", default="ptb", help="ptb (default) or validation")
    p.add_argument("--data", default=None, help="a text file instead of --dataset")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--strengths", default=DEFAULT_STRENGTHS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--smoke", action="store_true", help="tiny random model, one repeat")
    p.add_argument("--out", default=None,
                   help="default bench/results/edit_sweep.json (smoke: edit_sweep_smoke.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    strengths = parse_strengths(args.strengths)
    if args.smoke:
        model, tokenizer, edits, corpus, seq_len = smoke_setup()
        repeats = 1
    else:
        from backpack_core.model.loading import load_backpack

        model, tokenizer = load_backpack(args.model, device="cpu", dtype="float32")
        edits = EditSet.load(args.edits)
        corpus = read_corpus(args.data or args.dataset, tokenizer, max_tokens=args.max_tokens)
        seq_len, repeats = args.seq_len, args.repeats

    def cached():
        return evaluate_edits(model, tokenizer, edits, corpus, strengths=strengths, seq_len=seq_len,
                              batch_size=args.batch_size, progress=False)

    def naive():
        return [naive_losses(model, tokenizer, edits, corpus, s, seq_len, args.batch_size)
                for s in strengths]

    cached()  # warm-up (allocator, first-call overheads) for both sides
    naive_losses(model, tokenizer, edits, corpus, 1.0, seq_len, args.batch_size)
    times: dict[str, list[float]] = {"cached": [], "naive": []}
    result = losses = None
    for r in range(repeats):  # interleaved, alternating which side goes first
        for side in (("cached", "naive") if r % 2 == 0 else ("naive", "cached")):
            start = time.perf_counter()
            if side == "cached":
                result = cached()
            else:
                losses = naive()
            times[side].append(time.perf_counter() - start)
    diffs = [abs(result.at(s).loss_after["all"] - float(nl.double().mean()))
             for s, nl in zip(strengths, losses)]
    cached_s, naive_s = statistics.median(times["cached"]), statistics.median(times["naive"])
    info = {
        "bench": "edit_sweep", "smoke": args.smoke,
        "model": "tiny (random)" if args.smoke else (args.model or "data/backpack-mini"),
        "edits": result.descriptions, "corpus": result.corpus, "strengths": strengths,
        "blast_radius": len(result.blast_radius),
        "radius_fraction": round(len(result.blast_radius) / len(corpus), 4),
        "cached_s": round(cached_s, 3), "naive_s": round(naive_s, 3),
        "speedup": round(naive_s / cached_s, 2),
        "cached_in_full_passes": round(cached_s / (naive_s / len(strengths)), 2),
        "max_abs_loss_diff": max(diffs),
        "loss_change_by_strength": {f"{s:g}": result.at(s).loss_change["all"] for s in strengths},
        "repeats": repeats, "times": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "threads": torch.get_num_threads(), "machine": "2-core CPU, shared",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(info)
    print(text)
    out = Path(args.out or ROOT / "bench" / "results"
               / ("edit_sweep_smoke.json" if args.smoke else "edit_sweep.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
