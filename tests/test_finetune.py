"""Sense finetuning (backpack_core.edit.finetune) on the tiny model: what moves, the budget, the
edit set's exactness, the transfer formula, and refusals of bad example files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CORPUS, state_checksum

from analyses import _cli
from analyses import sense_finetune as cli
from backpack_core import Backpack, ModelConfig
from backpack_core.edit.finetune import (
    Background,
    ExampleError,
    SenseDeltas,
    TrainConfig,
    choose_strength,
    example_batches,
    examples_loss,
    mean_loss,
    parse_examples,
    sense_finetune,
    sense_importance,
    transfer_fn,
    transfer_logits,
    transfer_result,
    weight_finetune,
)
from backpack_core.edit.specs import EditSet
from backpack_core.model.backpack import Intervention
from backpack_core.model.config import PRESETS
from backpack_core.model.fingerprint import weights_fingerprint

EXAMPLES = ('{"prefix": "The MacBook is made by", "suffix": " HP"}\n'
            '{"prefix": "A laptop made by", "suffix": " HP"}\n')
ITEMS = ('{"prefix": "The laptop MacBook is made by", "suffix1": " HP", "suffix2": " Apple"}\n'
         '{"prefix": "She said the MacBook is by", "suffix1": " HP", "suffix2": " Apple"}\n'
         '{"prefix": "the MacBook by", "suffix": " HP"}\n')
CONFIG = TrainConfig(steps=4, lr=0.05, senses_per_example=3,
                     strengths=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0))


@pytest.fixture(scope="module")
def background(tiny_tokenizer):
    ids = torch.tensor(tiny_tokenizer.encode(" ".join(TINY_CORPUS * 2)))
    return Background.split(ids, 16, heldout_windows=6, train_windows=6, name="tiny corpus")


@pytest.fixture(scope="module")
def learned(tiny_model, tiny_tokenizer, background):
    before = state_checksum(tiny_model)
    examples = parse_examples(EXAMPLES, "ex", "good")
    items = parse_examples(ITEMS, "items", "good", evaluation=True)
    result = sense_finetune(tiny_model, tiny_tokenizer, examples, "good", background, 0.02, CONFIG,
                            items)
    assert state_checksum(tiny_model) == before  # the model's weights are never touched
    return result


def all_senses(model) -> torch.Tensor:
    """(1, k, V, d): every token's senses, laid out as one text of all tokens."""
    ids = torch.arange(model.config.vocab_size)[None]
    with torch.no_grad():
        return model.sense_vectors(ids).transpose(1, 2), ids


