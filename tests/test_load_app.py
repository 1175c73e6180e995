"""The load test's smoke mode against the real server: 2 sessions of 3 rounds each (a fixed amount
of work, however slow the machine); the full run (20 sessions, a minute) is
`python bench/load_app.py`, figures in docs/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import HANG_S

REPO = Path(__file__).resolve().parent.parent


def test_load_app_smoke():
    # timeout: a hang guard only (a round takes well under a second on an idle machine)
    proc = subprocess.run([sys.executable, "bench/load_app.py", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_S)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    result = json.loads(lines[-1])
    loaded = result["concurrent"]
    why = json.dumps(loaded)  # the errors' messages, counts and latencies, shown on failure
    assert loaded["sessions"] == 2 and loaded["rounds"] == 2 * 3, why
    assert result["server_alive_at_end"], why
    assert loaded["errors"] == 0 and loaded["leaks"] == 0 and loaded["missing"] == 0, why
    assert loaded["latency_ms"]["p95"] > 0 and loaded["server_rss_mb"]["peak"] > 0, why
    assert loaded["generations"] >= 2 and loaded["generation_ms"]["p50"] > 0, why  # Generate clicked
