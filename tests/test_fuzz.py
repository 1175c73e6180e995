"""Fuzzers over command-line arguments and files on disk (edit specs are fuzzed in test_edits):
whatever comes in, a command exits 0 or 2 (never an internal error or a traceback), an error is
one line on stderr, and with --json stdout is one strict JSON document. Bounded: seconds."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyses import attribute, sense_topk, steer
from analyses._cli import run
from backpack_core.model.loading import CheckpointError, load_backpack
from backpack_core.training.config import ConfigError, load_run_config
from tests.conftest import strict_json

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# argument values: ordinary, empty, huge numbers, NaN, unicode, undecodable bytes (surrogates)
values = st.one_of(
    st.sampled_from(["", "bank", " bank", "0", "-1", "3", "1e999", "nan", "-0", "9" * 30, "0,1",
                     "a,b", "The bank of the river", "\udcff", "x" * 300, "{", "[]", "{}", "null",
                     "/etc", "/no/such/file", "🙂"]),
    st.text(max_size=12),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
EDITS = st.sampled_from([
    '{"version": 1, "edits": []}',
    '{"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": 0, "factor": 2}]}',
    '{"version": 1, "edits": [{"kind": "ablate_sense", "word": " river", "sense": "all"}]}'])
# (main, required options, optional options); required ones get sensible values half the time
COMMANDS = {
    "sense_topk": (sense_topk.main, {"--word": st.sampled_from(["bank", " river", "science"])},
                   ["--k", "--senses", "--exact", "--device", "--dtype"]),
    "attribute": (attribute.main, {"--text": st.just("The bank of the river has money."),
                                   "--target": st.sampled_from([" money", " river"])},
                  ["--position", "--top", "--edits", "--device", "--dtype"]),
    "steer": (steer.main, {"--text": st.just("The MacBook is made by"), "--edits": EDITS},
              ["--top", "--position", "--words", "--generate", "--seed", "--sample", "--device"]),
}


def invoke(main, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = run(main, argv, prog="fuzz")
        except SystemExit as exc:  # --help
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@FUZZ
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data(), as_json=st.booleans())
def test_fuzz_cli_arguments(tiny_model_dir, command, data, as_json):
    main, required, options = COMMANDS[command]
    argv = ["--model", str(tiny_model_dir)]
    for option, sensible in required.items():
        argv += [option, data.draw(sensible if data.draw(st.integers(0, 3)) else values)]
    for option in data.draw(st.lists(st.sampled_from(options), max_size=3)):
        argv += [option] if option in ("--exact", "--sample") else [option, data.draw(values)]
    argv += ["--json"] if as_json else []
    code, out, err = invoke(main, argv)
    assert code in (0, 2), (argv, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("fuzz: error: "), (argv, err)
    if as_json:
        document = strict_json(out)
        assert code == 0 or set(document) == {"error", "kind"}, (argv, out)


# config.json: any key of the model config (and some others) set to any JSON value
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5)
CONFIG_KEYS = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "num_senses",
               "sense_intermediate_scale", "model_kind", "activation_function",
               "scale_attn_by_inverse_layer_idx", "sense_mask_value", "embd_pdrop", "attn_pdrop",
               "resid_pdrop", "sense_pdrop", "layer_norm_epsilon", "bos_token_id", "eos_token_id",
               "model_type",
               "edit_overrides"]


@pytest.fixture(scope="module")
def scratch_model(tiny_model_dir):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        shutil.copytree(tiny_model_dir, path)
        yield path


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, min_size=1, max_size=3),
       whole=st.none() | json_values)
def test_fuzz_config_files(tiny_model_dir, scratch_model, changes, whole):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config.update(changes)
    (scratch_model / "config.json").write_text(json.dumps(config if whole is None else whole))
    try:
        load_backpack(scratch_model)
    except CheckpointError as err:
        assert "\n" not in str(err), err
    except ValueError as err:  # LimitError: sizes past memory
        assert type(err).__name__ == "LimitError" and "\n" not in str(err), err


@FUZZ
@given(cut=st.integers(0, 5000), flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)),
                                                  max_size=4))
def test_fuzz_weights_files(tiny_model_dir, scratch_model, cut, flips):
    shutil.copy(tiny_model_dir / "config.json", scratch_model / "config.json")
    data = bytearray((tiny_model_dir / "model.safetensors").read_bytes())
    for at, byte in flips:
        data[at % len(data)] = byte
    if cut:
        data = data[: len(data) - cut]
    (scratch_model / "model.safetensors").write_bytes(bytes(data))
    try:
        load_backpack(scratch_model)
    except CheckpointError as err:
        assert "\n" not in str(err), err


# the trainer's config: overrides section.key=value with any value
TRAIN_KEYS = ["train.lr", "train.batch_size", "train.max_steps", "train.schedule", "train.betas",
              "train.device", "train.on_nonfinite", "train.compile", "data.seq_len", "model.n_layer",
              "model.n_embd", "model.sense_mask_value", "nosuch.key", "train.nosuch", "train"]


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(TRAIN_KEYS), values), max_size=4))
def test_fuzz_training_overrides(overrides):
    try:
        load_run_config("tiny", [f"{k}={v}" for k, v in overrides])
    except ConfigError:
        pass
