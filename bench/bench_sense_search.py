"""Benchmark: one sense-search query over a published-size sense bank, old path vs new.

    python bench/bench_sense_search.py [--vocab 50264] [--k 16] [--d 768] [--runs 5]
        [--threads 2] [--smoke]

The bank is random (timing does not depend on the numbers), stored as `SenseBank.build` stores
a bank of this size: float16 above 2^28 numbers (the published 170M model: 804k rows of 768).

- old: the path before issue 14: upcast the bank to float32 in chunks of 2^20 rows (more than
  the whole bank, so a full float32 copy per query) and the float32 norms of the whole bank;
- fp16: the first round of issue 14: a float16 matrix-vector product in chunks of 65k rows
  spread over --threads threads, the top max(512, 4 * top) candidates re-scored exactly in
  float32 (`Fp16Bank` below);
- new: `SenseBank.query`: the same, but the candidate pass runs on a bfloat16 copy of the bank
  (`candidate_rows`, made once on the first query and kept: as much memory as the bank) in
  chunks of 16k rows; the re-rank reads the stored float16 rows.
Since issue 20 both `fp16` and `new` re-score every row that a rigorous bound on the candidate
pass's error cannot rule out (`SenseBank.approximate_error`) instead of a fixed pool.

Each query runs a fresh direction (a sum of two random rows), old and new interleaved; times
are medians in ms, extra memory is the peak resident set above the one before the call (a
second call with a sampling thread, 1 ms, not timed), in MB. `agree_top20` says whether both
paths return the same top 20
(token, sense) pairs in the same order, and `max_score_diff` how far their scores differ; the
check is repeated (untimed) on --agree more directions, half of them sums of two rows, half
Gaussian. The first query (the bfloat16 copy, once per bank) and the first normalised query
(the norms, once per bank) are timed apart.

Prints one JSON object and writes bench/results/sense_search.json (smoke: sense_search_smoke.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backpack_core.interpret.sense_bank import SenseBank

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def measure(fn):
    """(result, seconds, peak extra resident MB) of fn(): timed alone, then run again with a
    thread sampling the resident set (the sampling would disturb the timing)."""
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    fn()
    done.set()
    thread.join()
    return result, seconds, max(0.0, max(peak[0], rss_mb()) - base)


class OldBank:
    """The query path before issue 14 (sense_bank.py at bb5050e), kept here as the baseline."""

    def __init__(self, senses):
        self.senses, self._norms = senses, None

    def norms(self):
        if self._norms is None:
            self._norms = self.senses.float().norm(dim=-1)
        return self._norms

    def query(self, direction, top=20, normalize=False):
        flat = self.senses.reshape(-1, self.senses.shape[-1])
        step = 1 << 20
        scores = torch.cat([flat[i:i + step].float() @ direction
                            for i in range(0, flat.shape[0], step)])
        scores = scores.view(self.senses.shape[0], self.senses.shape[1])
        if normalize:
            scores = scores / (self.norms() * direction.norm()).clamp_min(1e-12)
        values, index = scores.reshape(-1).topk(top)
        k = self.senses.shape[1]
        return [(i // k, i % k, v) for v, i in zip(values.tolist(), index.tolist())]


class Fp16Bank(SenseBank):
    """The candidate pass of the first round of issue 14: float16 products, 65k-row chunks."""

    _ROWS = 1 << 16

    def candidate_rows(self):
        return self.flat


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50264)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agree", type=int, default=40, help="untimed directions checked")
    parser.add_argument("--smoke", action="store_true", help="a tiny bank, 2 runs (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab, args.k, args.d, args.runs, args.agree = 2000, 4, 64, 2, 4
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    senses = torch.empty(args.vocab, args.k, args.d, dtype=torch.float16)
    for i in range(0, args.vocab, 4096):  # fill in chunks: no float32 copy of the whole bank
        chunk = torch.randn(min(4096, args.vocab - i), args.k, args.d, generator=gen)
        senses[i:i + len(chunk)] = chunk.mul_(0.05).half()
    new, fp16, old = SenseBank(senses), Fp16Bank(senses), OldBank(senses)

    def direction(gaussian=False):
        if gaussian:
            return torch.randn(args.d, generator=gen) * 0.05
        rows = torch.randint(0, args.vocab * args.k, (2,), generator=gen)
        return new.flat[rows].float().sum(0)

    out = {"bench": "sense_search", "smoke": args.smoke, "threads": args.threads,
           "bank": {"vocab": args.vocab, "k": args.k, "d": args.d, "rows": args.vocab * args.k,
                    "dtype": str(senses.dtype), "MB": round(senses.numel() * 2 / 2**20)}}
    v = direction()  # the bfloat16 copy, made on the first query: timed apart
    start, base = time.perf_counter(), rss_mb()
    new.query(v, 20)
    out["first_query_bf16_copy"] = {"ms": round((time.perf_counter() - start) * 1000, 1),
                                    "kept_MB": round(rss_mb() - base, 1)}
    for normalize in (False, True):
        first = {}
        if normalize:  # the norms, once per bank: timed apart (fp16 shares new's norms)
            v = direction()
            _, first["old_ms"], first["old_extra_MB"] = measure(lambda v=v: old.query(v, 20, True))
            _, first["new_ms"], first["new_extra_MB"] = measure(lambda v=v: new.query(v, 20, normalize=True))
            first = {k: round(x * 1000 if k.endswith("_ms") else x, 1) for k, x in first.items()}
            fp16._norms = new.norms()
        rows = {f"{name}_{what}": [] for what in ("ms", "extra_MB") for name in ("old", "fp16", "new")}
        agree, diff = True, 0.0

        def check(a, b):
            same = [(t, s) for t, s, _ in a] == [(t, s) for t, s, _ in b]
            return same, max(abs(x[2] - y[2]) for x, y in zip(a, b))

        for _ in range(args.runs):
            v = direction()
            a, t_old, m_old = measure(lambda v=v, n=normalize: old.query(v, 20, n))
            c, t_fp16, m_fp16 = measure(lambda v=v, n=normalize: fp16.query(v, 20, normalize=n))
            b, t_new, m_new = measure(lambda v=v, n=normalize: new.query(v, 20, normalize=n))
            for name, t, m in (("old", t_old, m_old), ("fp16", t_fp16, m_fp16), ("new", t_new, m_new)):
                rows[f"{name}_ms"].append(t * 1000)
                rows[f"{name}_extra_MB"].append(m)
            for got in (b, c):
                same, d = check(a, got)
                agree, diff = agree and same, max(diff, d)
        for i in range(args.agree):  # untimed: more directions, half of them Gaussian
            v = direction(gaussian=i % 2 == 1)
            same, d = check(old.query(v, 20, normalize), new.query(v, 20, normalize=normalize))
            agree, diff = agree and same, max(diff, d)
        result = {k: round(statistics.median(x), 1) for k, x in rows.items()}
        result["speedup_vs_old"] = round(result["old_ms"] / result["new_ms"], 2)
        result["speedup_vs_fp16"] = round(result["fp16_ms"] / result["new_ms"], 2)
        result["agree_top20"] = agree
        result["directions_checked"] = args.runs + args.agree
        result["max_score_diff"] = diff
        if first:
            result["first_query"] = first
        out["normalized" if normalize else "raw"] = result
    RESULTS.mkdir(exist_ok=True)
    name = "sense_search_smoke.json" if args.smoke else "sense_search.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
