"""Every issue-14 benchmark runs in its --smoke mode and prints valid JSON with its keys (no
timings asserted). All four in one fresh interpreter (one import of torch and transformers, not
four: issue 20.3), each through its own `main(["--smoke"])`, its printed JSON read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_S

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("bench_sense_search.py", "bench_train.py", "bench_long.py", "bench_steer_rerun.py",
           "bench_patch.py")
RUNNER = r"""
import contextlib, importlib.util, io, json, sys, traceback
results = {}
for script in sys.argv[2:]:
    out = io.StringIO()
    try:
        spec = importlib.util.spec_from_file_location(script[:-3], f"bench/{script}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with contextlib.redirect_stdout(out):
            module.main(["--smoke"])
        results[script] = {"ok": True, "stdout": out.getvalue()}
    except BaseException:
        results[script] = {"ok": False, "stdout": out.getvalue(), "error": traceback.format_exc()}
json.dump(results, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def smokes(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(out), *SCRIPTS], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def run_smoke(smokes):
    def result(script: str) -> dict:
        r = smokes[script]
        assert r["ok"], r.get("error", "")[-3000:]
        return json.loads(r["stdout"].strip().splitlines()[-1])

    return result


def test_bench_sense_search_smoke(run_smoke):
    out = run_smoke("bench_sense_search.py")
    assert out["bench"] == "sense_search" and out["smoke"]
    for mode in ("raw", "normalized"):
        row = out[mode]
        assert {"old_ms", "fp16_ms", "new_ms", "old_extra_MB", "new_extra_MB",
                "speedup_vs_old", "speedup_vs_fp16"} <= set(row)
        assert row["agree_top20"] is True and row["directions_checked"] >= 6
    assert {"ms", "kept_MB"} <= set(out["first_query_bf16_copy"])
    assert (REPO / "bench/results/sense_search_smoke.json").is_file()


def test_bench_train_smoke(run_smoke):
    out = run_smoke("bench_train.py")
    assert out["bench"] == "train" and out["smoke"]
    assert set(out["results"]) == {"backpack", "backpack_old", "backpack_dedup", "twin", "hf_gpt2"}
    for row in out["results"].values():
        assert {"step_ms", "tokens_per_s", "vs_hf_gpt2", "first_loss"} <= set(row)
    # the old and new step compute the same loss
    assert out["results"]["backpack"]["first_loss"] == out["results"]["backpack_old"]["first_loss"]
    assert out["flops_ratio_backpack_vs_twin"] > 1


def test_bench_long_smoke(run_smoke):
    out = run_smoke("bench_long.py")
    assert out["bench"] == "long" and out["smoke"]
    for row in out["results"].values():
        assert set(row["ms"]) == {"backpack_old", "backpack_flash", "backpack", "backpack_weights",
                                  "hf_gpt2"}
        assert "speedup_vs_flash" in row
        assert row["fast_equals_explicit"] is True and "backpack_vs_hf" in row


def test_bench_steer_rerun_smoke(run_smoke):
    out = run_smoke("bench_steer_rerun.py")
    assert out["bench"] == "steer_rerun" and out["smoke"]
    assert set(out["cpu_s_per_rerun"]) == {"baseline", "memo"}
    assert {"speedup", "compile_ms", "goal_cpu_s"} <= set(out)


def test_bench_patch_smoke(run_smoke):
    out = run_smoke("bench_patch.py")
    assert out["bench"] == "patch" and out["smoke"]
    row = out["results"]["tiny_random"]
    assert set(row["ours_ms"]) == {"runs", "senses", "contextualizer"}
    assert set(row["baseline_ms"]) == set(row["speedup"]) == {"senses", "contextualizer"}
    # the full forward passes per cell agree with the patching computed without them
    assert max(row["max_abs_diff"].values()) < 1e-4
    assert (REPO / "bench/results/patch_smoke.json").is_file()
