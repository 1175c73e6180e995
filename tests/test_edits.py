"""Edit specs: JSON round trip, refusals, fuzzing, and what each edit does to the numbers."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch
from conftest import state_checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backpack_core.edit.specs import (
    EDIT_KINDS,
    AblateSense,
    AddSense,
    EditError,
    EditSet,
    KnowledgeEdit,
    ScaleSense,
    fields_of_kind,
)
from backpack_core.interpret.session import ContextSession

TEXT = "The MacBook is made by Apple and the bank by the river has money"

ONE_OF_EACH = {
    "version": 1,
    "name": "one of each kind",
    "edits": [
        {"kind": "ablate_sense", "word": " bank", "sense": [0, 2]},
        {"kind": "ablate_sense", "word": " the", "sense": 1, "positions": [7]},
        {"kind": "scale_sense", "word": " river", "sense": 1, "factor": 3.0},
        {"kind": "replace_sense", "word": " money", "sense": 0, "source": {"word": " bank", "sense": 3}},
        {"kind": "replace_sense", "word": 5, "sense": "all", "vector": [0.5] * 32, "note": "by id"},
        {"kind": "scale_contextualization", "word": " MacBook", "sense": "all", "factor": 4.0,
         "renormalize": True},
        {"kind": "knowledge_edit", "word": " MacBook", "remove": " Apple", "add": " HP"},
        {"kind": "knowledge_edit", "word": " bank", "remove": " money", "sense": [1, 2],
         "orthogonalize": True},
        {"kind": "replace_contextualization", "sense": 1, "value": 0.5, "query_positions": [5, 11],
         "source_positions": [1]},
        {"kind": "replace_contextualization", "sense": 2, "weights": [[0.1, 0.2], [0.3, 0.4]],
         "word": " MacBook", "renormalize": True},
        {"kind": "add_sense", "word": " bank", "senses": [3, 1], "delta": [[0.25] * 32, [-1.0] * 32],
         "positions": [2, 9], "note": "learned"},
    ],
}


def ids_of(tokenizer, text=TEXT):
    return torch.tensor([tokenizer.encode(text)])


# -- JSON ------------------------------------------------------------------------------------

def test_json_round_trip_one_edit_of_each_kind(tiny_model, tiny_tokenizer):
    edit_set = EditSet.from_dict(ONE_OF_EACH)
    assert {e.kind for e in edit_set} == set(EDIT_KINDS)
    again = EditSet.from_json(edit_set.to_json())
    assert again == edit_set
    assert EditSet.from_dict(json.loads(json.dumps(again.to_dict()))) == edit_set
    assert again.to_dict()["version"] == 1 and again.name == "one of each kind"
    edit_set.validate(tiny_tokenizer, tiny_model.config)
    assert len(edit_set.describe()) == len(edit_set)


def test_provenance_round_trips():
    data = {"version": 1, "provenance": {"examples_sha256": "ab" * 32, "budget_nats": 0.01,
                                         "nested": {"steps": [1, 2]}}, "edits": []}
    edit_set = EditSet.from_dict(data)
    assert edit_set.to_dict() == data and EditSet.from_json(edit_set.to_json()) == edit_set
    joined = edit_set + EditSet.from_dict(ONE_OF_EACH)
    assert joined.provenance == data["provenance"] and len(joined) == len(ONE_OF_EACH["edits"])


def test_python_construction_equals_json(tmp_path):
    built = EditSet([AblateSense(" bank", 3), ScaleSense(" river", [2, 1], 0.5, positions=4),
                     KnowledgeEdit(" MacBook", remove=" Apple", add=" HP")])
    path = tmp_path / "edits.json"
    built.save(path)
    assert EditSet.load(path) == built
    assert built.edits[1].sense == (1, 2) and built.edits[1].positions == (4,)


@pytest.mark.parametrize("spec, message", [
    ('{"version": 1, "edits": [', "malformed JSON at line 1"),
    ('{"version": 2, "edits": []}', "version 2 is not supported"),
    ('{"edits": []}', "lacks \"version\""),
    ('[1, 2]', "must be a JSON object"),
    ('{"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": 0, "factor": NaN}]}',
     "edit 0 (scale_sense): 'factor' must be a finite number, got nan"),
    ('{"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": 0, "factor": 1e999}]}',
     "'factor' must be a finite number, got inf"),
    ('{"version": 1, "edits": [{"kind": "explode", "word": " bank"}]}', "unknown edit kind 'explode'"),
    ('{"version": 1, "edits": [{"kind": "ablate_sense", "word": " bank"}]}', "needs 'sense'"),
    ('{"version": 1, "edits": [{"kind": "ablate_sense", "word": " bank", "sense": 0, "senses": 1}]}',
     "unknown field 'senses'"),
    ('{"version": 1, "edits": [{"kind": "ablate_sense", "word": " bank", "sense": -1}]}', "must be >= 0"),
    ('{"version": 1, "edits": [{"kind": "ablate_sense", "word": " bank", "sense": true}]}',
     "must be a sense index"),
    ('{"version": 1, "edits": [{"kind": "scale_contextualization", "word": " bank", "sense": 0, '
     '"factor": -2}]}', "'factor' must be >= 0"),
    ('{"version": 1, "edits": [{"kind": "replace_sense", "word": " bank", "sense": 0}]}',
     "exactly one of 'vector'"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "senses": [0, 1], '
     '"delta": [[1.0, 2.0]]}]}', "edit 0 (add_sense): 'delta' has 1 rows but 'senses' lists 2"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "senses": [1, 1], '
     '"delta": [[1.0], [2.0]]}]}', "'senses' lists a sense twice"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "senses": "all", '
     '"delta": [[1.0]]}]}', "'senses' must be a non-empty list of sense indices"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "senses": [0, 1], '
     '"delta": [[1.0], [2.0, 3.0]]}]}', "'delta' rows have different lengths"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "senses": 0, '
     '"delta": [[NaN]]}]}', "'delta[0][0]' must be a finite number, got nan"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "senses": 0, '
     '"delta": [1.0]}]}', "'delta[0]' must be a non-empty list of numbers"),
    ('{"version": 1, "edits": [{"kind": "add_sense", "word": " bank", "sense": 0, "delta": [[1.0]]}]}',
     "unknown field 'sense' in a add_sense edit"),
    ('{"version": 1, "edits": [], "provenance": [1]}', "'provenance' must be a JSON object"),
    ('{"version": 1, "edits": [], "provenance": {"x": NaN}}', "finite numbers"),
])
def test_malformed_specs_are_refused_with_a_message(spec, message):
    with pytest.raises(EditError) as err:
        EditSet.from_json(spec)
    assert message in str(err.value)


@pytest.mark.parametrize("edit, message", [
    ({"kind": "ablate_sense", "word": " Macintosh", "sense": 0}, "'word': word ' Macintosh' is"),
    ({"kind": "ablate_sense", "word": " bank", "sense": 4},
     "'sense' 4 is out of range: the model has 4 senses"),
    ({"kind": "ablate_sense", "word": 9999, "sense": 0}, "token id 9999 is out of range"),
    ({"kind": "knowledge_edit", "word": " MacBook", "remove": "Apple Inc"}, "'remove'"),
    ({"kind": "replace_sense", "word": " bank", "sense": 0, "vector": [1.0, 2.0]}, "d = 32"),
    ({"kind": "ablate_sense", "word": " bank", "sense": 0, "positions": [64]}, "positions 0..63"),
    ({"kind": "add_sense", "word": " bank", "senses": [0], "delta": [[1.0, 2.0]]}, "d = 32"),
    ({"kind": "add_sense", "word": " bank", "senses": [0, 4], "delta": [[1.0] * 32] * 2},
     "'senses' 4 is out of range: the model has 4 senses"),
])
def test_specs_that_do_not_fit_the_model_are_refused(tiny_model, tiny_tokenizer, edit, message):
    edit_set = EditSet.from_dict({"version": 1, "edits": [{"kind": "scale_sense", "word": " the",
                                                           "sense": 0, "factor": 2}, edit]})
    with pytest.raises(EditError) as err:
        edit_set.validate(tiny_tokenizer, tiny_model.config)
    assert str(err.value).startswith(f"edit 1 ({edit['kind']}):") and message in str(err.value)
    with pytest.raises(EditError):
        edit_set.compile(tiny_model, tiny_tokenizer)


# -- fuzzing: every input is either an EditSet or an EditError --------------------------------

json_leaf = (st.none() | st.booleans() | st.integers(-(10**20), 10**400)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4)
                          | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
word = st.sampled_from([" bank", " MacBook", " Apple", " HP", "MacBook", "", " ", 3, 0, -1, 400, 10**9])
senses = st.sampled_from(["all", None, 0, 3, 4, -1, [0, 1], [], [3, 3], True, "some", 2.0])
number = st.sampled_from([0, 1, 2.5, -3.0, math.nan, math.inf, -math.inf, 1e308, True, "2", None])
positions = st.sampled_from([None, [0], [1, 3], [], 63, 64, [-1], [2.0], "all", [True]])
plausible = {
    "kind": st.sampled_from(list(EDIT_KINDS) + ["nope", 3]), "word": word, "remove": word, "add": word,
    "sense": senses, "factor": number, "value": number, "positions": positions,
    "query_positions": positions, "source_positions": positions,
    "vector": st.sampled_from([[0.1] * 32, [1.0, 2.0], [], [math.nan] * 32, "v"]),
    "source": st.sampled_from([{"word": " bank", "sense": 1}, {"word": " bank"}, {"sense": 9, "word": 2},
                               {"word": " bank", "sense": 1, "x": 1}, [], None]),
    "weights": st.sampled_from([[[0.5]], [[0.1, 0.2], [0.3]], [[-1.0]], [], [[math.inf]], [[1, 2], [3, 4]]]),
    "renormalize": st.sampled_from([True, False, 1, None]),
    "orthogonalize": st.sampled_from([True, False, "yes"]),
    "note": st.sampled_from(["a note", None, 5]),
    "senses": senses,
    "delta": st.sampled_from([[[0.1] * 32], [[0.1] * 32, [-0.2] * 32], [[1.0, 2.0]], [], [[]],
                              [[math.inf] * 32], [0.1] * 32, "d"]),
}
# wild edits: any kind, any fields, any values
wild_edit = st.fixed_dictionaries(
    {"kind": plausible["kind"]},
    optional={**{k: v | json_value for k, v in plausible.items() if k != "kind"}, "bogus": json_value})


def _edit_of_kind(kind):
    """An edit with the right fields for its kind, each drawn from mostly sensible values."""
    required, optional = fields_of_kind(EDIT_KINDS[kind])
    return st.fixed_dictionaries({"kind": st.just(kind), **{f: plausible[f] for f in required}},
                                 optional={f: plausible[f] for f in optional})


shaped_edit = st.one_of(*[_edit_of_kind(kind) for kind in EDIT_KINDS])


@st.composite
def mutated_edit(draw):
    """A valid edit (one of ONE_OF_EACH) with 0-2 of its fields replaced or removed."""
    edit = dict(draw(st.sampled_from(ONE_OF_EACH["edits"])))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(plausible)))
        if draw(st.booleans()) and name in edit:
            del edit[name]
        else:
            edit[name] = draw(plausible[name])
    return edit


shaped_spec = st.fixed_dictionaries(  # versions are fuzzed in wild_spec
    {"version": st.just(1),
     "edits": st.lists(st.one_of(mutated_edit(), shaped_edit, wild_edit), max_size=3)},
    optional={"name": st.just("n")})
wild_spec = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 2, "1", None, True, 1.0]) | json_value},
    optional={"edits": st.lists(wild_edit, max_size=2) | json_value, "extra": json_value})


def _accept_or_refuse(make, model, tokenizer, session):
    try:
        edit_set = make()
    except EditError as err:
        assert str(err)
        return
    assert EditSet.from_json(edit_set.to_json()) == edit_set  # accepted specs round-trip
    try:
        compiled = edit_set.compile(model, tokenizer)
    except EditError as err:
        assert str(err)
        return
    session.logits(compiled, -1)  # applies without error (values may be anything the spec asked for)


@pytest.fixture(scope="module")
def tiny_session(tiny_model, tiny_tokenizer):
    return ContextSession(tiny_model, tiny_tokenizer, TEXT)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=shaped_spec)
def test_fuzz_shaped_specs_accept_or_refuse(tiny_model, tiny_tokenizer, tiny_session, spec):
    _accept_or_refuse(lambda: EditSet.from_dict(spec), tiny_model, tiny_tokenizer, tiny_session)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=wild_spec | json_value)
def test_fuzz_wild_values_accept_or_refuse(tiny_model, tiny_tokenizer, tiny_session, spec):
    _accept_or_refuse(lambda: EditSet.from_dict(spec), tiny_model, tiny_tokenizer, tiny_session)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=shaped_spec, cut=st.integers(0, 400), junk=st.text(max_size=5))
def test_fuzz_json_text_accept_or_refuse(tiny_model, tiny_tokenizer, tiny_session, spec, cut, junk):
    session = tiny_session
    text = json.dumps(spec)  # NaN / Infinity become JSON's non-standard tokens, also fuzzed
    for candidate in (text, text[:cut] + junk + text[cut:], text[:cut], junk):
        _accept_or_refuse(lambda c=candidate: EditSet.from_json(c), tiny_model, tiny_tokenizer,
                          session)


# -- what edits do ---------------------------------------------------------------------------

def test_ablation_changes_the_logit_by_exactly_the_removed_terms(tiny_model, tiny_tokenizer):
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    bank, the = tiny_tokenizer.encode(" bank")[0], tiny_tokenizer.encode(" the")[0]
    ids = session.token_ids
    the_positions = [j for j, t in enumerate(ids) if t == the]
    assert len(the_positions) >= 2
    for target in (" money", " river"):
        before = session.attribution(target)
        cases = [
            (AblateSense(" bank", 2), [(2, j) for j, t in enumerate(ids) if t == bank]),
            (AblateSense(" the", [0, 3]), [(l, j) for j in the_positions for l in (0, 3)]),
            (AblateSense(" the", 1, positions=[the_positions[1]]), [(1, the_positions[1])]),
        ]
        for edit, removed in cases:
            assert removed  # the word occurs in the text
            edits = EditSet([edit])
            with torch.no_grad():
                full = tiny_model(ids_of(tiny_tokenizer),
                                  intervention=edits.compile(tiny_model, tiny_tokenizer))
            after = float(full.logits[0, -1, before.target_id])
            removed_sum = sum(float(before.contributions[l, j]) for l, j in removed)
            assert after - before.logit == pytest.approx(-removed_sum, abs=1e-5)
            attributed = session.attribution(target, edits=edits)
            assert attributed.logit == pytest.approx(after, abs=1e-5)
            for l, j in removed:
                assert float(attributed.contributions[l, j]) == 0.0


def test_knowledge_edit_math(tiny_model, tiny_tokenizer):
    E = tiny_model.wte.weight.detach()
    mac, apple, hp = (tiny_tokenizer.encode(w)[0] for w in (" MacBook", " Apple", " HP"))
    a, h = E[apple], E[hp]
    with torch.no_grad():
        s = tiny_model.sense_vectors(torch.tensor([[mac]]))  # (1, 1, k, d) -> as (b, k, s, d)
    s = s.permute(0, 2, 1, 3)
    token_ids, positions = torch.tensor([[mac]]), torch.tensor([[0]])
    c = (s @ a) / (a @ a)  # (1, k, 1)
    removed = s - c[..., None] * a

    paper = EditSet([KnowledgeEdit(" MacBook", remove=" Apple", add=" HP")])
    paper = paper.compile(tiny_model, tiny_tokenizer)
    edited = paper.on_senses(s, token_ids, positions)
    # the removal step leaves no Apple component; the added term gives HP exactly s . a
    torch.testing.assert_close(removed @ a, torch.zeros_like(removed @ a), atol=1e-4, rtol=0)
    torch.testing.assert_close((edited - removed) @ h, s @ a, atol=1e-4, rtol=1e-4)
    # the paper's formula, written out
    expected = s - c[..., None] * a + (c * (a @ a) / (h @ h))[..., None] * h
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-5)

    ortho = EditSet([KnowledgeEdit(" MacBook", remove=" Apple", add=" HP", orthogonalize=True)])
    edited = ortho.compile(tiny_model, tiny_tokenizer).on_senses(s, token_ids, positions)
    assert float((edited @ a).abs().max()) < 1e-4 * float(a.norm() * s.norm(dim=-1).max())
    torch.testing.assert_close((edited - removed) @ h, s @ a, atol=1e-4, rtol=1e-4)

    # in a text: MacBook's attribution to " Apple" vanishes (orthogonalized edit) and its senses'
    # gain for " HP" from the added direction equals the Apple logit they lost
    text = "The MacBook is made by"
    session = ContextSession(tiny_model, tiny_tokenizer, text)
    j = session.token_ids.index(mac)
    apple_before = session.attribution(" Apple").contributions[:, j]
    apple_after = session.attribution(" Apple", edits=ortho).contributions[:, j]
    assert float(apple_after.abs().max()) < 1e-4
    assert float(apple_before.abs().max()) > 1e-3
    # only the edited word's senses change
    ablate_none = session.logits(EditSet([KnowledgeEdit(" river", remove=" Apple", add=" HP")]), -1)
    torch.testing.assert_close(ablate_none, session.logits(None, -1))


def test_scale_and_replace_contextualization(tiny_model, tiny_tokenizer):
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    mac = tiny_tokenizer.encode(" MacBook")[0]
    j = session.token_ids.index(mac)
    base = session.contextualization  # (k, n, n)
    scale = EditSet.from_dict({"version": 1, "edits": [
        {"kind": "scale_contextualization", "word": " MacBook", "sense": 2, "factor": 3.0}]})
    intervention = scale.compile(tiny_model, tiny_tokenizer)
    rows = intervention.on_contextualization(base[None], torch.tensor([session.token_ids]),
                                             torch.arange(session.n)[None], torch.arange(session.n)[None])[0]
    expected = base.clone()
    expected[2, :, j] *= 3.0  # not renormalised
    torch.testing.assert_close(rows, expected)
    renorm = EditSet.from_dict({"version": 1, "edits": [
        {"kind": "scale_contextualization", "word": " MacBook", "sense": 2, "factor": 3.0,
         "renormalize": True}]}).compile(tiny_model, tiny_tokenizer)
    rows = renorm.on_contextualization(base[None], torch.tensor([session.token_ids]),
                                       torch.arange(session.n)[None], torch.arange(session.n)[None])[0]
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]))

    replace = EditSet.from_dict({"version": 1, "edits": [
        {"kind": "replace_contextualization", "sense": [0, 1], "value": 0.25, "source_positions": [3]}]})
    rows = replace.compile(tiny_model, tiny_tokenizer).on_contextualization(
        base[None], torch.tensor([session.token_ids]), torch.arange(session.n)[None],
        torch.arange(session.n)[None])[0]
    expected = base.clone()
    expected[:2, 3:, 3] = 0.25  # causal entries only: queries i >= 3
    torch.testing.assert_close(rows, expected)


# -- edits never touch the weights; callers and threads are independent ---------------------------

def test_two_threads_with_different_edit_sets(tiny_model, tiny_tokenizer):
    before = state_checksum(tiny_model)
    sets = [EditSet.from_dict(ONE_OF_EACH),
            EditSet([KnowledgeEdit(" MacBook", remove=" Apple", add=" HP"), AblateSense(" the", "all")])]
    ids = ids_of(tiny_tokenizer)
    with torch.no_grad():
        reference = [tiny_model(ids, intervention=s.compile(tiny_model, tiny_tokenizer)).logits[0]
                     for s in sets]
        plain = tiny_model(ids).logits[0]
    assert not torch.allclose(reference[0], reference[1])
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    errors, results = [], [[], []]

    def worker(which: int) -> None:
        try:
            compiled = sets[which].compile(tiny_model, tiny_tokenizer)
            for _ in range(20):
                with torch.no_grad():
                    results[which].append(tiny_model(ids, intervention=compiled).logits[0])
                results[which].append(session.logits(compiled))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for which in (0, 1):
        assert len(results[which]) == 40
        for got in results[which]:
            torch.testing.assert_close(got, reference[which], atol=1e-5, rtol=1e-5)
    assert state_checksum(tiny_model) == before
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(ids).logits[0], plain)


# -- padding never receives weight, under any edit kind ---------------------------------------

PADDING_EDITS = [
    {"kind": "ablate_sense", "word": " bank", "sense": [0, 2]},
    {"kind": "ablate_sense", "word": " the", "sense": 1, "positions": [0, 3]},
    {"kind": "scale_sense", "word": " the", "sense": 1, "factor": 3.0},
    {"kind": "replace_sense", "word": " the", "sense": "all", "vector": [0.5] * 32},
    {"kind": "scale_contextualization", "word": " the", "sense": "all", "factor": 4.0,
     "renormalize": True},
    {"kind": "scale_contextualization", "word": " the", "sense": 0, "factor": 0.0,
     "positions": [0]},
    {"kind": "knowledge_edit", "word": " the", "remove": " Apple", "add": " HP"},
    {"kind": "replace_contextualization", "sense": 1, "value": 0.5},
    {"kind": "replace_contextualization", "sense": "all", "value": 0.3, "source_positions": [0],
     "renormalize": True},
    {"kind": "replace_contextualization", "sense": 2, "weights": [[0.1, 0.2], [0.3, 0.4]],
     "renormalize": True},
    {"kind": "replace_contextualization", "sense": 0, "value": 2.0, "word": " the"},
    {"kind": "add_sense", "word": " the", "senses": [2, 0], "delta": [[0.5] * 32, [-0.3] * 32]},
]


@pytest.mark.parametrize("edit", PADDING_EDITS, ids=lambda e: e["kind"])
def test_left_padding_gets_no_weight_under_any_edit(tiny_model, tiny_tokenizer, edit):
    """A left-padded row equals the unpadded one under every edit kind. The padding holds the
    edited word's own token, so an edit that looked at token ids alone would hit it too."""
    assert {e["kind"] for e in PADDING_EDITS} == set(EDIT_KINDS)
    ids = ids_of(tiny_tokenizer, " the bank by the river has money and the MacBook")  # (1, n)
    assert ids[0, 0] == tiny_tokenizer.encode(" the")[0]  # at position 0, like the padding
    pad = 4
    padding = torch.full((1, pad), tiny_tokenizer.encode(" the")[0])
    padded = torch.cat([padding, ids], 1)
    mask = torch.ones_like(padded)
    mask[:, :pad] = 0
    intervention = EditSet.from_dict({"version": 1, "edits": [edit]}).compile(tiny_model,
                                                                              tiny_tokenizer)
    with torch.no_grad():
        alone = tiny_model(ids, intervention=intervention).logits
        both = tiny_model(torch.cat([padded, torch.cat([ids, padding], 1)]),  # left, right padded
                          attention_mask=torch.cat([mask, mask.flip(1)]),
                          intervention=intervention).logits
        unedited = tiny_model(ids).logits
    assert (alone - unedited).abs().max() > 1e-2  # the edit does something here
    torch.testing.assert_close(both[0, pad:], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1, :-pad], alone[0], atol=1e-5, rtol=0)


