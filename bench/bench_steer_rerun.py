"""Benchmark: CPU time of one rerun of the app's Steer page (streamlit AppTest, shipped model).

    python bench/bench_steer_rerun.py [--model DIR] [--reruns 10] [--threads 2] [--smoke]

A short text ("The bank by the river.") with one edit (scale senses 0 and 1 of " bank" by 3),
opened by link like a user would; then the page is rerun without changing anything (what a
click elsewhere, a download or a generation costs before its own work). CPU seconds of the
whole process per rerun (time.process_time: the script thread and torch's threads), medians:

- baseline: the views and figures recomputed on every rerun (as before issue 14:
  `state.memo` replaced by a plain call);
- memo: now (views and figures reused while text, edits and position stay the same).

Both in one run, alternating. AppTest compiles the page script again on every run; a server
compiles it once, so a shared script cache is used here (as the server does): `compile_ms`
reports what AppTest's recompilation would add. Goal: < 0.1 CPU-s per rerun.

Prints one JSON object and writes bench/results/steer_rerun.json (smoke: steer_rerun_smoke.json).
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
sys.path.insert(0, str(ROOT / "app"))
RESULTS = ROOT / "bench" / "results"
TEXT = "The bank by the river."
EDITS = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": [0, 1],
                                  "factor": 3.0}]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    parser.add_argument("--reruns", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 reruns each (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reruns = 2
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BACKPACK_DEVICE", "cpu")
    if args.model:
        os.environ["BACKPACK_MODEL"] = args.model
    import state
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import AppTest

    shared = ScriptCache()
    fresh_cache = app_test.ScriptCache
    app_test.ScriptCache = lambda: shared  # like a server: the page is compiled once
    real_memo = state.memo

    def no_memo(name, session, key, compute):
        return compute()

    def open_page():
        at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=300)
        at.query_params["text"] = TEXT
        at.query_params["edits"] = state.encode_edits(EDITS)
        at.switch_page("app_pages/steer.py")
        at.run()
        if at.exception:
            raise SystemExit(f"the Steer page failed: {[e.value for e in at.exception]}")
        return at

    apps = {"baseline": open_page(), "memo": open_page()}
    for at in apps.values():
        at.run()  # warm
    cpu = {name: [] for name in apps}
    for _ in range(args.reruns):
        for name, at in apps.items():
            state.memo = no_memo if name == "baseline" else real_memo
            start = time.process_time()
            at.run()
            cpu[name].append(time.process_time() - start)
    state.memo = real_memo
    app_test.ScriptCache = fresh_cache
    start = time.process_time()
    apps["memo"].run()  # once with AppTest's own cache: the page compiled again
    recompiled = time.process_time() - start
    result = {name: round(statistics.median(v), 4) for name, v in cpu.items()}
    out = {"bench": "steer_rerun", "smoke": args.smoke, "threads": args.threads,
           "model": args.model or "data/backpack-mini", "text": TEXT, "reruns": args.reruns,
           "cpu_s_per_rerun": result,
           "speedup": round(result["baseline"] / max(result["memo"], 1e-9), 2),
           "compile_ms": round(max(0.0, recompiled - result["memo"]) * 1000, 1), "goal_cpu_s": 0.1}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("steer_rerun_smoke.json" if args.smoke else "steer_rerun.json")).write_text(
        json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
