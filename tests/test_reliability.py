"""Every bad input a clear one-line message (and a JSON error object with --json), bounded work
for every request, non-finite values refused. docs/RELIABILITY.md lists each case with its test."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from analyses import attribute as attribute_cli
from analyses import sense_topk
from analyses._cli import run
from backpack_core.common import cli, limits
from backpack_core.edit.specs import EditError, EditSet
from backpack_core.model.backpack import Backpack, count_parameters
from backpack_core.model.config import PRESETS, ModelConfig
from backpack_core.model.loading import CheckpointError, load_backpack, resolve_device
from backpack_core.model.vocab import WordError, resolve_word
from tests.conftest import HANG_S, strict_json


def as_read(markdown) -> str:
    """An app message's Markdown source as it reads on the page (app/views.plain escapes
    Markdown's characters and breaks autolinks with a word joiner)."""
    import re

    return re.sub(r"\\(.)", r"\1", str(markdown)).replace("\u2060", "")


def run_topk(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run(sense_topk.main, argv, prog="sense_topk")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(argv: list[str], capsys, message: str, kind: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback; with --json the same error
    as a JSON object on stdout (and nothing else there)."""
    code, out, err = run_topk(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("sense_topk: error: ") and message in err, err
    code, out, err = run_topk([*argv, "--json"], capsys)
    assert code == 2 and strict_json(out) == {"error": err.removeprefix("sense_topk: error: ").strip(),
                                              "kind": kind}


def damaged(tiny_model_dir, tmp_path, name: str):
    path = tmp_path / name
    shutil.copytree(tiny_model_dir, path)
    return path


def edit_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_damaged_weights_file(tiny_model_dir, tmp_path, capsys):
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    cases = {"truncated": weights[:1000], "empty": b"",
             "huge_header": struct.pack("<Q", 2**62) + weights[8:]}
    for name, content in cases.items():
        path = damaged(tiny_model_dir, tmp_path, name)
        (path / "model.safetensors").write_bytes(content)
        refused(["--model", str(path), "--word", "bank"], capsys,
                "is not a readable safetensors file", "checkpoint")


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "must hold a JSON object of settings, got a list"),
    ("{not json", "is not valid JSON"),
])
def test_config_that_is_not_an_object(tiny_model_dir, tmp_path, capsys, content, message):
    path = damaged(tiny_model_dir, tmp_path, "model")
    (path / "config.json").write_text(content)
    refused(["--model", str(path), "--word", "bank"], capsys, message, "checkpoint")


@pytest.mark.parametrize("changes, message", [
    ({"layer_norm_epsilon": "abc"}, "layer_norm_epsilon must be a number in (0, 1), got 'abc'"),
    ({"sense_mask_value": float("nan")}, "sense_mask_value must be a finite number or null, got nan"),
    ({"n_layer": True}, "n_layer must be a positive integer"),
    ({"resid_pdrop": 2}, "resid_pdrop must be a number in [0, 1)"),
])
def test_config_values_are_checked(tiny_model_dir, tmp_path, capsys, changes, message):
    path = damaged(tiny_model_dir, tmp_path, "model")
    edit_config(path, **changes)
    refused(["--model", str(path), "--word", "bank"], capsys, message, "checkpoint")


@pytest.mark.parametrize("changes", [{"n_layer": 10**9}, {"n_embd": 10**9, "n_head": 1, "num_senses": 1}])
def test_huge_config_is_refused_before_allocation(tiny_model_dir, tmp_path, capsys, changes):
    path = damaged(tiny_model_dir, tmp_path, "model")
    edit_config(path, **changes)
    refused(["--model", str(path), "--word", "bank"], capsys, "of memory available on cpu (the limit)",
            "limit")


def test_parameter_count_without_building_matches_the_model():
    for values in (PRESETS["tiny"], {**PRESETS["tiny"], "model_kind": "transformer"},
                   {**PRESETS["tiny"], "n_inner": 50, "sense_intermediate_scale": 3}):
        config = ModelConfig(**values)
        assert config.parameter_count() == count_parameters(Backpack(config))["total"]


def test_nan_weights_are_refused(tiny_model_dir, tmp_path, capsys):
    path = damaged(tiny_model_dir, tmp_path, "model")
    state = load_file(str(path / "model.safetensors"))
    name = sorted(state)[2]
    state[name][0] = float("nan")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    refused(["--model", str(path), "--word", "bank"], capsys,
            f"hold NaN or infinite values in 1 tensor(s): {name.removeprefix('backpack.')}", "checkpoint")


def test_garbage_or_missing_tokenizer(tiny_model_dir, tmp_path, capsys):
    path = damaged(tiny_model_dir, tmp_path, "garbage")
    (path / "tokenizer.json").write_text("{garbage")
    refused(["--model", str(path), "--word", "bank"], capsys, "tokenizer.json is not a valid tokenizer file",
            "checkpoint")
    path = damaged(tiny_model_dir, tmp_path, "missing")
    (path / "tokenizer.json").unlink()
    refused(["--model", str(path), "--word", "bank"], capsys,
            f"the tokenizer of {path} is missing: looked for {path / 'tokenizer.json'}", "checkpoint")


def test_invalid_utf8_argument(tiny_model_dir, capsys):
    bad = b"The bank \xff of".decode("utf-8", "surrogateescape")  # what Python makes of such argv
    code = run(attribute_cli.main, ["--model", str(tiny_model_dir), "--text", bad, "--target", " the",
                                    "--json"], prog="attribute")
    captured = capsys.readouterr()
    assert code == 2 and "--text is not valid UTF-8 text: byte b'\\xff' at character 9" in captured.err
    assert strict_json(captured.out)["kind"] == "usage"


@pytest.mark.skipif(torch.backends.mps.is_available() or torch.cuda.is_available(),
                    reason="needs a machine without MPS and CUDA")
def test_unavailable_device(tiny_model_dir, capsys):
    refused(["--model", str(tiny_model_dir), "--word", "bank", "--device", "mps"], capsys,
            "device 'mps' was asked for but this machine has no Apple GPU (MPS)", "input")
    for device, message in (("cuda:1", "no CUDA GPU"), ("tpu", "unknown device"),
                            ("meta", "not supported")):
        with pytest.raises(ValueError, match=message):
            resolve_device(device)


def test_usage_errors_are_json_too(capsys):
    code, out, err = run_topk(["--json"], capsys)
    assert code == 2 and strict_json(out) == {
        "error": "the following arguments are required: --word (see python -m analyses.sense_topk --help)",
        "kind": "usage"}


def test_json_output_is_strict_and_whole():
    assert cli.json_text({"a": float("nan"), "b": [float("inf"), 1.5], "c": (1, 2),
                          "d": torch.tensor(2.5), "e": torch.tensor([1.0, float("nan")])}) == \
        '{"a": null, "b": [null, 1.5], "c": [1, 2], "d": 2.5, "e": [1.0, null]}'


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch):
    def buggy(argv):
        raise KeyError("oops")

    monkeypatch.delenv("BACKPACK_DEBUG", raising=False)
    assert cli.run_main(buggy, ["--json"], prog="x") == cli.EXIT_INTERNAL
    captured = capsys.readouterr()
    assert captured.err.startswith("x: error: internal error: KeyError") and "Traceback" not in captured.err
    assert strict_json(captured.out)["kind"] == "internal"


# -- bounded work --

def test_long_word_is_refused_fast(tiny_model_dir, tiny_tokenizer, capsys):
    with pytest.raises(WordError, match=r"the word is too long: 100,000 characters; the limit is 200"):
        resolve_word(tiny_tokenizer, "a" * 100_000)
    refused(["--model", str(tiny_model_dir), "--word", "b" * 20_000], capsys,
            "the word is too long: 20,000 characters", "limit")  # read as " bbb...": the space not counted


def test_edit_set_limits(tmp_path):
    one = {"kind": "scale_sense", "word": " bank", "sense": 0, "factor": 2}
    many = {"version": 1, "edits": [one] * (limits.MAX_EDITS + 1)}
    with pytest.raises(EditError, match=r"has 1,001 edits; the limit is 1,000 edits per set"):
        EditSet.from_dict(many)
    text = json.dumps({"version": 1, "edits": [one], "description": "x" * limits.MAX_EDIT_SET_BYTES})
    with pytest.raises(EditError, match=r"the edit set is too long: [\d,]+ bytes; the limit is 1,000,000"):
        EditSet.from_json(text)
    (tmp_path / "big.json").write_text(text)
    with pytest.raises(EditError, match="the edit set is too long"):
        EditSet.load(tmp_path / "big.json")
    assert len(EditSet.from_dict({"version": 1, "edits": [one] * limits.MAX_EDITS})) == limits.MAX_EDITS


def test_limits_are_set_by_the_operator(monkeypatch):
    monkeypatch.setenv("BACKPACK_MAX_EDITS", "5")
    assert limits._limit("MAX_EDITS", 1000) == 5
    monkeypatch.setenv("BACKPACK_MAX_EDITS", "many")
    with pytest.raises(limits.LimitError, match="must be a positive integer"):
        limits._limit("MAX_EDITS", 1000)


def test_load_backpack_raises_checkpoint_errors(tiny_model_dir, tmp_path):
    """The same checks for Python callers (the app) as for the command line."""
    path = damaged(tiny_model_dir, tmp_path, "model")
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_backpack(path)


# -- the app reaches the same limits through the core --

def app_test(query: dict[str, str], page: str, monkeypatch, tiny_model_dir):
    import sys
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parent.parent / "app"
    if str(app) not in sys.path:
        sys.path.insert(0, str(app))
    monkeypatch.setenv("BACKPACK_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("BACKPACK_DEVICE", "cpu")
    at = AppTest.from_file(str(app / "Home.py"), default_timeout=HANG_S)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(f"app_pages/{page}.py")
    return at.run()


def test_app_long_word_link_is_refused(monkeypatch, tiny_model_dir):
    # under the link limit, the word limit speaks
    at = app_test({"word": "a" * 2_000}, "senses", monkeypatch, tiny_model_dir)
    assert not at.exception
    assert "the word is too long: 2,000 characters" in " ".join(as_read(e.value) for e in at.error)
    # past the link limit, the whole link is refused before any of it is read
    at = app_test({"word": "a" * 20_000}, "senses", monkeypatch, tiny_model_dir)
    assert not at.exception
    assert "the link is too long" in " ".join(as_read(e.value) for e in [*at.error, *at.warning])


def test_app_edit_set_link_is_bounded(monkeypatch, tiny_model_dir):
    at = app_test({}, "steer", monkeypatch, tiny_model_dir)  # puts app/ on sys.path
    import state  # app/state.py

    one = {"kind": "scale_sense", "word": " bank", "sense": 0, "factor": 2}
    link = state.encode_edits({"version": 1, "edits": [one] * (limits.MAX_EDITS + 1)})
    with pytest.raises(EditError, match="1,001 edits; the limit is 1,000"):
        state.decode_edits(link)
    # a link that long is refused whole by the link limit ...
    at = app_test({"edits": link, "text": "The bank"}, "steer", monkeypatch, tiny_model_dir)
    assert not at.exception and at.session_state["edit_set"]["edits"] == []
    assert "the link is too long" in " ".join(as_read(e.value) for e in [*at.error, *at.warning])
    # ... and where an operator raises that limit, the edit-count limit still holds
    monkeypatch.setattr(limits, "MAX_LINK_CHARS", 10 * len(link))
    at = app_test({"edits": link, "text": "The bank"}, "steer", monkeypatch, tiny_model_dir)
    assert not at.exception and at.session_state["edit_set"]["edits"] == []
    assert "the limit is 1,000 edits per set" in " ".join(as_read(e.value) for e in [*at.error, *at.warning])


# ----------------------------------------------------------------------------------------------
# Issue 20 item 20: bounded reading and nesting, bounded topic control, stdout errors, the word
# ----------------------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def cli_refusal(module, argv: list[str], capsys) -> str:
    """Exit 2 and one line on stderr (never "internal error"); the line."""
    code = run(module.main, argv, prog=module.__name__.rsplit(".", 1)[-1])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "internal error" not in err, err
    return err


def test_deeply_nested_json_is_malformed_json_everywhere(tiny_model_dir, tmp_path, capsys):
    """RecursionError ("internal error") from --careers, --topics-file, --edits-file, a prompts
    line and a model's config.json; nesting past MAX_JSON_DEPTH is malformed JSON everywhere."""
    from analyses import evaluate_edits, gender_bias, knowledge_edit, topic_control
    from backpack_core.common.files import parse_json

    for depth in (101, 100_000):
        with pytest.raises(json.JSONDecodeError, match="nested more than 100 levels deep"):
            parse_json("[" * depth + "]" * depth)
    assert parse_json("[" * 100 + "]" * 100) == json.loads("[" * 100 + "]" * 100)
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    model = ["--model", str(tiny_model_dir)]
    nested = "is not valid JSON: nested more than 100 levels deep"
    assert nested in cli_refusal(gender_bias, [*model, "--careers", str(deep)], capsys)
    assert nested in cli_refusal(topic_control, [*model, "--topic", "science", "--topics-file",
                                                 str(deep)], capsys)
    assert nested in cli_refusal(knowledge_edit, [*model, "--edits-file", str(deep)], capsys)
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps({"version": 1, "edits": []}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The", "target": " bank"}\n' + DEEP + "\n")
    err = cli_refusal(evaluate_edits, [*model, "--edits", str(edits), "--dataset", "ptb",
                                       "--prompts", str(prompts)], capsys)
    assert "line 2: not valid JSON (nested more than 100 levels deep" in err
    path = damaged(tiny_model_dir, tmp_path, "deep-config")
    (path / "config.json").write_text(DEEP)
    refused(["--model", str(path), "--word", "bank"], capsys,
            "config.json is not valid JSON: nested more than 100 levels deep", "checkpoint")
    with pytest.raises(EditError, match="nested"):
        EditSet.from_json(DEEP)


@pytest.mark.skipif(not Path("/dev/zero").is_char_device(), reason="needs /dev/zero")
def test_devices_are_read_no_further_than_the_limits(tiny_model_dir, tmp_path, capsys):
    """/dev/zero (size 0 to stat) as --edits, --text, --data, a prompts or data file was read
    without bound until MemoryError; now never past the limit (at most 80 MB, for a corpus)."""
    from analyses import evaluate_edits, gender_bias, perplexity, steer

    model = ["--model", str(tiny_model_dir)]
    assert "the edit set is too long: 1,000,001 bytes" in cli_refusal(
        steer, [*model, "--text", "The bank", "--edits", "/dev/zero"], capsys)
    assert "--text '/dev/zero' is too long: more than 80,000,000 bytes" in cli_refusal(
        perplexity, [*model, "--text", "/dev/zero"], capsys)
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps({"version": 1, "edits": []}))
    assert "/dev/zero has 10,000,001 bytes, more than the limit" in cli_refusal(
        evaluate_edits, [*model, "--edits", str(edits), "--dataset", "ptb", "--prompts", "/dev/zero"],
        capsys)
    assert "corpus file '/dev/zero' is too long: more than 80,000,000 bytes" in cli_refusal(
        evaluate_edits, [*model, "--edits", str(edits), "--data", "/dev/zero"], capsys)
    assert "the careers file '/dev/zero' is too long: more than 10,000,000 bytes" in cli_refusal(
        gender_bias, [*model, "--careers", "/dev/zero"], capsys)


def test_topic_control_counts_are_bounded(tiny_model, tiny_tokenizer, capsys):
    """--samples 10**9 and --top-senses 10**12 allocated until MemoryError."""
    from analyses import topic_control
    from backpack_core.experiments.topic_control import topic_control as core_topic_control

    err = cli_refusal(topic_control, ["--topic", "science", "--samples", str(10**9),
                                      "--prompts", "The"], capsys)
    assert "1,000,000,000 samples (prompts x --samples) is more than the limit of 1,000" in err
    err = cli_refusal(topic_control, ["--topic", "science", "--top-senses", str(10**12)], capsys)
    assert "1,000,000,000,000 topic senses is more than the limit of 1,000" in err
    with pytest.raises(limits.LimitError, match="topic senses"):
        core_topic_control(tiny_model, tiny_tokenizer, [" bank"], 3.0, ["The"], top_senses=10**12)


def run_to_stdout(tiny_model_dir, tmp_path, stdout, preexec_fn=None):
    """sense_topk --json in a process whose stdout is `stdout`: (exit code, stderr)."""
    import subprocess
    import sys

    from tests.test_analyses import REPO, env

    proc = subprocess.run([sys.executable, "-m", "analyses.sense_topk", "--model", str(tiny_model_dir),
                           "--word", "bank", "--json"], cwd=REPO, env=env(tmp_path), stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=HANG_S, preexec_fn=preexec_fn)
    return proc.returncode, proc.stderr


def test_output_into_a_closed_pipe_or_a_full_file_is_one_line(tiny_model_dir, tmp_path):
    """--json into a closed pipe or /dev/full printed a traceback ("Exception ignored ...")."""
    import os
    import resource
    import signal

    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command writes: its first write fails, every time
    try:
        code, err = run_to_stdout(tiny_model_dir, tmp_path, write_end)
    finally:
        os.close(write_end)
    assert code == 2 and err == "sense_topk: error: cannot write the output (stdout): the pipe was closed\n"

    def no_file_space():  # the kernel refuses every write to a regular file: EFBIG, as ENOSPC would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    with open(tmp_path / "out.json", "w") as out:
        code, err = run_to_stdout(tiny_model_dir, tmp_path, out, no_file_space)
    assert code == 2 and err == "sense_topk: error: cannot write the output (stdout): File too large\n"
    if Path("/dev/full").is_char_device():
        with open("/dev/full", "w") as out:
            code, err = run_to_stdout(tiny_model_dir, tmp_path, out)
        assert code == 2 and err == ("sense_topk: error: cannot write the output (stdout): "
                                     "No space left on device\n")


def test_a_word_of_exactly_the_limit_is_accepted(tiny_tokenizer, tiny_model_dir, capsys):
    """--word adds the space that marks a word's start: 200 characters were refused as 201."""
    assert resolve_word(tiny_tokenizer, " " + "b" * 200).query == " " + "b" * 200
    resolve_word(tiny_tokenizer, "b" * 200)
    with pytest.raises(WordError, match="201 characters; the limit is 200"):
        resolve_word(tiny_tokenizer, " " + "b" * 201)
    code, out, err = run_topk(["--model", str(tiny_model_dir), "--word", "b" * 200, "--json"], capsys)
    assert "too long" not in err and "too long" not in out, err


# ----------------------------------------------------------------------------------------------
# Issue 20 item 21: huge edit numbers are bounded, and a NaN is never shown as a result
# ----------------------------------------------------------------------------------------------

HUGE = {"kind": "scale_sense", "word": " bank", "sense": 0, "factor": 1e38}


def test_huge_edit_factors_are_refused(tiny_model_dir, tmp_path, capsys):
    """A factor of 1e38 gave NaN probabilities, a bogus "entered the top" list and an empty
    generation, without a word."""
    from analyses import steer

    with pytest.raises(EditError, match=r"'factor' is 1e\+38: numbers in an edit must be between "
                                        r"-1,000,000 and 1,000,000 \(BACKPACK_MAX_EDIT_NUMBER"):
        EditSet.from_dict({"version": 1, "edits": [HUGE]})
    for kind, field in (("replace_sense", "vector"), ("replace_contextualization", "value")):
        with pytest.raises(EditError, match="numbers in an edit must be between"):
            value = [1e39] * 32 if field == "vector" else 1e39
            EditSet.from_dict({"version": 1, "edits": [{"kind": kind, "word": " bank", "sense": 0,
                                                        field: value}]})
    assert EditSet.from_dict({"version": 1, "edits": [{**HUGE, "factor": -1e6}]})  # the bound itself
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"version": 1, "edits": [HUGE]}))
    err = cli_refusal(steer, ["--model", str(tiny_model_dir), "--text", "The bank", "--edits",
                              str(path), "--generate", "3"], capsys)
    assert "'factor' is 1e+38" in err


