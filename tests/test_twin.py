"""The Backpack beside its Transformer twin (backpack_core/interpret/twin.py): the twin found from
config.json, and the comparison checked against the two models' own forward passes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from backpack_core.interpret.twin import (
    compare_with_twin,
    js_divergence,
    load_twin,
    twin_directory,
)
from backpack_core.model.loading import load_backpack

TEXT = "The MacBook is made by Apple. The bank by the river has money."


def test_the_twin_is_found_from_config_and_loads(tiny_model_with_twin_dir, tiny_twin):
    found = twin_directory(tiny_model_with_twin_dir)
    assert found is not None and found.resolve() == (tiny_model_with_twin_dir.parent / "twin").resolve()
    twin, _ = load_twin(found)
    assert twin.config.model_kind == "transformer"
    for name, value in tiny_twin.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[name], value, rtol=0, atol=0)
    # the Backpack still loads: the loader ignores the extra key
    model, _ = load_backpack(tiny_model_with_twin_dir)
    assert model.config.is_backpack


def test_no_twin_and_a_missing_twin(tiny_model_dir, tiny_model_with_twin_dir, tmp_path):
    assert twin_directory(tiny_model_dir) is None
    config = json.loads((tiny_model_with_twin_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "twin": "../nowhere"}))
    with pytest.raises(ValueError, match="names its Transformer twin"):
        twin_directory(tmp_path)
    with pytest.raises(ValueError, match="not a Transformer twin"):
        load_twin(tiny_model_with_twin_dir)  # a Backpack


def test_comparison_against_the_forward_passes(tiny_model, tiny_twin, tiny_tokenizer):
    c = compare_with_twin(tiny_model, tiny_twin, tiny_tokenizer, TEXT, top=3)
    ids = torch.tensor(tiny_tokenizer.encode(TEXT))
    with torch.inference_mode():
        logits = tiny_model(ids[None]).logits[0]
        twin_logits = tiny_twin(ids[None]).logits[0]
    expected = F.cross_entropy(logits[:-1], ids[1:], reduction="none")
    torch.testing.assert_close(c.loss, expected)
    torch.testing.assert_close(c.twin_loss, F.cross_entropy(twin_logits[:-1], ids[1:], reduction="none"))
    assert c.predictions[4][0].token_id == int(logits[4].argmax())
    assert c.twin_predictions[4][0].token_id == int(twin_logits[4].argmax())
    # JS divergence: from its definition with M = (P + Q) / 2, bounded by ln 2
    p, q = logits.double().softmax(-1), twin_logits.double().softmax(-1)
    m = (p + q) / 2
    js = 0.5 * ((p * (p / m).log()).sum(-1) + (q * (q / m).log()).sum(-1))
    torch.testing.assert_close(c.divergence, js.float(), rtol=1e-5, atol=1e-6)
    assert float(c.divergence.max()) <= math.log(2) and float(c.divergence.min()) >= 0
    order = c.disagreements(3)
    assert order[0] == int(js.argmax()) and len(order) == 3
    assert c.divergence[order[0]] >= c.divergence[order[1]] >= c.divergence[order[2]]
    data = c.to_dict()
    assert data["mean_loss"]["backpack"] == pytest.approx(float(expected.mean()))
    assert data["positions"][-1]["loss"] is None and len(data["positions"]) == len(ids)


def test_a_model_with_itself_agrees_everywhere(tiny_twin):
    logits = torch.randn(3, 50)
    assert float(js_divergence(logits, logits).abs().max()) < 1e-12


def test_refusals(tiny_model, tiny_twin, tiny_tokenizer):
    with pytest.raises(ValueError, match="the twin is a Backpack"):
        compare_with_twin(tiny_model, tiny_model, tiny_tokenizer, TEXT)
    with pytest.raises(ValueError, match="give the Backpack first"):
        compare_with_twin(tiny_twin, tiny_twin, tiny_tokenizer, TEXT)
    with pytest.raises(ValueError, match="empty"):
        compare_with_twin(tiny_model, tiny_twin, tiny_tokenizer, "")


def test_a_twin_with_another_tokenizer_is_refused(tiny_model, tiny_twin, tiny_tokenizer):
    from backpack_core import train_bpe

    other = train_bpe(["an entirely different little corpus of words"] * 20, vocab_size=300)
    with pytest.raises(ValueError, match="tokenizer differs"):
        compare_with_twin(tiny_model, tiny_twin, tiny_tokenizer, TEXT, twin_tokenizer=other)
    compare_with_twin(tiny_model, tiny_twin, tiny_tokenizer, TEXT, twin_tokenizer=tiny_tokenizer)


def test_a_twin_trained_by_the_trainer(tmp_path):
    """The mechanism end to end on real training runs: a tiny Backpack and its tiny Transformer
    twin trained from the same shards (configs/tiny.toml, the twin with model_kind
    "transformer"), the twin's run directory recorded in the Backpack's config.json."""
    from backpack_core.model.loading import save_backpack
    from backpack_core.training.config import load_run_config
    from backpack_core.training.prepare import prepare
    from backpack_core.training.trainer import run
    from tests.test_train import write_corpus

    write_corpus(tmp_path / "docs.jsonl")
    prepare(tmp_path / "shards", [tmp_path / "docs.jsonl"], tokenizer="bpe:300",
            val_fraction=0.05, progress=False)
    runs = {}
    for kind in ("backpack", "transformer"):
        out = tmp_path / kind
        config = load_run_config("tiny", [f"data.dir={tmp_path / 'shards'}", f"train.out_dir={out}",
                                          f"model.model_kind={kind}", "train.max_steps=60",
                                          "train.eval_every=0", "train.ckpt_every=60"])
        assert run(config).exit_code == 0
        runs[kind] = out
    model, tokenizer = load_backpack(runs["backpack"])
    exported = save_backpack(model, tokenizer, tmp_path / "export",
                             extra_config={"twin": "../transformer"})  # the twin's run directory
    found = twin_directory(exported)
    assert found.resolve() == runs["transformer"].resolve()
    twin, twin_tokenizer = load_twin(found)  # a run directory: its latest checkpoint
    assert twin.config.model_kind == "transformer"
    c = compare_with_twin(model, twin, tokenizer, "the cat sees the fish. a dog likes an apple.",
                          twin_tokenizer=twin_tokenizer)
    backpack_loss, twin_loss = c.mean_loss()
    # both learned the tiny grammar: well below the loss of a uniform guess, ln(320) = 5.8
    assert backpack_loss < 4.5 and twin_loss < 4.5, (backpack_loss, twin_loss)
