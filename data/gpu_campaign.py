"""Train the shipped model's candidates and their twins side by side on one GPU, inside a deadline.

    python -m data.gpu_campaign --shards 32k=data/shards/corpus32k --out runs/gpu --seconds 480
    python -m data.gpu_campaign --shards 8k=DIR ... --only bp128,tw128          # an 8k BPE
    python -m data.gpu_campaign --shards 16k=DIR ... --only bp128-16k,tw128-16k # a 16k BPE
    python -m data.gpu_campaign --shards 8k=DIR ... --only bp192,tw192          # the wider 8k shape
    python -m data.gpu_campaign ... --set train.max_tokens=50e6 # an override for every run

Issue 22's campaign runs on the 2-core CPU, a few million tokens a session. When a session is lent
a GPU (the device tool's status answers can_start_another: true), its device time is short (about
15 minutes, one call of at most 10), so the GPU campaign is one command that must end, with
finished models, by a deadline. It starts every run of the plan at once (small models leave the
GPU idle between kernels; several processes fill it), each a plain `python -m backpack_core.train`
in its own run directory under --out, so every run is an ordinary run directory: resumable,
loadable, evaluated by data/evaluate_model.py like the CPU runs.

The plan (PLAN; DEFAULT_RUNS unless --only): since the fourteenth session, the shipped model on
the GPU schedule: the shipped shape (width 128, 4 layers, 16 senses) on the shipped 32k BPE
(`bp128-32k`: 5.75M parameters, 23.0 MB) with its Transformer twin on the same tokens
(`tw128-32k`). On request (--only), each in a call of its own (a call carries 64 MiB; the
repository is 35 MB, the 32k shards with their word2vec cache 30 MB): the same shape on an 8k
BPE (`bp128`, `tw128`) and on a 16k BPE (`bp128-16k`, `tw128-16k`), and a wider 8k Backpack
that still fits the 24 MB weights file (width 192, 6 layers, 6 heads: 5.9M parameters, 23.7 MB;
`bp192`) with its twin (`tw192`). All use the CPU recipe (configs/backpack-mini-cpu.toml: word2vec
embeddings; E at half the rate, E_HALF, where the CPU config now says a tenth) with a GPU
schedule: batch 64 x 256, 100M tokens (6.6 epochs of the 8k shards, 7.2 of the 16k, 7.6 of the
32k), 200 warm-up steps, bf16 autocast, torch.compile. --shards names each vocabulary's shard
directory (8k=DIR 16k=DIR 32k=DIR).

Throughput on a GPU is not known in advance, so the budgets adapt once: after --measure seconds
(or as soon as every run has logged a rate after compiling), a run whose rate would not finish
its budget before the deadline is stopped (SIGTERM: it saves a checkpoint) and resumed with the
budget it can finish (`--resume RUN train.max_tokens=N`: the cosine is recomputed from there);
a twin never gets more tokens than its Backpack, so each pair is compared at equal tokens. A run
that fails before its first step with compile on is started again without it. At the deadline,
runs still going are stopped with SIGTERM (a checkpoint each). A line per run every 30 s; at the
end a JSON summary (tokens, steps, final validation perplexity, tokens/s, wall time) on stdout
and in --out/summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backpack_core.training.config import ConfigError, RunConfig, load_run_config

WIDE = ["model.n_embd=192", "model.n_layer=6", "model.n_head=6"]
# The Backpacks keep E at half the rate on the GPU schedule: the CPU recipe's 0.1 was chosen on its
# 4M-token schedule (docs/TRAINING.md, sixteenth session); at 8k over 8M tokens a faster E ended lower.
E_HALF = ["train.embedding_lr_scale=0.5"]
GPU_SCHEDULE = ["train.batch_size=64", "train.max_tokens=100e6", "train.warmup_steps=200",
                "train.dtype=auto", "train.compile=true", "train.device=cuda", "train.eval_every=250",
                "train.eval_batches=10", "train.ckpt_every=500", "train.log_every=50"]
# name -> (config, vocabulary (its --shards entry), the Backpack a twin is matched to or None,
# overrides)
PLAN: dict[str, tuple[str, str, str | None, list[str]]] = {
    "bp128": ("backpack-mini-cpu", "8k", None, E_HALF),
    "tw128": ("transformer-mini-cpu", "8k", "bp128", []),
    "bp128-16k": ("backpack-mini-cpu", "16k", None, E_HALF),
    "tw128-16k": ("transformer-mini-cpu", "16k", "bp128-16k", []),
    "bp128-32k": ("backpack-mini-cpu", "32k", None, E_HALF),
    "tw128-32k": ("transformer-mini-cpu", "32k", "bp128-32k", []),
    "bp192": ("backpack-mini-cpu", "8k", None, [*WIDE, *E_HALF]),
    "tw192": ("transformer-mini-cpu", "8k", "bp192", WIDE),
}
DEFAULT_RUNS = ["bp128-32k", "tw128-32k"]  # the shipped vocabulary
RESTART_S = 60.0  # a resumed run's start: import, load the checkpoint, compile again (cached)
STOP_MARGIN_S = 40.0  # before the deadline: the SIGTERM, its checkpoint, the summary


@dataclass
class Run:
    name: str
    config: str
    match: str | None
    overrides: list[str]
    shards: str
    out_dir: Path
    log: Path
    budget: int = 0  # train.max_tokens of the running process
    step_tokens: int = 0  # tokens per optimizer step (batch x accumulation x sequence)
    proc: subprocess.Popen | None = None
    restarts: list[str] = field(default_factory=list)

    def records(self) -> list[dict]:
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line being written
        return out

    def train_records(self) -> list[dict]:
        return [r for r in self.records() if "tokens_per_s" in r]

    def rate(self) -> float | None:
        """Tokens/s of the last logged window, once the first window (compiling) is behind."""
        train = self.train_records()
        return float(train[-1]["tokens_per_s"]) if len(train) >= 2 else None

    def tokens(self) -> int:
        train = self.train_records()
        return int(train[-1]["tokens"]) if train else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def launch(run: Run, common: list[str], resume: bool, extra: list[str] = ()) -> None:
    """Start (or resume) one run's trainer in the background, its output appended to run.log."""
    train = [sys.executable, "-m", "backpack_core.train"]
    if resume:
        cmd = [*train, "--resume", str(run.out_dir), f"train.max_tokens={run.budget}", *extra]
    else:
        cmd = [*train, "--config", run.config, f"data.dir={run.shards}", f"train.out_dir={run.out_dir}",
               *GPU_SCHEDULE, *run.overrides, *common, f"train.max_tokens={run.budget}", *extra]
    with open(run.log, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        run.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop(run: Run, wait_s: float = 60.0) -> None:
    """SIGTERM (the trainer saves a checkpoint and exits), then SIGKILL if it does not."""
    if not run.running():
        return
    run.proc.send_signal(signal.SIGTERM)
    try:
        run.proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()


def feasible(run: Run, now: float, deadline: float) -> int:
    """The budget this run can finish by the deadline at its measured rate, after a restart."""
    rate = run.rate() or 0.0
    left = deadline - STOP_MARGIN_S - now - RESTART_S
    tokens = run.tokens() + int(0.9 * rate * max(left, 0.0))
    return max(run.step_tokens, tokens // run.step_tokens * run.step_tokens)


def smaller_budgets(live: list[Run], now: float, deadline: float) -> dict[str, int]:
    """The runs that must shrink to end by the deadline, with their new budgets: each its
    feasible budget (unmeasured runs keep theirs), a twin at most its Backpack's."""
    new = {r.name: feasible(r, now, deadline) if r.rate() else r.budget for r in live}
    for r in live:  # a twin gets no more tokens than its Backpack
        if r.match in new:
            new[r.name] = min(new[r.name], new[r.match])
    return {r.name: new[r.name] for r in live if new[r.name] < r.budget}


def plan_config(name: str, shards: str, common: list[str]) -> RunConfig:
    """The run config of one run of the plan, as its trainer will read it."""
    config, _, _, overrides = PLAN[name]
    return load_run_config(config, [f"data.dir={shards}", *GPU_SCHEDULE, *overrides, *common])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data.gpu_campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True, metavar="VOCAB=DIR",
                        help="each vocabulary's token shards (with the word2vec caches): 32k=DIR, "
                        "and 8k=DIR or 16k=DIR for those runs")
    parser.add_argument("--out", type=Path, required=True, help="where the run directories go")
    parser.add_argument("--seconds", type=float, required=True, help="deadline, from now")
    parser.add_argument("--measure", type=float, default=150.0,
                        help="seconds after which budgets are adapted to the measured rates")
    parser.add_argument("--only", default="", help=f"comma-separated run names of {list(PLAN)} "
                        f"(default: {','.join(DEFAULT_RUNS)})")
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                        help="overrides for every run (after the plan's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.only.split(",") if n] or DEFAULT_RUNS
    unknown = [n for n in names if n not in PLAN]
    if unknown:
        print(f"unknown run(s) {unknown}; the plan has {list(PLAN)}", file=sys.stderr)
        return 2
    bad = [item for item in args.shards if "=" not in item]
    if bad:
        print(f"--shards takes VOCAB=DIR items (e.g. 32k=DIR), got {bad}", file=sys.stderr)
        return 2
    shards = dict(item.split("=", 1) for item in args.shards)
    missing = [n for n in names if PLAN[n][1] not in shards]
    if missing:
        vocabs = sorted({PLAN[n][1] for n in missing})
        print(f"run(s) {missing} train on the {'/'.join(vocabs)} shards, which --shards does not "
              f"name: add {' '.join(v + '=DIR' for v in vocabs)}, or leave them out with --only",
              file=sys.stderr)
        return 2
    if args.seconds <= STOP_MARGIN_S + RESTART_S:
        print(f"--seconds {args.seconds:g} leaves no time to train: the deadline must be more than "
              f"{STOP_MARGIN_S + RESTART_S:g} s away (a run's restart and its final checkpoint); "
              "one GPU call holds 420", file=sys.stderr)
        return 2
    try:
        configs = {n: plan_config(n, shards[PLAN[n][1]], args.set) for n in names}
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    deadline = start + args.seconds
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {n: Run(n, PLAN[n][0], PLAN[n][2], PLAN[n][3], shards[PLAN[n][1]], args.out / n,
                   args.out / f"{n}.log",
                   budget=c.train.max_tokens,
                   step_tokens=c.train.batch_size * c.train.grad_accum * c.data.seq_len)
            for n, c in configs.items()}
    for run in runs.values():
        launch(run, args.set, resume=False)
    adapted, last_print = False, 0.0
    while any(r.running() for r in runs.values()):
        time.sleep(2.0)
        now = time.time()
        for run in runs.values():  # compile failed before the first step: again without it
            if (run.proc.poll() not in (None, 0) and not run.train_records()
                    and "compile" not in run.restarts):
                run.restarts.append("compile")
                print(f"{run.name}: exited {run.proc.returncode} before its first step; again with "
                      "train.compile=false", flush=True)
                launch(run, args.set, resume=False, extra=["train.compile=false", "--overwrite"])
        live = [r for r in runs.values() if r.running()]
        if not adapted and live and (now - start >= args.measure or all(r.rate() for r in live)):
            adapted = True
            new = smaller_budgets(live, now, deadline)
            for r in live:
                if r.name in new:
                    print(f"{r.name}: {r.rate():,.0f} tok/s; budget {r.budget:,} -> {new[r.name]:,} "
                          "tokens to finish by the deadline", flush=True)
                    stop(r)
                    r.budget = new[r.name]
                    r.restarts.append(f"budget {r.budget}")
                    launch(r, args.set, resume=True)
        if now >= deadline - STOP_MARGIN_S:
            for r in live:
                print(f"{r.name}: deadline; stopping at {r.tokens():,} tokens", flush=True)
                stop(r, wait_s=STOP_MARGIN_S / 2)
        if now - last_print >= 30.0:
            last_print = now
            print(f"[{now - start:5.0f}s] " + " | ".join(
                f"{r.name} {r.tokens() / 1e6:.1f}/{r.budget / 1e6:.1f}M {r.rate() or 0:,.0f} tok/s"
                + ("" if r.running() else f" (exit {r.proc.returncode})") for r in runs.values()), flush=True)
    summary = {}
    for r in runs.values():
        evals = [x for x in r.records() if "val_loss" in x]
        summary[r.name] = {"tokens": r.tokens(), "budget": r.budget, "exit": r.proc.returncode,
                           "steps": (r.train_records() or [{}])[-1].get("step"),
                           "val_ppl": math.exp(evals[-1]["val_loss"]) if evals else None,
                           "tokens_per_s": r.rate(), "restarts": r.restarts}
    summary["wall_s"] = round(time.time() - start, 1)
    text = json.dumps(summary, indent=1)
    (args.out / "summary.json").write_text(text + "\n")
    print(text)
    return 0 if all(r.proc.returncode == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