def test_edits_that_compound_past_float32_are_an_error_not_nan(tiny_model, tiny_tokenizer,
                                                                 tiny_model_dir, monkeypatch):
    """Eight scalings of one sense by 1e6 (each within the bound) multiply to 1e48: the CLI's,
    the core's and the dashboard's predictions and generations refuse, never show NaN."""
    from backpack_core.edit.generation import generate
    from backpack_core.interpret.session import ContextSession

    many = {"version": 1, "edits": [{**HUGE, "factor": 1e6}] * 8}
    session = ContextSession(tiny_model, tiny_tokenizer, "The bank of the river")
    assert session.compare({"version": 1, "edits": [{**HUGE, "factor": 1e6}]}).kl >= 0  # one: fine
    with pytest.raises(EditError, match="the edits make the model's numbers overflow"):
        session.compare(many)
    with pytest.raises(EditError, match="the edits make the model's numbers overflow"):
        generate(tiny_model, tiny_tokenizer, "The bank", many, max_new_tokens=3)
    at = app_test({}, "steer", monkeypatch, tiny_model_dir)  # puts app/ on sys.path
    import state  # app/state.py

    at = app_test({"edits": state.encode_edits(many), "text": "The bank"}, "steer", monkeypatch,
                  tiny_model_dir)
    assert not at.exception
    shown = " ".join(as_read(e.value) for e in [*at.error, *at.warning])
    assert "the edits make the model's numbers overflow" in shown, shown
    assert not any(bool(frame.value.isna().any().any()) for frame in at.dataframe), "NaN shown"