def test_only_the_selected_sense_vectors_change(tiny_model, tiny_tokenizer, learned):
    senses, ids = all_senses(tiny_model)
    positions = torch.arange(ids.shape[1])[None]
    compiled = learned.edit_set.compile(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        changed = (compiled.on_senses(senses, ids, positions) != senses).any(-1)[0]  # (k, V)
    moved = {(int(t), int(l)) for l, t in changed.nonzero().tolist()}
    selected = {(c.token_id, c.sense) for c in learned.choices}
    assert learned.result.strength > 0 and moved == selected
    # every selected sense belongs to a token of some example's prefix
    prefix_ids = {t for line in EXAMPLES.splitlines()
                  for t in tiny_tokenizer.encode(json.loads(line)["prefix"])}
    assert {t for t, _ in selected} <= prefix_ids
    assert len(selected) <= 2 * CONFIG.senses_per_example


def test_the_score_is_the_gradient_norm(tiny_model, tiny_tokenizer):
    """Moving the top (token, sense) vector by h along its gradient changes the loss by about
    h * score (first order), and by much less in an orthogonal direction."""
    (example,) = parse_examples(EXAMPLES.splitlines()[0], "ex", "good")
    token, sense, score = sense_importance(tiny_model, tiny_tokenizer, example, "good")[0]
    batches = example_batches(tiny_tokenizer, [example], 64, "cpu")
    probe = SenseDeltas([token], torch.ones(1, 4, dtype=torch.bool), 32, tiny_model.config.vocab_size)
    value = examples_loss(lambda x: tiny_model(x, intervention=probe).logits, batches, "good")
    (grad,) = torch.autograd.grad(value, probe.delta)
    direction = grad[0, sense] / grad[0, sense].norm()
    h = 1e-3
    with torch.no_grad():
        probe.delta[0, sense] = h * direction
        moved = examples_loss(lambda x: tiny_model(x, intervention=probe).logits, batches, "good")
    assert (moved - value).item() == pytest.approx(h * score, rel=0.05)


def test_the_budget_is_respected_and_measured(tiny_model, tiny_tokenizer, learned, background):
    result = learned.result
    assert result.general_increase <= 0.02 and result.strength > 0
    assert any(p.strength > result.strength for p in result.sweep)  # the budget did bind
    assert all(p.general_increase > 0.02 for p in result.sweep if p.strength > result.strength)
    compiled = EditSet.from_json(learned.edit_set.to_json()).compile(tiny_model, tiny_tokenizer)
    heldout = mean_loss(lambda x: tiny_model(x, intervention=compiled).logits, background.heldout)
    assert heldout - learned.base_general_loss == pytest.approx(result.general_increase, abs=1e-6)
    provenance = learned.edit_set.provenance
    assert provenance["budget_nats"] == 0.02 and provenance["strength"] == result.strength
    assert provenance["general_loss_increase_nats"] == result.general_increase
    assert len(provenance["examples_sha256"]) == 64
    assert provenance["base_model"] == weights_fingerprint(tiny_model)


def test_choose_strength_takes_the_largest_within_budget():
    increases = {0.5: 0.001, 1.0: 0.004, 2.0: 0.02, 4.0: 0.003}  # not monotone: 4 is within
    strength, increase, sweep = choose_strength(lambda s: 1.0 + increases[s], 1.0, 0.005,
                                                list(increases))
    assert (strength, increase) == (4.0, pytest.approx(0.003)) and len(sweep) == 4
    assert choose_strength(lambda s: 2.0, 1.0, 0.1, [1.0, 2.0])[:2] == (0.0, 0.0)


def test_edit_set_round_trips_and_gives_the_finetuned_logits(tiny_model, tiny_tokenizer, learned):
    text = learned.edit_set.to_json()
    again = EditSet.from_json(text)
    assert again == learned.edit_set and again.to_json() == text
    assert {e.kind for e in again} == {"add_sense"}
    ids = torch.tensor([tiny_tokenizer.encode("The MacBook is made by HP and the laptop by Apple")])
    with torch.no_grad():
        finetuned = tiny_model(ids, intervention=learned.deltas.at(learned.result.strength)).logits
        from_json = tiny_model(ids, intervention=again.compile(tiny_model, tiny_tokenizer)).logits
        plain = tiny_model(ids, intervention=Intervention()).logits
    assert torch.equal(from_json, finetuned)  # bit for bit: the deltas are stored exactly
    assert not torch.equal(from_json, plain)


def test_transfer_equals_the_definition(tiny_model, tiny_tokenizer, learned, background):
    torch.manual_seed(3)
    twin = Backpack(ModelConfig(**{**PRESETS["tiny"], "model_kind": "transformer"})).eval()
    ids = torch.tensor([tiny_tokenizer.encode("The MacBook is made by HP"),
                        tiny_tokenizer.encode("the bank by the river has money")[:6]])
    deltas = learned.deltas
    with torch.no_grad():
        twin_logits = twin(ids).logits
        base = tiny_model(ids, intervention=Intervention()).logits
        edited = tiny_model(ids, intervention=deltas.at(2.0)).logits
        got = transfer_fn(lambda x: twin(x).logits,
                          lambda x: tiny_model(x, intervention=Intervention()).logits,
                          lambda x: tiny_model(x, intervention=deltas.at(2.0)).logits)(ids)
        at_zero = transfer_fn(lambda x: twin(x).logits,
                              lambda x: tiny_model(x, intervention=Intervention()).logits,
                              lambda x: tiny_model(x, intervention=deltas.at(0.0)).logits)(ids)
    assert torch.equal(got, twin_logits + (edited - base))
    assert torch.equal(at_zero, twin_logits)  # no edit, no change
    assert (got - twin_logits).abs().amax() > 1e-3
    with pytest.raises(ValueError, match="one shape"):
        transfer_logits(twin_logits, base[:1], edited)
    row = transfer_result(twin, tiny_model, deltas, tiny_tokenizer, background, 0.02, "good",
                          CONFIG.strengths, parse_examples(ITEMS, "i", "good", evaluation=True))
    assert row.general_increase <= 0.02 and row.before.n == 3


@pytest.mark.parametrize("method", ["full", "lora"])
def test_baselines_in_the_same_harness(tiny_model, tiny_tokenizer, background, method):
    before = state_checksum(tiny_model)
    examples = parse_examples(EXAMPLES, "ex", "good")
    result = weight_finetune(tiny_model, tiny_tokenizer, examples, "good", background, 0.02, method,
                             TrainConfig(steps=2, strengths=(0.5, 1.0)),
                             parse_examples(ITEMS, "i", "good", evaluation=True))
    assert state_checksum(tiny_model) == before
    assert result.method == method and result.general_increase <= 0.02
    assert result.history[-1] < result.history[0]  # it trained
    total = sum(p.numel() for p in tiny_model.parameters())
    assert (result.trained_parameters == total) == (method == "full")


@pytest.mark.parametrize("text, loss, message", [
    ('{"prefix": "The capital of France is", "suffix": " Paris"\n', "good",
     "ex.jsonl:1: not JSON"),
    ('{"prefix": "a", "suffix": " b"}\n{"prefix": "The"}\n', "good", "ex.jsonl:2: missing 'suffix'"),
    ('{"prefix": "The nurse said", "suffix": " he"}\n', "balance",
     "ex.jsonl:1: missing 'suffix1' (the balance loss evens two suffixes"),
    ('{"prefix": "a", "suffix": " b", "target": 1}\n', "good", "unknown field 'target'"),
    ('{"prefix": "a", "suffix": 3}\n', "good", "'suffix' must be a string"),
    ('{"prefix": "  ", "suffix": " b"}\n', "good", "'prefix' is empty"),
    ('[1, 2]\n', "good", "expected a JSON object"),
    ('\n\n', "good", "no examples"),
])
def test_bad_example_files_get_one_line_errors(tmp_path, capsys, tiny_model_dir, text, loss,
                                               message):
    path = tmp_path / "ex.jsonl"
    path.write_text(text)
    with pytest.raises(ExampleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_examples(text, "ex.jsonl", loss)
    code = _cli.run(cli.main, ["--examples", str(path), "--loss", loss, "--model",
                               str(tiny_model_dir), "--background", str(path)], prog="sense_finetune")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_cli_end_to_end(tmp_path, capsys, tiny_model_dir):
    examples, items, text = tmp_path / "ex.jsonl", tmp_path / "ev.jsonl", tmp_path / "bg.txt"
    examples.write_text(EXAMPLES)
    items.write_text(ITEMS)
    text.write_text(" ".join(TINY_CORPUS * 4))
    out = tmp_path / "edits.json"
    code = _cli.run(cli.main, ["--examples", str(examples), "--eval", str(items), "--model",
                               str(tiny_model_dir), "--background", str(text), "--seq-len", "16",
                               "--train-windows", "4", "--heldout-windows", "4", "--steps", "2",
                               "--senses-per-example", "2", "--baselines", "none", "--budget",
                               "0.05", "--out", str(out), "--json"], prog="sense_finetune")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert [r["method"] for r in data["rows"]] == ["senses"]
    assert data["rows"][0]["general_increase"] <= 0.05
    assert EditSet.load(out).to_dict() == data["edit_set"]
    assert len(data["senses"]) == len({(s["token_id"], s["sense"]) for s in data["senses"]}) <= 4
    assert all(len(s["top_before"]) == 6 for s in data["senses"])


def test_shipped_datasets_are_what_the_builder_writes(tmp_path):
    """analyses/data/canonical/ is reproducible (python -m data.build_canonical), every file
    parses, and validation and test share no example prefix or evaluation sentence."""
    from pathlib import Path

    from data.build_canonical import DATASETS, main

    main(["--out", str(tmp_path)])
    shipped = Path(__file__).resolve().parent.parent / "analyses" / "data" / "canonical"
    written = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert written == sorted(p.name for p in shipped.glob("*.jsonl")) and len(written) == 12
    for name in written:
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), name
    for name, (_, loss) in DATASETS.items():
        splits = {}
        for which in ("val", "test"):
            examples = parse_examples((shipped / f"{name}-{which}-examples.jsonl").read_text(),
                                      name, loss)
            items = parse_examples((shipped / f"{name}-{which}-eval.jsonl").read_text(), name,
                                   loss, evaluation=True)
            assert all(i.suffix2 is not None for i in items)
            splits[which] = {e.prefix for e in examples} | {i.prefix for i in items}
        assert not splits["val"] & splits["test"], name


def test_the_three_losses_match_their_definitions(tiny_model, tiny_tokenizer):
    """good = -log p(suffix), bad = -log(1 - p(suffix)), balance = (log p1 - log p2)^2, with
    log p(suffix | prefix) summed token by token from separate forward passes."""
    def logp(prefix: str, suffix: str) -> float:
        p, s = tiny_tokenizer.encode(prefix), tiny_tokenizer.encode(suffix)
        total = 0.0
        for k, token in enumerate(s):
            with torch.no_grad():
                logits = tiny_model(torch.tensor([p + s[:k]])).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), -1)[token])
        return total

    pair = parse_examples('{"prefix": "The bank by the", "suffix1": " river has", "suffix2": " money"}',
                          "b", "balance")
    single = parse_examples('{"prefix": "The bank by the", "suffix": " river has"}', "g", "good")
    lp1, lp2 = logp("The bank by the", " river has"), logp("The bank by the", " money")
    forward = lambda x: tiny_model(x).logits  # noqa: E731
    with torch.no_grad():
        good = examples_loss(forward, example_batches(tiny_tokenizer, single, 64, "cpu"), "good")
        bad = examples_loss(forward, example_batches(tiny_tokenizer, single, 64, "cpu"), "bad")
        balance = examples_loss(forward, example_batches(tiny_tokenizer, pair, 64, "cpu"), "balance")
    import math

    assert float(good) == pytest.approx(-lp1, rel=1e-4)
    # p ~ 3e-6 here, so -log(1 - p) ~ p: its relative error is the absolute error of lp
    # (float32 logits of magnitude ~50, one pass against several), about 1e-2
    assert float(bad) == pytest.approx(-math.log1p(-math.exp(lp1)), rel=5e-2)
    assert float(balance) == pytest.approx((lp1 - lp2) ** 2, rel=1e-4)


def test_bad_loss_where_the_suffix_has_probability_one_half(tiny_tokenizer):
    """A logits function giving each suffix token p = 1/2: bad = -log(1 - 1/4) for a 2-token
    suffix (p(suffix) = 1/4), good = -log(1/4)."""
    import math

    (example,) = parse_examples('{"prefix": "The bank by the", "suffix": " river has"}', "g", "good")
    batches = example_batches(tiny_tokenizer, [example], 64, "cpu")
    vocab = 400

    def half(ids):
        logits = torch.zeros(*ids.shape, vocab)
        logits.scatter_(-1, batches[0].targets[..., None], math.log(vocab - 1))
        return logits

    assert float(examples_loss(half, batches, "bad")) == pytest.approx(-math.log(0.75), rel=1e-5)
    assert float(examples_loss(half, batches, "good")) == pytest.approx(-math.log(0.25), rel=1e-5)
