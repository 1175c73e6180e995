"""`python -m analyses.patch` on the tiny model: its JSON equals the core's result, its figures
are written, and bad input is one line on stderr with exit code 2 (in-process: fast)."""

from __future__ import annotations

import pytest

from analyses import _cli, patch
from backpack_core.interpret.patching import patch_prompts
from tests.conftest import HANG_S, strict_json

CLEAN, CORRUPTED = "The MacBook is made by", "The laptop is made by"


def run(argv):
    return _cli.run(patch.main, argv, prog="patch")


def test_json_is_the_core_result(tiny_model_dir, tiny_model, tiny_tokenizer, capsys):
    code = run(["--model", str(tiny_model_dir), "--clean", CLEAN, "--corrupted", CORRUPTED,
                "--target", " Apple", "--foil", " HP", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = strict_json(out.out)
    expected = patch_prompts(tiny_model, tiny_tokenizer, CLEAN, CORRUPTED, " Apple", " HP")
    assert data["target"] == {"token": " Apple", "token_id": expected.target_id}
    by_cell = {(r["position"], r["sense"]): r for r in data["senses"]["rows"]}
    assert by_cell[(1, 2)]["senses"] == pytest.approx(float(expected.senses[2, 1]), abs=1e-6)
    assert by_cell[(3, 0)]["weights"] == pytest.approx(float(expected.weights[0, 3]), abs=1e-6)
    layers = {(r["layer"], r["position"]): r["effect"] for r in data["contextualizer"]["rows"]}
    assert layers[(1, 4)] == pytest.approx(float(expected.layers[1, 4]), abs=1e-6)
    assert patch.layer_matrix(data)[0][1] == pytest.approx(float(expected.layers[0, 1]), abs=1e-6)


def test_text_and_figures(tiny_model_dir, tmp_path, capsys):
    for name in ("patch.png", "patch.html"):
        code = run(["--model", str(tiny_model_dir), "--clean", CLEAN, "--corrupted", CORRUPTED,
                    "--plot", str(tmp_path / name)])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "1. sense patching" in out.out and "2. contextualizer patching" in out.out
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "patch.png").read_bytes()[:4] == b"\x89PNG"
    code = run(["--model", str(tiny_model_dir), "--clean", CLEAN, "--corrupted", CORRUPTED,
                "--no-contextualizer", "--json"])
    assert code == 0 and strict_json(capsys.readouterr().out)["contextualizer"] is None


@pytest.mark.parametrize("argv, message", [
    (["--clean", CLEAN, "--corrupted", "The bank by the river is made by"],
     "clean has 5 ['The', ' MacBook', ' is', ' made', ' by'], corrupted has"),
    (["--clean", CLEAN, "--corrupted", CORRUPTED, "--plot", "out.svg"], "write a .html"),
    (["--clean", CLEAN, "--corrupted", CORRUPTED, "--target", " Apple", "--foil", " Apple"],
     "same token"),
    (["--clean", CLEAN], "--corrupted"),
])
def test_bad_input_is_one_line(tiny_model_dir, capsys, argv, message):
    code = run(["--model", str(tiny_model_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_as_a_real_command(tiny_model_dir):
    """`python -m analyses.patch` itself: --help imports no torch; a run prints strict JSON; a
    refusal is one line on stderr, exit 2, with {"error", "kind"} on stdout under --json."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    probe = ("import runpy, sys\nsys.argv = ['patch', '--help']\ntry:\n"
             "    runpy.run_module('analyses.patch', run_name='__main__')\nexcept SystemExit:\n"
             "    pass\nprint('torch imported:', 'torch' in sys.modules)")
    help_run = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True,
                              text=True, timeout=HANG_S)
    assert "--corrupted" in help_run.stdout and "torch imported: False" in help_run.stdout
    base = [sys.executable, "-m", "analyses.patch", "--model", str(tiny_model_dir), "--json",
            "--clean", CLEAN]
    good = subprocess.run(base + ["--corrupted", CORRUPTED], cwd=repo, capture_output=True,
                          text=True, timeout=HANG_S)
    assert good.returncode == 0, good.stderr
    assert strict_json(good.stdout)["corrupted"]["text"] == CORRUPTED
    bad = subprocess.run(base + ["--corrupted", "The bank"], cwd=repo, capture_output=True,
                         text=True, timeout=HANG_S)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert strict_json(bad.stdout)["kind"] == "input"
