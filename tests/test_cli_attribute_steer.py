"""The command-line twins: their JSON (what other tools rely on) and their refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analyses import attribute as attribute_cli
from analyses import steer as steer_cli
from analyses._cli import run
from backpack_core.interpret.session import attribute
from tests.conftest import HANG_S, strict_json

REPO = Path(__file__).resolve().parent.parent
TEXT = "The MacBook is made by"


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=HANG_S)


def test_attribute_json_sums_to_the_logit(tiny_model_dir, tiny_model, tiny_tokenizer, capsys):
    # in process (the command's main through the one error handler); the real `python -m` entry
    # is run below, by the refusal test, and for every analysis by test_analyses
    code = run(attribute_cli.main, ["--model", str(tiny_model_dir), "--text", TEXT,
                                    "--target", " Apple", "--position", "-1", "--json"], prog="attribute")
    out = capsys.readouterr()
    assert code == 0, out.err
    data = strict_json(out.out)
    assert isinstance(data["logit"], float)
    values = [c["value"] for c in data["contributions"]]
    assert sum(values) == pytest.approx(data["logit"], abs=1e-4)
    assert set(data["contributions"][0]) >= {"position", "token", "sense", "value"}
    expected = attribute(tiny_model, tiny_tokenizer, TEXT, " Apple")
    assert data["logit"] == pytest.approx(expected.logit, abs=1e-5)
    assert [c["token"] for c in data["contributions"][:: tiny_model.config.num_senses]] == expected.tokens


def test_steer_json(tiny_model_dir, tmp_path, capsys):
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps({"version": 1, "edits": [
        {"kind": "knowledge_edit", "word": " MacBook", "remove": " Apple", "add": " HP"}]}))
    code = run(steer_cli.main, ["--model", str(tiny_model_dir), "--text", TEXT, "--edits", str(edits),
                                "--top", "7", "--words", " HP", " Apple", "--json"], prog="steer")
    out = capsys.readouterr()
    assert code == 0, out.err
    data = strict_json(out.out)
    for side in ("before", "after"):
        probs = [t["prob"] for t in data[side]]
        assert len(probs) == 7 and probs == sorted(probs, reverse=True)
        assert all(set(t) == {"token", "prob"} for t in data[side])
    assert data["kl"] > 0
    hp, apple = data["words"]
    assert hp["delta"] > 0 > apple["delta"]  # the MacBook's Apple logit moved to HP


def test_steer_refuses_a_bad_edits_file_without_traceback(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": 99, '
                   '"factor": 2}]}')
    proc = cli("analyses.steer", "--model", str(tiny_model_dir), "--text", TEXT, "--edits", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    message = proc.stderr.strip()
    assert "\n" not in message and "edit 0 (scale_sense)" in message and "out of range" in message


@pytest.mark.parametrize("argv, message", [
    (["--edits", "{not json"], "malformed JSON"),
    (["--edits", '{"version": 3, "edits": []}'], "version 3 is not supported"),
    (["--edits", '{"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": 0, '
                 '"factor": NaN}]}'], "'factor' must be a finite number"),
    (["--edits", '{"version": 1, "edits": [{"kind": "ablate_sense", "word": " Macintosh", '
                 '"sense": 0}]}'], "' Macintosh' is"),
    (["--edits", "/no/such/edits.json"], "cannot read the edits file"),
])
def test_steer_refusals_in_process(tiny_model_dir, capsys, argv, message):
    code = run(steer_cli.main, ["--model", str(tiny_model_dir), "--text", TEXT, *argv], prog="steer")
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_attribute_refusals_and_table(tiny_model_dir, capsys):
    base = ["--model", str(tiny_model_dir), "--text", TEXT]
    assert run(attribute_cli.main, [*base, "--target", "MacBook"], prog="attribute") == 2
    assert "one token is needed" in capsys.readouterr().err
    assert run(attribute_cli.main, [*base, "--target", " HP", "--position", "9"]) == 2
    assert "outside the text" in capsys.readouterr().err
    assert run(attribute_cli.main, ["--model", str(tiny_model_dir / "nope"), "--text", TEXT,
                                    "--target", " HP"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run(attribute_cli.main, [*base, "--target", " HP", "--top", "5"]) == 0
    table = capsys.readouterr().out
    assert "logit" in table and "by sense" in table and "' MacBook'" in table
    edits = '{"version": 1, "edits": [{"kind": "ablate_sense", "word": " MacBook", "sense": "all"}]}'
    assert run(attribute_cli.main, [*base, "--target", " HP", "--edits", edits, "--json"]) == 0
    data = strict_json(capsys.readouterr().out)
    assert all(c["value"] == 0.0 for c in data["contributions"] if c["token"] == " MacBook")


def test_steer_text_output(tiny_model_dir, capsys):
    edits = '{"version": 1, "edits": [{"kind": "scale_sense", "word": " MacBook", "sense": 1, "factor": 5}]}'
    code = run(steer_cli.main, ["--model", str(tiny_model_dir), "--text", TEXT, "--edits", edits,
                                "--top", "3", "--words", " HP"])
    out = capsys.readouterr().out
    assert code == 0 and "KL(before || after)" in out and "scale sense 1 of ' MacBook' by 5" in out
