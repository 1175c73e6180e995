"""Benchmark: start-up time of the command-line analyses, against `python -c "import torch"`.

    python bench/bench_startup.py [--runs 7] [--model DIR] [--word science]

Like hyperfine: each command runs --runs times as a fresh process (wall clock, from process
start to exit), the commands interleaved round-robin so that a busy machine slows all of them
alike; one warm-up round first (file cache). Commands:

- baseline: python -c "import torch"
- lookup:   python -m analyses.sense_topk --word science [--model DIR]
- help:     python -m analyses.NAME --help, for every analysis

Prints one JSON line: {"bench": "startup", "runs", "model", "median_s": {command: seconds},
"min_s": {...}, "lookup_minus_torch_s", "limits": {"lookup_s": 3.5, "help_s": 1.0},
"within_limits": {...}}. The limits are the issue's, for the 2-core machine with nothing else
running; on a loaded machine compare `lookup_minus_torch_s` (the reference machine's budget
over its 2.2 s torch import is 1.3 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ANALYSES = ("sense_topk", "lexsim", "topic_control", "gender_bias", "knowledge_edit", "perplexity",
            "attribute", "steer")
LOOKUP_LIMIT_S, HELP_LIMIT_S = 3.5, 1.0


def commands(model: str | None, word: str) -> dict[str, list[str]]:
    py = sys.executable
    lookup = [py, "-m", "analyses.sense_topk", "--word", word] + (["--model", model] if model else [])
    out = {"import torch": [py, "-c", "import torch"], "sense_topk --word " + word: lookup}
    for name in ANALYSES:
        if (REPO / "analyses" / f"{name}.py").is_file():
            out[f"{name} --help"] = [py, "-m", f"analyses.{name}", "--help"]
    return out


def time_once(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="timed runs per command (default 7)")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--word", default="science")
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmds = commands(args.model, args.word)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for round_ in range(args.runs + 1):  # round 0: warm-up, not counted
        for name, command in cmds.items():
            t = time_once(command, env)
            if round_:
                times[name].append(t)
    median = {name: round(statistics.median(ts), 3) for name, ts in times.items()}
    lookup = f"sense_topk --word {args.word}"
    helps = {name: t for name, t in median.items() if name.endswith("--help")}
    result = {
        "bench": "startup", "runs": args.runs, "model": args.model or "data/backpack-mini",
        "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "median_s": median, "min_s": {name: round(min(ts), 3) for name, ts in times.items()},
        "lookup_minus_torch_s": round(median[lookup] - median["import torch"], 3),
        "limits": {"lookup_s": LOOKUP_LIMIT_S, "help_s": HELP_LIMIT_S},
        "within_limits": {"lookup": median[lookup] <= LOOKUP_LIMIT_S,
                          "help": all(t < HELP_LIMIT_S for t in helps.values())},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
