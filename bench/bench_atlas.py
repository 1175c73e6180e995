"""Benchmark: building the sense atlas, against the forward passes it needs, at several corpus sizes.

    python bench/bench_atlas.py [--model DIR] [--dataset ptb] [--sizes 10000,20000,40000]
        [--repeats 3] [--batch-size 8] [--threads 2] [--device cpu] [--smoke]

For each corpus size (the first N tokens of --dataset), in one process per size (so peak memory
is that size's), over the same windows:
- forward: the model's full forward with the weights returned (`model(batch,
  output_contextualization=True, output_senses=True)`): what a naive atlas would run;
- weights: only the contextualization and senses (`atlas.contextualization_and_senses`, no
  output projection): the floor for any exact atlas;
- atlas: `build_atlas` (the weights pass plus the streaming statistics and the top-N merge).
Repeats are interleaved (forward, weights, atlas, forward, ...) and medians reported, of wall
time and of the process's CPU time (on a shared machine the CPU time is the steadier number).
Peak memory: the largest resident set size above the one before the run, sampled every 5 ms
(on CUDA: torch's peak allocation). Linear scaling shows as a constant
`atlas_cpu_us_per_token` across sizes; bounded memory as an `atlas_peak_mib` that does not grow
with the size.

Prints one JSON object and writes it to bench/results/atlas.json or --out (--smoke: a tiny
run, written to bench/results/atlas_smoke.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: RSS sampled on a thread (CPU), or torch's peak
    allocation (CUDA)."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start, self.done = rss_bytes(), False
        self.peak_abs = self.start

        def sample():
            while not self.done:
                self.peak_abs = max(self.peak_abs, rss_bytes())
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.done = True
            self.thread.join()
            self.peak = max(self.peak_abs, rss_bytes()) - self.start


def one_size(args) -> dict:
    """Measure one corpus size in this process."""
    import torch

    from backpack_core.common.corpus import read_corpus
    from backpack_core.interpret.atlas import build_atlas, contextualization_and_senses
    from backpack_core.model.loading import load_backpack

    torch.set_num_threads(args.threads)
    model, tokenizer = load_backpack(args.model, device=args.device)
    device = model.wte.weight.device
    corpus = read_corpus(args.dataset, tokenizer, max_tokens=args.size)
    seq_len = model.config.n_positions

    @torch.inference_mode()
    def forward():  # the naive pass: the model's full forward, logits included
        for batch, _ in corpus.windows(seq_len, args.batch_size):
            model(batch.to(device), output_contextualization=True, output_senses=True)

    @torch.inference_mode()
    def weights():  # the floor: only the contextualization and senses the atlas reads
        for batch, _ in corpus.windows(seq_len, args.batch_size):
            contextualization_and_senses(model, batch.to(device))

    def atlas():
        build_atlas(model, tokenizer, corpus, batch_size=args.batch_size, progress=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    kinds = {"forward": forward, "weights": weights, "atlas": atlas}
    forward()  # warm-up (allocator, kernels)
    wall = {name: [] for name in kinds}
    cpu = {name: [] for name in kinds}
    peaks = dict.fromkeys(kinds, 0)
    for _ in range(args.repeats):
        for name, fn in kinds.items():
            with PeakMemory(device) as mem:
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                sync()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            peaks[name] = max(peaks[name], mem.peak)
    n = len(corpus)
    out = {"tokens": n}
    for name in kinds:
        out[f"{name}_s"] = round(statistics.median(wall[name]), 4)
        out[f"{name}_cpu_s"] = round(statistics.median(cpu[name]), 4)
        out[f"{name}_cpu_us_per_token"] = round(1e6 * statistics.median(cpu[name]) / n, 2)
        out[f"{name}_peak_mib"] = round(peaks[name] / 2**20, 1)
    out["atlas_over_forward_cpu"] = round(out["atlas_cpu_s"] / out["forward_cpu_s"], 3)
    out["atlas_over_weights_cpu"] = round(out["atlas_cpu_s"] / out["weights_cpu_s"], 3)
    out["wall_s"] = {name: [round(t, 3) for t in wall[name]] for name in kinds}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--dataset", default="ptb", help="corpus: ptb or a text file (default ptb)")
    p.add_argument("--sizes", default="10000,20000,40000", help="corpus sizes in tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="a tiny run (sizes 600,1200; 1 repeat)")
    p.add_argument("--out", default=None, help="JSON file to write (default bench/results/atlas.json)")
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # one size, in-process
    args = p.parse_args(argv)
    if args.size is not None:
        print(json.dumps(one_size(args)))
        return 0
    if args.smoke:
        args.sizes, args.repeats = "600,1200", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        cmd = [sys.executable, __file__, "--size", str(size), "--dataset", args.dataset,
               "--repeats", str(args.repeats), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{size} tokens: {results[-1]}", file=sys.stderr, flush=True)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    out = {"bench": "atlas", "model": args.model or "data/backpack-mini", "dataset": args.dataset,
           "device": args.device, "threads": args.threads, "batch_size": args.batch_size,
           "repeats": args.repeats, "load_average": load, "results": results}
    path = Path(args.out) if args.out else (
        ROOT / "bench" / "results" / ("atlas_smoke.json" if args.smoke else "atlas.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
