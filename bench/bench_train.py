"""Benchmark: training-step throughput, our Backpack and Transformer twin vs transformers' GPT-2.

    python bench/bench_train.py [--batch 16] [--seq 256] [--repeats 7] [--threads 2] [--smoke]
        [--compile]

One training step = forward + backward + AdamW step (fp32, no dropout, no compile), on a batch
of random token ids, at the shipped model's shape (read from data/backpack-mini/config.json;
since issue 22's fourteenth session: width 128, 4 layers, 4 heads, 16 senses, vocabulary 32768).
Models:

- backpack: our Backpack as it trains now (shifted-label loss, padded fused mixing);
- backpack_old: the same model with the step as it was before issue 14 (sliced, upcast logits
  for the loss; the unpadded fused mixing, which runs SDPA's math kernel on CPU);
- backpack_dedup: backpack with `dedup_senses` (exact; configs/backpack-mini-cpu.toml has it off:
  slower at the 8k shape, within the noise at 32k: docs/PERFORMANCE.md);
- twin: our Transformer twin (model_kind="transformer", GPT-2's head);
- hf_gpt2: transformers' GPT2LMHeadModel with the same n_embd, n_layer, n_head, vocab and
  n_positions (its own loss from labels).

The models take turns step by step (interleaved repeats after 2 warm-up steps each); the
median step time gives tokens/s, the fastest step `best_tokens_per_s` (on a shared machine
the least disturbed figure). Ratios are against hf_gpt2; `flops_per_token` counts each
model's training FLOPs (backpack_core.model.backpack.flops_per_token), so `flops_ratio` says how much
more work a Backpack token is than a twin token.

With --compile the models are backpack, backpack_dedup, twin and hf_gpt2, each eager and compiled
(`*_compiled`: `model.compile()`, as `train.compile` does for runs of >= 300 steps); the
warm-up steps (compiling) are excluded from the timings and reported as `compile_s` (the
first step's seconds). Writes bench/results/train_compile.json (smoke: train_compile_smoke.json).

Prints one JSON object and writes bench/results/train.json (smoke: train_smoke.json); with
--threads N other than 2, train_threadsN.json (train_compile_threadsN.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backpack_core import Backpack, ModelConfig  # noqa: E402
from backpack_core.model import backpack as model_module
from backpack_core.model.backpack import flops_per_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def shipped_config(smoke: bool) -> dict:
    raw = json.loads((ROOT / "data" / "backpack-mini" / "config.json").read_text())
    fields = {k: raw[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                  "num_senses", "sense_intermediate_scale")}
    if smoke:
        fields.update(vocab_size=512, n_embd=32, n_layer=2, n_head=2, num_senses=4)
    return fields


def old_fused_mix(queries, keys, senses):  # before issue 14: q, k d/k wide, values d
    return F.scaled_dot_product_attention(queries, keys, senses, is_causal=True).sum(1)


def old_loss(logits, labels, reduction="mean"):  # before issue 14: sliced and upcast logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=-100)


@contextlib.contextmanager
def old_step():
    saved = model_module.fused_mix, model_module.next_token_loss
    model_module.fused_mix, model_module.next_token_loss = old_fused_mix, old_loss
    try:
        yield
    finally:
        model_module.fused_mix, model_module.next_token_loss = saved


def build(name: str, fields: dict):
    if name.endswith("_compiled"):
        model, config = build(name.removesuffix("_compiled"), fields)
        model.compile()  # in place, as train.compile does
        return model, config
    torch.manual_seed(0)
    if name == "hf_gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=fields["vocab_size"], n_positions=fields["n_positions"],
                         n_embd=fields["n_embd"], n_layer=fields["n_layer"], n_head=fields["n_head"],
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(cfg).train(), None
    kind = "transformer" if name == "twin" else "backpack"
    config = ModelConfig(**fields, model_kind=kind)
    model = Backpack(config).train()  # bos/eos ids do not enter a training step
    model.dedup_senses = name == "backpack_dedup"
    return model, config


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats (tests)")
    parser.add_argument("--shards", help="take the batch from these shards' train split (real text: "
                        "~1,500 distinct tokens in 4,096, where random ids have ~3,100; what "
                        "dedup_senses saves depends on it) instead of random ids")
    parser.add_argument("--compile", action="store_true",
                        help="eager and compiled backpack, twin and hf_gpt2")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.seq, args.repeats = 2, 32, 2
    torch.set_num_threads(args.threads)
    fields = shipped_config(args.smoke)
    names = ["backpack", "backpack_old", "backpack_dedup", "twin", "hf_gpt2"]
    if args.compile:
        names = [f"{n}{c}" for c in ("", "_compiled")
                 for n in ("backpack", "backpack_dedup", "twin", "hf_gpt2")]
    models = {n: build(n, fields) for n in names}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, (m, _) in models.items()}
    ids = torch.randint(0, fields["vocab_size"], (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(0))
    if args.shards:
        from backpack_core.training.loader import ShardSet

        train = ShardSet(args.shards).train
        ids = torch.from_numpy(train[:args.batch * args.seq].astype("int64")).view(args.batch, args.seq)
        ids = ids.clamp(max=fields["vocab_size"] - 1)

    def step(name):
        model, opt = models[name][0], optimizers[name]
        with old_step() if name == "backpack_old" else contextlib.nullcontext():
            loss = model(ids, labels=ids).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    losses, first_s = {}, {}
    for n in names:  # warm-up (compiling); the first loss
        start = time.perf_counter()
        losses[n] = step(n)
        first_s[n] = time.perf_counter() - start
        step(n)
    times = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            start = time.perf_counter()
            step(n)
            times[n].append(time.perf_counter() - start)
    tokens = args.batch * args.seq
    results = {}
    for n in names:
        median, best = statistics.median(times[n]), min(times[n])
        results[n] = {"step_ms": round(median * 1000, 1), "tokens_per_s": round(tokens / median),
                      "min_step_ms": round(best * 1000, 1), "best_tokens_per_s": round(tokens / best),
                      "first_loss": round(losses[n], 4), "first_step_s": round(first_s[n], 2)}
        if n.endswith("_compiled"):
            results[n]["compile_s"] = results[n]["first_step_s"]
    hf, hf_best = results["hf_gpt2"]["tokens_per_s"], results["hf_gpt2"]["best_tokens_per_s"]
    for n in names:
        results[n]["vs_hf_gpt2"] = round(results[n]["tokens_per_s"] / hf, 3)
        results[n]["best_vs_hf_gpt2"] = round(results[n]["best_tokens_per_s"] / hf_best, 3)
        if n.endswith("_compiled"):  # compiled against compiled GPT-2, and against eager self
            hfc = results["hf_gpt2_compiled"]
            eager = results[n.removesuffix("_compiled")]
            results[n]["vs_hf_gpt2_compiled"] = round(results[n]["tokens_per_s"] / hfc["tokens_per_s"], 3)
            results[n]["best_vs_hf_gpt2_compiled"] = round(
                results[n]["best_tokens_per_s"] / hfc["best_tokens_per_s"], 3)
            results[n]["speedup_vs_eager"] = round(results[n]["tokens_per_s"] / eager["tokens_per_s"], 3)
    bp = ModelConfig(**fields)
    twin = ModelConfig(**fields, model_kind="transformer")
    out = {"bench": "train", "smoke": args.smoke, "machine": platform.processor() or platform.machine(),
           "threads": args.threads, "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
           "ids": f"shards {args.shards}" if args.shards else "random",
           "distinct_tokens": int(ids.unique().numel()),
           "compile": args.compile, "shape": fields, "results": results,
           "flops_per_token": {"backpack": flops_per_token(bp, args.seq),
                               "twin": flops_per_token(twin, args.seq)},
           "goals": {"backpack_vs_hf": 0.85, "twin_vs_hf": 1.1}}
    out["flops_ratio_backpack_vs_twin"] = round(out["flops_per_token"]["backpack"]
                                                / out["flops_per_token"]["twin"], 3)
    if "backpack_old" in results:
        for key, field in (("speedup_backpack_vs_old", "tokens_per_s"),
                           ("best_speedup_backpack_vs_old", "best_tokens_per_s")):
            out[key] = round(results["backpack"][field] / results["backpack_old"][field], 3)
    assert all(math.isfinite(v["first_loss"]) for v in results.values())
    RESULTS.mkdir(exist_ok=True)
    name = "train_compile" if args.compile else "train"
    if args.threads != 2:  # the recorded figures are for 2 threads; others get their own file
        name += f"_threads{args.threads}"
    if args.shards:
        name += "_text"
    (RESULTS / (f"{name}_smoke.json" if args.smoke else f"{name}.json")).write_text(
        json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
