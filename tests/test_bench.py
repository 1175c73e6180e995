"""Every issue-14 benchmark runs in its --smoke mode and prints valid JSON with its keys (no
timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_smoke(script: str) -> dict:
    proc = subprocess.run([sys.executable, f"bench/{script}", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_sense_search_smoke():
    out = run_smoke("bench_sense_search.py")
    assert out["bench"] == "sense_search" and out["smoke"]
    for mode in ("raw", "normalized"):
        row = out[mode]
        assert {"old_ms", "new_ms", "old_extra_MB", "new_extra_MB", "speedup"} <= set(row)
        assert row["agree_top20"] is True
    assert (REPO / "bench/results/sense_search_smoke.json").is_file()