# -- add_sense: exactly x + delta on the listed senses, x + s delta at strength s ---------------

def test_add_sense_adds_its_delta_to_the_listed_senses_only(tiny_model, tiny_tokenizer):
    from backpack_core.interpret.edit_effects import ScaledEdits

    torch.manual_seed(1)
    delta = torch.randn(2, 32)
    edit = AddSense(" bank", [3, 1], delta.tolist(), positions=[2])
    edit_set = EditSet([edit])
    assert EditSet.from_json(edit_set.to_json()) == edit_set
    assert edit_set.to_dict()["edits"][0]["senses"] == [3, 1]  # order kept: rows follow it
    assert EditSet([AddSense(" bank", 2, [[0.5] * 32])]).to_dict()["edits"][0]["senses"] == [2]
    ids = ids_of(tiny_tokenizer, " the bank by the bank")  # " bank" at positions 1 and 4
    bank = tiny_tokenizer.encode(" bank")[0]
    ids[0, 2] = bank  # and at 2, the one listed
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        senses = tiny_model.sense_vectors(ids).transpose(1, 2)  # (b, k, s, d)
        compiled = edit_set.compile(tiny_model, tiny_tokenizer)
        new = compiled.on_senses(senses, ids, positions)
        expected = senses.clone()
        expected[0, 3, 2] += delta[0]
        expected[0, 1, 2] += delta[1]
        assert torch.equal(new, expected)  # exactly: the other senses and positions untouched
        for strength in (0.0, 0.5, 2.0, -1.0):
            scaled = ScaledEdits(compiled, strength).on_senses(senses, ids, positions)
            target = senses.clone()
            target[0, 3, 2] += strength * delta[0]
            target[0, 1, 2] += strength * delta[1]
            torch.testing.assert_close(scaled, target, atol=1e-6, rtol=1e-6)
        # in the forward pass: predictions before the first " bank" are exactly unchanged
        everywhere = EditSet([AddSense(" bank", [3, 1], delta.tolist())]).compile(tiny_model,
                                                                                  tiny_tokenizer)
        edited = tiny_model(ids, intervention=everywhere).logits
        plain = tiny_model(ids).logits
    assert torch.equal(edited[0, 0], plain[0, 0])
    assert (edited[0, 1:] - plain[0, 1:]).abs().amax() > 1e-3
