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
        assert {"old_ms", "fp16_ms", "new_ms", "old_extra_MB", "new_extra_MB",
                "speedup_vs_old", "speedup_vs_fp16"} <= set(row)
        assert row["agree_top20"] is True and row["directions_checked"] >= 6
    assert {"ms", "kept_MB"} <= set(out["first_query_bf16_copy"])
    assert (REPO / "bench/results/sense_search_smoke.json").is_file()


def test_bench_train_smoke():
    out = run_smoke("bench_train.py")
    assert out["bench"] == "train" and out["smoke"]
    assert set(out["results"]) == {"backpack", "backpack_old", "backpack_dedup", "twin", "hf_gpt2"}
    for row in out["results"].values():
        assert {"step_ms", "tokens_per_s", "vs_hf_gpt2", "first_loss"} <= set(row)
    # the old and new step compute the same loss
    assert out["results"]["backpack"]["first_loss"] == out["results"]["backpack_old"]["first_loss"]
    assert out["flops_ratio_backpack_vs_twin"] > 1


def test_bench_long_smoke():
    out = run_smoke("bench_long.py")
    assert out["bench"] == "long" and out["smoke"]
    for row in out["results"].values():
        assert set(row["ms"]) == {"backpack_old", "backpack_flash", "backpack", "backpack_weights",
                                  "hf_gpt2"}
        assert "speedup_vs_flash" in row
        assert row["fast_equals_explicit"] is True and "backpack_vs_hf" in row


def test_bench_steer_rerun_smoke():
    out = run_smoke("bench_steer_rerun.py")
    assert out["bench"] == "steer_rerun" and out["smoke"]
    assert set(out["cpu_s_per_rerun"]) == {"baseline", "memo"}
    assert {"speedup", "compile_ms", "goal_cpu_s"} <= set(out)


def test_bench_patch_smoke():
    out = run_smoke("bench_patch.py")
    assert out["bench"] == "patch" and out["smoke"]
    row = out["results"]["tiny_random"]
    assert set(row["ours_ms"]) == {"runs", "senses", "contextualizer"}
    assert set(row["baseline_ms"]) == set(row["speedup"]) == {"senses", "contextualizer"}
    # the full forward passes per cell agree with the patching computed without them
    assert max(row["max_abs_diff"].values()) < 1e-4
    assert (REPO / "bench/results/patch_smoke.json").is_file()
