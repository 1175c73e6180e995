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


def test_long_texts_stop_by_default_or_read_the_last_tokens_or_a_window(tiny_model_dir, tiny_model,
                                                                       tiny_tokenizer, capsys):
    """--long-text: the last n_positions tokens, or one window; the default still refuses."""
    from backpack_core.model.windows import LongTextError, text_window, window_starts

    n_ctx = tiny_model.config.n_positions
    long_text = " ".join(f"bank{i % 7} river" for i in range(n_ctx))
    ids = tiny_tokenizer.encode(long_text)
    base = ["--model", str(tiny_model_dir), "--text", long_text, "--target", " river", "--json"]
    assert run(attribute_cli.main, base, prog="attribute") == 2
    assert "--long-text last" in capsys.readouterr().err
    assert run(attribute_cli.main, [*base, "--long-text", "last"], prog="attribute") == 0
    out = capsys.readouterr()
    expected = attribute(tiny_model, tiny_tokenizer, ids[-n_ctx:], " river")
    assert strict_json(out.out)["logit"] == pytest.approx(expected.logit, abs=1e-5)
    assert f"tokens {len(ids) - n_ctx:,}..{len(ids) - 1:,} of {len(ids):,}" in out.err
    start = window_starts(len(ids), n_ctx)[1]
    assert run(attribute_cli.main, [*base, "--long-text", "window", "--window-start", str(start)]) == 0
    expected = attribute(tiny_model, tiny_tokenizer, ids[start:start + n_ctx], " river")
    assert strict_json(capsys.readouterr().out)["logit"] == pytest.approx(expected.logit, abs=1e-5)
    edits = '{"version": 1, "edits": [{"kind": "ablate_sense", "word": " river", "sense": 0}]}'
    assert run(steer_cli.main, ["--model", str(tiny_model_dir), "--text", long_text, "--edits", edits,
                                "--long-text", "last", "--json"], prog="steer") == 0
    assert strict_json(capsys.readouterr().out)["position"] == n_ctx - 1
    # the core function
    assert text_window(ids[:5], n_ctx).whole
    assert text_window(ids, n_ctx, "window", start=10**9).end == len(ids)  # clamped to the text
    assert window_starts(len(ids), n_ctx)[-1] == len(ids) - n_ctx
    with pytest.raises(LongTextError, match="reads at most"):
        text_window(ids, n_ctx)
