"""Benchmark: re-evaluating a text under an edit set with `ContextSession` vs a full forward pass.

    python bench/bench_session.py [--model DIR] [--seq 512] [--vocab 16384] [--runs 20]
        [--device cpu|cuda|all] [--dtype auto|float32|bfloat16] [--threads N]

Without --model it builds a Backpack of the shipped model's shape (width 256, 6 layers, 8 heads,
16 senses, sense intermediate scale 4, vocabulary --vocab) with random weights: timing does not
depend on the weights. The edit set (a knowledge edit and a contextualization scaling, by token
id) is compiled once; both sides apply it. Times are medians over --runs after warm-up, in ms:

- full_forward_ms: `model(ids, intervention=...)` over the whole --seq-token text;
- session_setup_ms: the session's one forward pass (paid once per text);
- one_position_ms: `session.logits(edits, positions=-1)` (weighted sum + output projection of
  one row);
- all_positions_ms: `session.logits(edits)` for every position (the output projection, n x d x V,
  dominates: expect about 3x, not 10x).

Prints one JSON line: {"bench": "session", "model": ..., "results": [one object per device]}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backpack_core import Backpack, ModelConfig  # noqa: E402
from backpack_core.edit.specs import EditSet, KnowledgeEdit, ScaleContextualization
from backpack_core.interpret.session import ContextSession
from backpack_core.model.backpack import count_parameters
from backpack_core.model.config import PRESETS
from backpack_core.model.loading import load_backpack, resolve_dtype


def median_ms(fn, runs: int, device: torch.device, warmup: int = 3) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def build_model(args, device: torch.device, dtype: torch.dtype) -> Backpack:
    if args.model:
        model, _ = load_backpack(args.model, device=device, dtype=dtype)
        return model
    torch.manual_seed(0)
    config = ModelConfig(**{**PRESETS["backpack-mini-256"], "vocab_size": args.vocab,
                            "n_positions": max(512, args.seq)})
    return Backpack(config).to(device=device, dtype=dtype).eval()


def bench_device(args, device: torch.device) -> dict:
    dtype = resolve_dtype(args.dtype, device)
    model = build_model(args, device, dtype)
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.seq,), generator=gen)
    w = ids.tolist()
    edits = EditSet([KnowledgeEdit(w[5], remove=w[7], add=w[9]),
                     ScaleContextualization(w[3], "all", 2.0)])
    intervention = edits.compile(model, None)
    batch = ids[None].to(device)

    with torch.inference_mode():
        full_ms = median_ms(lambda: model(batch, intervention=intervention), args.runs, device)
        setup_ms = median_ms(lambda: ContextSession(model, None, ids), max(3, args.runs // 4), device)
        session = ContextSession(model, None, ids)
        one_ms = median_ms(lambda: session.logits(intervention, positions=-1), args.runs, device)
        all_ms = median_ms(lambda: session.logits(intervention), args.runs, device)
        full = model(batch, intervention=intervention).logits[0].float()
        diff = float((session.logits(intervention).float() - full).abs().max())
    return {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "full_forward_ms": round(full_ms, 3),
        "session_setup_ms": round(setup_ms, 3),
        "one_position_ms": round(one_ms, 3),
        "all_positions_ms": round(all_ms, 3),
        "speedup_one_position": round(full_ms / one_ms, 1),
        "speedup_all_positions": round(full_ms / all_ms, 2),
        "max_abs_diff_vs_full_forward": diff,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: random weights, "
                                                 "shipped shape)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=16384, help="vocabulary of the random model")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, and cuda if present)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, or auto "
                                                      "(bf16 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    results = [bench_device(args, torch.device(d)) for d in devices]
    model = build_model(args, torch.device("cpu"), torch.float32) if not args.model else None
    info = {"bench": "session", "seq": args.seq,
            "model": args.model or {"preset": "backpack-mini-256", "vocab_size": args.vocab,
                                    "random_weights": True,
                                    "parameters": count_parameters(model)["total"]},
            "results": results}
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
