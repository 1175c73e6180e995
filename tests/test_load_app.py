"""The load test's smoke mode against the real server: 2 sessions for a few seconds (~10 s);
the full run (20 sessions, a minute) is `python bench/load_app.py`, figures in docs/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_load_app_smoke():
    proc = subprocess.run([sys.executable, "bench/load_app.py", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = result["concurrent"]
    assert proc.returncode == 0, (proc.stderr[-2000:], result)
    assert loaded["sessions"] == 2 and loaded["rounds"] >= 2 and result["server_alive_at_end"]
    assert loaded["errors"] == 0 and loaded["leaks"] == 0 and loaded["missing"] == 0, loaded
    assert loaded["latency_ms"]["p95"] > 0 and loaded["server_rss_mb"]["peak"] > 0
    assert loaded["generations"] >= 2 and loaded["generation_ms"]["p50"] > 0  # Generate clicked
