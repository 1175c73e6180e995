"""The dashboard's pages under streamlit.testing's AppTest, on the tiny model of conftest.

Each test drives widgets and asserts on what the page shows, against numbers computed
independently with the core API. The app reads its default model from BACKPACK_MODEL.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from backpack_core.edit.generation import generate
from backpack_core.edit.specs import EditError, EditSet
from backpack_core.interpret.readouts import sense_readout
from backpack_core.interpret.session import ContextSession
from backpack_core.model.loading import load_backpack
from backpack_core.model.tokenizer import readable_token, show_token

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app"
if str(APP) not in sys.path:  # the pages `import state`, as under `streamlit run app/Home.py`
    sys.path.insert(0, str(APP))
import state  # noqa: E402
import views  # noqa: E402

from tests.conftest import HANG_S  # noqa: E402

TEXT = "The MacBook is made by Apple. The bank by the river has money."
TIMEOUT = HANG_S  # a hang guard: a run on a loaded machine may take minutes


@pytest.fixture(scope="module")
def app_model(tiny_model_dir, tmp_path_factory):
    """The app's default model: the tiny model directory (loaded by the app itself)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(state.MODEL_ENV, str(tiny_model_dir))
        mp.setenv(state.DEVICE_ENV, "cpu")
        mp.setenv(state.DTYPE_ENV, "float32")
        mp.setenv("BACKPACK_CACHE", str(tmp_path_factory.mktemp("sense-bank")))
        model, tokenizer = load_backpack(tiny_model_dir)  # an independent copy, for expectations
        yield model, tokenizer


def page(name: str, **query: str) -> AppTest:
    """A fresh session (a new browser tab) on a page, opened with a link's query parameters."""
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    if name != "home":
        at.switch_page(f"app_pages/{name}.py")
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def matrix(heat: dict) -> torch.Tensor:
    """A heatmap's z, its blank cells (the future: None) as 0."""
    return torch.tensor([[0.0 if v is None else v for v in row] for row in heat["z"]])


def as_read(markdown: str) -> str:
    """Markdown source as it reads on the page: backslash escapes and the word joiners that
    break autolinks (views.plain) removed."""
    return re.sub(r"\\(.)", r"\1", str(markdown)).replace("\u2060", "")


def messages(at: AppTest) -> str:
    return " ".join(as_read(e.value) for e in [*at.error, *at.warning, *at.info])


def test_home_shows_the_model(app_model):
    model, tokenizer = app_model
    at = ok(page("home"))
    shown = {m.label: m.value for m in at.metric}
    assert shown["senses per word (k)"] == str(model.config.num_senses)
    assert shown["vocabulary"] == f"{len(tokenizer):,}"
    assert not at.error


def test_senses_page_table_heatmaps_pieces_side_by_side(app_model):
    model, tokenizer = app_model
    at = ok(page("senses"))
    # the default search "bank" picks the in-text token ' bank'
    assert at.selectbox(key="senses:w1:pick").value == " bank"
    expected = sense_readout(model, tokenizer, " bank", top=8).pieces[0].readouts
    table = at.dataframe[0].value
    assert len(table) == model.config.num_senses
    assert table["top words"].tolist()[2] == " ".join(readable_token(tokenizer, t.token_id)
                                                      for t in expected[2].top)
    top_map = figures(at)[0]["data"][0]
    assert top_map["z"][1] == pytest.approx([t.score for t in expected[1].top], rel=1e-5)
    assert at.query_params["word"] == " bank"

    # a word that is several tokens: every piece is shown, and said so
    at.text_input(key="senses:w1").input("riverbanks").run()
    ok(at)
    # split in its in-text form (with the leading space), as it is inside a text
    assert at.selectbox(key="senses:w1:pick").value == " riverbanks"
    pieces = len(tokenizer.encode(" riverbanks"))
    assert pieces > 1 and tokenizer.encode(" riverbanks") != tokenizer.encode("riverbanks")
    assert "splits into" in messages(at) and len(at.dataframe) == pieces

    # two words side by side
    at.toggle(key="senses:compare").set_value(True).run()
    at.text_input(key="senses:w1").input("river").run()
    ok(at)
    assert at.selectbox(key="senses:w2:pick").value == " river"
    assert len(at.dataframe) == 2 and len(figures(at)) == 5  # 2 x (top, bottom), and similarity


def test_sense_search(app_model):
    from backpack_core.interpret.sense_bank import sense_search

    model, tokenizer = app_model
    at = page("senses")
    at.text_input(key="senses:targets").input("money")
    at.number_input(key="senses:hits").set_value(7)
    next(b for b in at.button if b.label == "Search senses").click().run()
    ok(at)
    hits = at.dataframe[-1].value
    expected = sense_search(model, tokenizer, " money", top=7, progress=False).hits
    assert hits["token_id"].tolist() == [h.token_id for h in expected]
    assert hits["sense"].tolist() == [h.sense for h in expected]


def test_context_page_predictions_contextualization_attribution(app_model):
    model, tokenizer = app_model
    session = ContextSession(model, tokenizer, TEXT)
    at = ok(page("context", text=TEXT))
    assert at.text_area(key="context:text").value == TEXT
    predictions = at.dataframe[0].value
    assert len(predictions) == session.n
    assert predictions["p(next token)"].iloc[2] == pytest.approx(
        float(session.base_logits[2].softmax(-1)[session.token_ids[3]]), rel=1e-5)

    heat = figures(at)[0]["data"][0]  # all senses summed
    assert torch.allclose(matrix(heat), session.contextualization.sum(0), atol=1e-6)
    at.selectbox(key="context:sense").set_value(1).run()
    heat = figures(ok(at))[0]["data"][0]
    assert torch.allclose(matrix(heat), session.contextualization[1], atol=1e-6)

    # the attribution of ' river' after position 3: contributions sum to the model's logit
    at.selectbox(key="context:pos").set_value(3).run()
    at.text_input(key="context:custom-target").input(" river").run()
    ok(at)
    shown = {m.label: float(m.value) for m in at.metric if m.label != "target"}
    river = tokenizer.encode(" river")[0]
    with torch.no_grad():
        logit = float(model(torch.tensor([session.token_ids])).logits[0, 3, river])
    assert shown["logit of the target"] == pytest.approx(logit, abs=1e-3)
    assert shown["sum of the contributions"] == pytest.approx(logit, abs=1e-3)
    contributions = figures(at)[1]["data"][0]["z"]  # (k, 4)
    assert len(contributions) == model.config.num_senses and len(contributions[0]) == 4
    assert at.query_params["pos"] == "3" and at.query_params["target"] == " river"


def test_bad_text_is_a_message_not_a_traceback(app_model):
    for name in ("context", "steer"):
        at = ok(page(name))
        at.text_area(key=f"{name}:text").input("   ").run()
        ok(at)
        assert "empty" in messages(at)


def test_a_text_longer_than_the_context_reads_its_last_tokens_or_a_window(app_model):
    """Not refused: the last n_positions tokens by default, or a window of a sliding window."""
    from backpack_core.model.windows import window_starts

    model, tokenizer = app_model
    n_ctx = model.config.n_positions
    long_text = " ".join(f"bank{i % 7} river" for i in range(n_ctx))
    ids = tokenizer.encode(long_text)
    assert len(ids) > n_ctx
    for name in ("context", "steer"):
        at = ok(page(name))
        at.text_area(key=f"{name}:text").input(long_text).run()
        ok(at)
        assert f"{len(ids):,} tokens long" in at.radio(key=f"{name}:long-text").label
        positions = at.selectbox(key=f"{name}:pos").options
        assert len(positions) == n_ctx and "reads at most" not in messages(at)
        assert state._session(state.default_choice().key, tuple(ids[-n_ctx:]), model, tokenizer)
    at = ok(page("context"))  # the session's text is still the long one
    at.text_area(key="context:text").input(long_text).run()
    at.radio(key="context:long-text").set_value("window").run()
    starts = window_starts(len(ids), n_ctx)
    at.select_slider(key="context:window").set_value(starts[1]).run()
    shown = ok(at).dataframe[0].value
    first = tokenizer.decode([ids[starts[1]]])
    assert len(shown) == n_ctx and shown["token"].iloc[0] == views.show_token(first)


def test_steer_ablation_changes_the_predictions_and_the_url(app_model):
    model, tokenizer = app_model
    at = ok(page("steer", text=TEXT))
    ids = tokenizer.encode(TEXT)
    last = len(ids) - 2  # the default: the last content word (' money'), not the final '.'
    assert at.selectbox(key="steer:pos").value == last and tokenizer.decode(ids[last:]) == " money."
    before = at.table[0].value
    assert before["after"].tolist() == before["before"].tolist()  # no edits yet

    at.text_input(key="steer:senses").input("0").run()  # word: the token at the position
    at.button(key="steer:add-button").click().run()
    ok(at)
    edit_set = at.session_state["edit_set"]
    assert edit_set["edits"] == [{"kind": "ablate_sense", "word": " money", "sense": 0}]
    expected = views.steer_view(ContextSession(model, tokenizer, TEXT), edit_set, position=last)
    after = at.table[0].value
    assert after["after"].tolist() == [r["after"] for r in expected.detail]
    assert after["p after"].tolist() == pytest.approx([r["p after"] for r in expected.detail])
    assert after["p after"].tolist() != pytest.approx(before["p after"].tolist())
    rows = next(d.value for d in at.dataframe if "changed" in d.value.columns)
    assert (rows["changed"] == "changed").sum() == expected.n_changed
    # the view is in the URL: text, edit set (base64url JSON), position
    assert state.decode_edits(at.query_params["edits"]) == edit_set
    assert at.query_params["text"] == TEXT and at.query_params["pos"] == str(last)


def test_steer_link_restores_the_view_and_edits_stay_in_their_session(app_model):
    model, tokenizer = app_model
    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": [0, 1],
                                      "factor": 3.0}]}
    shared = ok(page("steer", text=TEXT, edits=state.encode_edits(edits), pos="5"))
    assert shared.session_state["edit_set"] == edits
    assert shared.selectbox(key="steer:pos").value == 5
    assert "scale senses [0, 1] of ' bank' by 3" in " ".join(as_read(m.value) for m in shared.markdown)
    changed = shared.table[0].value

    # a second session at the same time: none of the first one's edits
    other = ok(page("steer", text=TEXT, pos="5"))
    assert other.session_state["edit_set"]["edits"] == []
    assert other.table[0].value["after"].tolist() == other.table[0].value["before"].tolist()
    shared.run()
    assert shared.table[0].value.equals(changed)

    # a broken link: a message, and no edits
    broken = ok(page("steer", text=TEXT, edits="not-base64!"))
    assert "was not loaded" in messages(broken)
    assert broken.session_state["edit_set"]["edits"] == []
    # well-formed but invalid for the model: refused as an upload is, with the reason
    invalid = {"version": 1, "edits": [{"kind": "ablate_sense", "word": " bank", "sense": 99}]}
    refused = ok(page("steer", text=TEXT, edits=state.encode_edits(invalid)))
    assert "The edit set in the link was not loaded" in messages(refused)
    assert "out of range" in messages(refused) and "does not fit" not in messages(refused)
    assert refused.session_state["edit_set"]["edits"] == []
    assert "edits" not in refused.query_params


def test_unknown_model_is_a_message_on_every_page(app_model, monkeypatch, tmp_path):
    monkeypatch.setenv(state.MODEL_ENV, str(tmp_path / "no-such-model"))
    for name in ("home", "senses", "context", "steer"):
        at = ok(page(name))
        assert "Could not load the model" in messages(at) and "no-such-model" in messages(at)
    at = ok(page("models"))  # still usable: it is where another model is chosen
    assert "is not a directory" in messages(at) and at.radio(key="models:kind").value == "default"


def test_model_is_loaded_once_and_shared_by_sessions(app_model, monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return load_backpack(*args, **kwargs)

    monkeypatch.setattr(state, "load_backpack", counting)
    state._load.clear()
    first, second = ok(page("steer", text=TEXT)), ok(page("context", text=TEXT))
    assert len(calls) == 1
    choice = state.default_choice()
    assert first.session_state["edit_set"] is not None and second is not None
    assert state._load(*choice.key) is state._load(*choice.key)  # one object, shared


def test_steer_bad_edits_and_json_upload(app_model):
    at = ok(page("steer", text=TEXT))
    at.text_input(key="steer:senses").input("99").run()
    at.button(key="steer:add-button").click().run()
    ok(at)
    assert "out of range" in messages(at) and at.session_state["edit_set"]["edits"] == []

    broken = b'{"version": 1, "edits": ['
    at.file_uploader(key="steer:upload").upload("edits.json", broken, "application/json")
    at.run()
    ok(at)
    assert "malformed JSON" in messages(at)

    good = {"version": 1, "edits": [{"kind": "knowledge_edit", "word": " MacBook", "remove": " Apple",
                                     "add": " HP"}]}
    at.file_uploader(key="steer:upload").set_value(("good.json", json.dumps(good).encode(),
                                                    "application/json"))
    at.run()
    ok(at)
    good = EditSet.from_dict(good).to_dict()  # normalised: "sense": "all" made explicit
    assert at.session_state["edit_set"] == good
    assert "malformed" not in messages(at)

    # the JSON editor: an unknown kind is refused with the accepted kinds named
    at.text_area(key="steer:json").input('{"version": 1, "edits": [{"kind": "melt", "word": " bank"}]}')
    at.button(key="steer:apply-json").click().run()
    ok(at)
    assert "unknown edit kind" in messages(at) and at.session_state["edit_set"] == good

    at.button(key="steer:remove-0").click().run()
    assert ok(at).session_state["edit_set"]["edits"] == []


def test_steer_knowledge_edit_and_generation(app_model):
    model, tokenizer = app_model
    at = ok(page("steer", text=TEXT))
    at.selectbox(key="steer:kind").set_value("knowledge_edit").run()
    at.selectbox(key="steer:word").set_value(" MacBook")
    at.text_input(key="steer:remove").input(" Apple")
    at.text_input(key="steer:add").input(" HP")
    at.button(key="steer:add-button").click().run()
    ok(at)
    assert at.session_state["edit_set"]["edits"][0]["kind"] == "knowledge_edit"

    at.number_input(key="steer:gen-tokens").set_value(5)
    at.button(key="steer:generate").click().run()
    ok(at)
    shown = [c.value for c in at.code]
    edits = at.session_state["edit_set"]
    assert shown == [generate(model, tokenizer, TEXT, None, max_new_tokens=5),
                     generate(model, tokenizer, TEXT, edits, max_new_tokens=5)]


def test_models_page(app_model, tiny_model_dir, tmp_path, monkeypatch):
    model, _ = app_model
    monkeypatch.setenv("BACKPACK_MODEL_ROOTS", str(tmp_path))  # the allow-list (backpack_core.model.access)
    at = ok(page("models"))
    assert any(m.label == "width (d)" and m.value == str(model.config.n_embd) for m in at.metric)

    at.radio(key="models:kind").set_value("directory").run()
    at.text_input(key="models:dir").input(str(tmp_path / "nowhere")).run()
    at.button(key="models:load").click().run()
    ok(at)
    assert "Could not load" in messages(at) and "model_choice" not in at.session_state

    # a model directory with a model card, eval numbers and a run's metrics
    card_dir = tmp_path / "with-card"
    card_dir.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (card_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    (card_dir / "README.md").write_text("# tiny\n\nA test model.\n")
    (card_dir / "eval.json").write_text(json.dumps({
        "backpack_val": {"perplexity": 25.8, "tokens": 1000}, "parameters": {"total": 1234},
        "senses": {"bank": {"pieces": [{"token": " bank"}]}}}))
    (card_dir / "metrics.jsonl").write_text(
        '{"step": 10, "loss": 5.0, "lr": 0.001, "tokens": 100}\n'
        '{"step": 20, "loss": 4.0, "lr": 0.002, "tokens": 200}\n{"step": 20, "val_loss": 4.5}\n'
        '{"step": 30, "lo')  # a line cut short
    at.text_input(key="models:dir").input(str(card_dir)).run()
    at.button(key="models:load").click().run()
    ok(at)
    assert at.session_state["model_choice"].source == str(card_dir)
    numbers = next(d.value for d in at.dataframe if "metric" in d.value.columns)
    assert dict(zip(numbers["metric"], numbers["value"])) == {
        "backpack_val.perplexity": "25.8", "backpack_val.tokens": "1,000", "parameters.total": "1,234"}
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Backpack perplexity, validation"] == "25.8" and tiles["parameters"] == "1,234"
    reference = next(d.value for d in at.dataframe if "published mini" in d.value.columns)
    assert reference.set_index("").loc["width (d)"].tolist() == [
        f"{model.config.n_embd}", "384", "640", "768"]
    loss = next(f for f in figures(at) if f["layout"]["title"]["text"] == "loss")
    assert [s["y"] for s in loss["data"]] == [[5.0, 4.0], [4.5]]
    assert "1 unreadable line" in " ".join(c.value for c in at.caption)
    # no absolute server path anywhere: the model is named relative to its allowed root
    shown = " ".join([*(as_read(e.value) for kind in ("markdown", "caption", "success", "error", "info",
                                                   "warning", "code") for e in at.get(kind)),
                      *(e.label for e in at.get("expander")),
                      *(str(o) for s in at.selectbox for o in s.options)])
    assert "with-card" in shown and str(tmp_path) not in shown, shown
    assert f"{tmp_path.name}/with-card · cpu" in shown  # the root's name, then the path in it


# ----------------------------------------------------------------------------------------------
# app/views.py: the data the pages render
# ----------------------------------------------------------------------------------------------

def test_steer_view_equals_a_full_forward_pass(tiny_model, tiny_tokenizer):
    from backpack_core.interpret.compare import kl_divergence

    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    edits = {"version": 1, "edits": [
        {"kind": "ablate_sense", "word": " bank", "sense": [0, 2]},
        {"kind": "scale_contextualization", "word": " river", "sense": "all", "factor": 0.2}]}
    view = views.steer_view(session, edits, position=-1, top=5)
    with torch.no_grad():
        ids = torch.tensor([session.token_ids])
        before = tiny_model(ids).logits[0]
        after = tiny_model(ids, intervention=EditSet.from_dict(edits).compile(
            tiny_model, tiny_tokenizer)).logits[0]
    n_real = len(tiny_tokenizer)  # the model's vocabulary is padded beyond the tokenizer's
    p_before, p_after = before.softmax(-1)[:, :n_real], after.softmax(-1)[:, :n_real]
    for row in view.rows:
        i = row["position"]
        assert row["before"] == readable_token(tiny_tokenizer, int(p_before[i].argmax()))
        assert row["after"] == readable_token(tiny_tokenizer, int(p_after[i].argmax()))
        assert row["p after"] == pytest.approx(float(p_after[i].max()), abs=1e-5)
        assert row["changed"] == (int(p_before[i].argmax()) != int(p_after[i].argmax()))
    kl = kl_divergence(before, after)
    assert view.kl == pytest.approx(kl.tolist(), abs=1e-4)
    first = session.token_ids.index(tiny_tokenizer.encode(" bank")[0])  # no edit reaches earlier
    assert first > 0 and view.kl[:first] == [0.0] * first
    assert view.n_changed == sum(r["changed"] for r in view.rows) > 0
    assert [t.prob for t in view.comparison.after] == pytest.approx(
        p_after[-1].topk(5).values.tolist(), abs=1e-6)
    assert views.steer_view(session, None).n_changed == 0


def test_edit_controls_parse_and_refuse_clearly(tiny_model, tiny_tokenizer):
    assert views.parse_senses("all") == "all" and views.parse_senses("3") == 3
    assert views.parse_senses("1, 2") == [1, 2] and views.parse_positions(" ") is None
    assert views.parse_words("science, #5", in_text_form=True) == [" science", 5]
    spec = views.edit_spec("scale_sense", word=" bank", senses="1,3", factor=2.0, positions="4")
    assert spec == {"kind": "scale_sense", "word": " bank", "sense": [1, 3], "factor": 2.0,
                    "positions": [4]}
    edit_set = views.add_edit(None, spec, tiny_model, tiny_tokenizer)
    assert views.edit_rows(edit_set)[0]["edit"] == "scale senses [1, 3] of ' bank' by 2 at positions [4]"
    with pytest.raises(EditError, match="senses must be"):
        views.edit_spec("ablate_sense", word=" bank", senses="one")
    with pytest.raises(EditError, match="out of range"):
        views.add_edit(edit_set, views.edit_spec("ablate_sense", word=" bank", senses="7"),
                       tiny_model, tiny_tokenizer)
    with pytest.raises(EditError, match="splits into|tokens"):
        views.add_edit(edit_set, views.edit_spec("ablate_sense", word="MacBook"), tiny_model,
                       tiny_tokenizer)
    assert views.remove_edit(edit_set, 0)["edits"] == []
    assert views.vocab_matches(tiny_tokenizer, "BANK")[0] == " bank"


def test_training_curves_and_model_card_numbers(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 3.0, "lr": 0.1}\n{"step": 1, "val_loss": 2.5, "val_ppl": 12.2}\n'
        'garbage\n{"step": 2, "loss": 2.0, "lr": 0.2, "mfu": null}\n')
    curves = views.training_curves(tmp_path)
    assert curves.train["step"] == [1.0, 2.0] and curves.train["loss"] == [3.0, 2.0]
    assert curves.val["val_loss"] == [2.5] and curves.skipped == 1
    with pytest.raises(OSError):
        views.training_curves(tmp_path / "missing")
    assert views.flatten_numbers({"a": {"b": 1.5, "c": [1, 2]}, "d": True}) == [
        {"metric": "a.b", "value": "1.5"}, {"metric": "a.c", "value": "1, 2"},
        {"metric": "d", "value": "True"}]


def test_tokens_are_readable_bytes_and_all(tiny_tokenizer):
    """A token holding part of a UTF-8 character shows its bytes, not '\ufffd'."""
    ids = tiny_tokenizer.encode("\u2014")  # an em dash: 3 bytes, unknown to the tiny BPE
    assert tiny_tokenizer.decode(ids[:1]) == "\ufffd"
    assert "".join(readable_token(tiny_tokenizer, i) for i in ids) == "<0xE2><0x80><0x94>"
    assert readable_token(tiny_tokenizer, tiny_tokenizer.encode(" bank")[0]) == "\u2423bank"
    assert show_token("a\nb\x0b") == "a\\nb<0x0B>"


def test_position_changes_and_each_edits_effect(tiny_model, tiny_tokenizer):
    from backpack_core.interpret.compare import edit_effects, kl_divergence, position_changes

    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    bank = session.token_ids.index(tiny_tokenizer.encode(" bank")[0])
    river = session.token_ids.index(tiny_tokenizer.encode(" river")[0])
    edits = {"version": 1, "edits": [
        {"kind": "ablate_sense", "word": " bank", "sense": "all", "positions": [bank]},
        {"kind": "scale_sense", "word": " river", "sense": "all", "factor": 3.0}]}
    both = position_changes(session, edits)
    kl = kl_divergence(session.base_logits, session.logits(edits)).tolist()
    assert both.kl == pytest.approx(kl, abs=1e-4)
    effects = edit_effects(session, edits)
    assert len(effects) == 2
    # an edit changes nothing before its own word's position, and most at or after it
    assert effects[0].ranked() and min(effects[0].ranked()) == bank
    assert effects[1].ranked() and min(effects[1].ranked()) == river
    assert effects[0].most_affected == max(range(session.n), key=lambda i: effects[0].kl[i])
    assert position_changes(session, None).most_affected is None


def test_an_unexpected_failure_is_one_line_not_a_traceback(app_model, monkeypatch, caplog):
    """The error boundary: a page that raises shows one message; the details go to the log."""
    def broken(*args, **kwargs):
        raise RuntimeError('injected failure\n  File "views.py", line 1, in prediction_rows')

    monkeypatch.setattr(views, "prediction_rows", broken)
    monkeypatch.setattr(views, "add_edit", broken)  # a widget callback that fails
    with caplog.at_level("ERROR", logger="backpack_workbench.app"):
        at = ok(page("context", text=TEXT))
        steer = ok(page("steer", text=TEXT))
        steer.button(key="steer:add-button").click().run()
    ok(steer)
    for shown in (messages(at), messages(steer)):
        assert "Something went wrong (RuntimeError: injected failure)" in shown
        assert "Traceback" not in shown and 'File "' not in shown
    assert "Traceback" in caplog.text and "injected failure" in caplog.text


def test_knowledge_edit_defaults_fit_the_model(tiny_tokenizer):
    from backpack_core.model.loading import DEFAULT_MODEL_DIR
    from backpack_core.model.tokenizer import Tokenizer

    assert views.knowledge_defaults(tiny_tokenizer, 512) == (" MacBook", " Apple", " HP")
    if (DEFAULT_MODEL_DIR / "tokenizer.json").is_file():  # the shipped 32k BPE: ' MacBook' splits
        shipped = Tokenizer.load(DEFAULT_MODEL_DIR)
        assert len(shipped.encode(" MacBook")) > 1
        assert views.knowledge_defaults(shipped, 32768) == (" United", " States", " Nations")
    tokens = [" The", " bank", " by", " the", " river", "."]
    assert views.default_position(tokens) == 4 and views.default_position([".", ","]) == 1


def test_steer_effect_per_edit_jump_and_live_factor(app_model):
    """An edit acting only at its word's positions: its effect says where, a button jumps there,
    and a slider changes its factor live (the after-table follows)."""
    model, tokenizer = app_model
    ids = tokenizer.encode(TEXT)
    bank = ids.index(tokenizer.encode(" bank")[0])
    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": "all",
                                      "factor": 3.0, "positions": [bank]}]}
    at = ok(page("steer", text=TEXT, edits=state.encode_edits(edits), pos="2"))
    assert at.metric[1].value == "0.0000"  # the chosen position (before the word) did not move
    session = ContextSession(model, tokenizer, TEXT)
    expected = views.edit_effects(session, edits)[0]
    assert expected.most_affected == bank
    shown = " ".join(as_read(c.value) for c in at.caption)
    assert f"most at **{bank}**" in shown
    at.button(key="steer:jump-0").click().run()
    assert ok(at).selectbox(key="steer:pos").value == bank
    assert float(at.metric[1].value) == pytest.approx(expected.rows[0]["KL"], rel=1e-2, abs=1e-4)
    after_3 = at.table[0].value["p after"].tolist()

    at.slider(key="steer:factor-0").set_value(1.0).run()  # factor 1: no change at all
    ok(at)
    assert at.session_state["edit_set"]["edits"][0]["factor"] == 1.0
    assert state.decode_edits(at.query_params["edits"])["edits"][0]["factor"] == 1.0
    table = at.table[0].value
    assert table["p after"].tolist() == pytest.approx(table["p before"].tolist(), abs=1e-6)
    assert table["p after"].tolist() != pytest.approx(after_3, abs=1e-6)


def test_readable_views_search_predictions_and_heatmap_options(tiny_model, tiny_tokenizer):
    from backpack_core.model.loading import DEFAULT_MODEL_DIR
    from backpack_core.model.tokenizer import Tokenizer

    if (DEFAULT_MODEL_DIR / "tokenizer.json").is_file():  # has ' river' and ' River'
        shipped = Tokenizer.load(DEFAULT_MODEL_DIR)
        assert views.vocab_matches(shipped, "river")[0] == " river"
        assert views.vocab_matches(shipped, "River")[0] == " River"
    assert views.word_options([" bank"], "bank") == [" bank"]
    assert views.word_options([], "riverbanks") == [" riverbanks", "riverbanks"]

    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    rows = views.prediction_rows(session, top=3)
    logprobs = session.base_logits[:, : len(tiny_tokenizer)].log_softmax(-1)
    for i, row in enumerate(rows[:-1]):
        nxt = session.token_ids[i + 1]
        assert row["log p(next token)"] == pytest.approx(float(logprobs[i, nxt]), abs=1e-5)
        assert row["rank of next token"] == int((logprobs[i] > logprobs[i, nxt]).sum()) + 1
        assert (" ✓" in row["top predictions"]) == (row["rank of next token"] <= 3)
    assert rows[-1]["rank of next token"] is None

    plain = views.contextualization_heatmap(session)
    assert "clipped at the 98th percentile" in plain.note and "clipped" in plain.colorbar
    assert plain.zmax < max(v for row in plain.z for v in row if v is not None)
    assert plain.z[0][1] is None  # the future is blank, not 0
    hidden = views.contextualization_heatmap(session, 0, hide_diagonal=True, log_scale=True)
    assert all(hidden.z[i][i] is None for i in range(session.n))
    assert hidden.z[2][0] == pytest.approx(math.log10(float(session.contextualization[0, 2, 0])),
                                           abs=1e-5)
    assert views.picked_cell({"selection": {"points": [{"x": "3 ␣by", "y": "7 ␣the"}]}}) == (7, 3)
    assert views.picked_cell({"selection": {"points": []}}) is None


def test_choices_survive_page_changes_and_the_model_is_in_the_url(app_model, tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    import shutil

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")  # not the default model
    monkeypatch.setenv("BACKPACK_MODEL_ROOTS", str(tmp_path))  # the allow-list (backpack_core.model.access)
    at = ok(page("context", text=TEXT))
    at.selectbox(key="context:pos").set_value(4).run()
    at.selectbox(key="context:sense").set_value(1).run()
    at.toggle(key="context:log").set_value(True).run()
    at.switch_page("app_pages/steer.py").run()
    assert ok(at).selectbox(key="steer:pos").value == 4  # the position is shared
    at.selectbox(key="steer:pos").set_value(6).run()
    at.switch_page("app_pages/senses.py").run()
    at.text_input(key="senses:w1").input("river").run()
    at.slider(key="senses:top").set_value(5).run()
    at.switch_page("app_pages/context.py").run()
    ok(at)
    assert at.selectbox(key="context:pos").value == 6
    assert at.selectbox(key="context:sense").value == 1 and at.toggle(key="context:log").value
    at.switch_page("app_pages/senses.py").run()
    assert ok(at).selectbox(key="senses:w1:pick").value == " river"
    assert at.slider(key="senses:top").value == 5

    # the Models page: the sidebar follows the model loaded in the same run, and so does the URL
    at.switch_page("app_pages/models.py").run()
    at.radio(key="models:kind").set_value("directory").run()
    at.text_input(key="models:dir").input(str(other))
    at.selectbox(key="models:dtype").set_value("bfloat16")
    at.button(key="models:load").click().run()
    ok(at)
    assert "bfloat16" in " ".join(c.value for c in at.sidebar.caption)
    assert at.query_params["model"] == str(other) and at.query_params["dtype"] == "bfloat16"
    # a link with that model opens it; a hub id in a link is not downloaded
    shared = ok(page("context", text=TEXT, model=str(other), dtype="bfloat16"))
    assert shared.session_state["model_choice"] == state.ModelChoice(str(other), "cpu", "bfloat16")
    hub = ok(page("home", model="someone/some-model"))
    assert "The model in the link was not loaded" in " ".join(w.value for w in hub.sidebar.warning)
    assert "model_choice" not in hub.session_state
    # a link to a directory outside the operator's roots is refused without probing it
    for outside in ("/etc", "/nonexistent/dir"):
        refused = ok(page("home", model=outside))
        warning = " ".join(w.value for w in refused.sidebar.warning)
        assert "The model in the link was not loaded" in warning and "is not a local" not in warning
        assert "model_choice" not in refused.session_state


def test_streamlit_config_keeps_the_app_local_and_quiet():
    import tomllib

    config = tomllib.loads((APP.parent / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["toolbarMode"] == "minimal"  # no Deploy button
    assert config["client"]["showErrorDetails"] == "none"
    # a ":material/...:" page icon is fetched from fonts.gstatic.com: the favicon is a local file
    assert 'page_icon=":material' not in (APP / "Home.py").read_text() and (APP / "icon.png").is_file()


def test_an_oversized_link_is_refused_whole_and_the_text_box_is_bounded(app_model):
    from backpack_core.common import limits

    long_text = "the river bank " * (limits.MAX_LINK_CHARS // 10)
    at = ok(page("context", text=long_text))
    warning = " ".join(as_read(w.value) for w in at.sidebar.warning)
    assert "The link was not used" in warning and "MAX_LINK_CHARS" in warning
    assert at.text_area(key="context:text").value != long_text  # the default text, not the link's
    assert at.text_area(key="context:text").proto.max_chars == limits.MAX_TEXT_CHARS


def test_steer_rerun_reuses_its_views_until_the_inputs_change(app_model, monkeypatch):
    """Issue 14: a rerun that changes neither text, edits nor position recomputes no view."""
    calls = []
    real = views.steer_view
    monkeypatch.setattr(views, "steer_view", lambda *a, **k: calls.append(k) or real(*a, **k))
    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": [0, 1],
                                      "factor": 3.0}]}
    at = ok(page("steer", text=TEXT, edits=state.encode_edits(edits), pos="5"))
    assert len(calls) == 1
    ok(at.run())
    ok(at.run())
    assert len(calls) == 1  # reused
    at.selectbox(key="steer:pos").select(6).run()
    assert len(calls) == 2 and calls[-1]["position"] == 6
    before = ok(at).dataframe[0].value.copy() if at.dataframe else None
    at.button(key="steer:clear").click().run()
    assert len(calls) == 3  # the edits changed
    assert before is not None and not ok(at).session_state["edit_set"]["edits"]


# ----------------------------------------------------------------------------------------------
# Edits that do what the user means (issue 23)
# ----------------------------------------------------------------------------------------------

def test_steer_kind_change_resets_fields_and_preview_warns_on_tiny_edits(app_model):
    model, tokenizer = app_model
    at = ok(page("steer", text=TEXT))
    at.selectbox(key="steer:kind").set_value("scale_sense").run()
    at.text_input(key="steer:senses").input("0, 1").run()
    at.number_input(key="steer:factor").set_value(1.0).run()
    ok(at)
    captions = " ".join(as_read(c.value) for c in at.caption)
    assert "Will scale senses [0, 1] of" in captions and "by 1" in captions  # shown before adding
    assert "changes almost nothing" in messages(at)  # a factor of 1 is no edit
    at.selectbox(key="steer:kind").set_value("knowledge_edit").run()
    ok(at)
    assert at.text_input(key="steer:senses").value == "all"  # not the scale edit's [0, 1]
    at.selectbox(key="steer:word").set_value(" MacBook").run()
    at.text_input(key="steer:remove").input("Apple").run()  # bare: the in-text form ' Apple'
    ok(at)
    captions = " ".join(as_read(c.value) for c in at.caption)
    assert "Will " in captions and "' MacBook'" in captions and "position(s) 1" in captions
    at.button(key="steer:add-button").click().run()
    edit = ok(at).session_state["edit_set"]["edits"][0]
    assert edit["remove"] == " Apple" and edit.get("sense", "all") == "all"


def test_steer_another_word_box_takes_bank_quoted_and_token_ids(app_model):
    model, tokenizer = app_model
    river = tokenizer.encode(" river")[0]
    at = ok(page("steer", text=TEXT))
    for typed, expected in (("bank", " bank"), ("' bank'", " bank"), (f"#{river}", river)):
        at.selectbox(key="steer:word").set_value("\x00other").run()
        at.text_input(key="steer:word-other").input(typed).run()
        at.button(key="steer:add-button").click().run()
        ok(at)
        assert at.session_state["edit_set"]["edits"][-1]["word"] == expected, messages(at)


def test_a_new_text_resets_the_position_and_stale_messages(app_model):
    at = ok(page("steer", text=TEXT, pos="3"))
    assert at.selectbox(key="steer:pos").value == 3
    at.text_input(key="steer:senses").input("99").run()
    at.button(key="steer:add-button").click().run()
    assert "out of range" in messages(ok(at))
    new_text = "The river bank was muddy after the rain."
    at.text_area(key="steer:text").input(new_text).run()
    ok(at)
    tokens = ContextSession(*app_model, new_text).tokens
    assert at.selectbox(key="steer:pos").value == views.default_position(tokens) != 3
    assert "out of range" not in messages(at)


def test_context_target_box_takes_a_bare_word_and_a_token_id(app_model):
    model, tokenizer = app_model
    river = tokenizer.encode(" river")[0]
    at = ok(page("context", text=TEXT))
    for typed in ("river", f"#{river}"):
        at.text_input(key="context:custom-target").input(typed).run()
        ok(at)
        assert {m.label: m.value for m in at.metric}["target"] == "␣river", messages(at)


def test_evaluating_a_word_the_corpus_never_has_says_so_and_ranks_count_from_1(app_model):
    model, tokenizer = app_model
    at = ok(page("steer", text=TEXT))
    edits = {"version": 1, "edits": [{"kind": "ablate_sense", "word": " science", "sense": "all"}]}
    at.text_area(key="steer:json").input(json.dumps(edits))
    at.button(key="steer:apply-json").click().run()
    session = ContextSession(model, tokenizer, TEXT)
    best = int(session.base_logits[5].float()[: session.n_real].argmax())  # a token id
    prompt = tokenizer.decode(session.token_ids[:6])
    at.file_uploader(key="steer:eval-prompts").upload(
        "p.jsonl", json.dumps({"prompt": prompt, "target": best}).encode(), "application/json")
    at.radio(key="steer:eval-data").set_value("text")
    at.button(key="steer:evaluate").click().run()
    ok(at)
    assert "' science' never occurs in" in messages(at)
    assert "n/a" not in " ".join(m.value for m in at.metric)
    sweep = next(d.value for d in at.dataframe if "blast radius" in d.value.columns)
    assert (sweep["blast radius"] == 0).all() and "None" not in sweep.astype(str).values
    prompts = next(d.value for d in at.dataframe if "rank before" in d.value.columns)
    assert prompts["rank before"].tolist() == [1]  # the most probable token is rank 1
    assert "steer:eval:stop" not in {b.key for b in at.button}  # the run is over: no Stop button


def test_pages_run_on_one_thread_unless_backpack_threads_says_otherwise(app_model, monkeypatch):
    """A small request on a busy server: one torch thread by default (issue 23: a generation took
    16.7 s on 2 threads, 0.53 s on 1); BACKPACK_THREADS overrides."""
    seen = []
    real = views.prediction_rows

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(views, "prediction_rows", counting)
    monkeypatch.delenv("BACKPACK_THREADS", raising=False)
    with state.progress.torch_threads(2):  # the process default: several threads
        ok(page("context", text=TEXT))
        monkeypatch.setenv("BACKPACK_THREADS", "2")
        ok(page("context", text=TEXT))
    assert seen == [1, 2]


def test_sense_cards_similarity_and_a_card_button_that_edits_on_steer(app_model):
    from backpack_core.interpret.sense_cards import near_duplicate_groups, sense_cards, sense_similarity

    model, tokenizer = app_model
    bank = tokenizer.encode(" bank")[0]
    cards = sense_cards(model, tokenizer, " bank", top=5)
    assert [c.sense for c in cards] == list(range(model.config.num_senses))
    shown = [readable_token(tokenizer, i) for c in cards for _, i, _ in c.top + c.bottom]
    assert not any("<0x" in w for w in shown)  # byte and control tokens hidden
    senses = model.sense_vectors(torch.tensor(bank)).detach()
    twin = torch.stack([senses[0], senses[0] * 2.0, -senses[0]])  # 0 and 1: same direction
    assert near_duplicate_groups(twin) == [[0, 1]]
    sim = sense_similarity(model, tokenizer, " bank", " river")
    unit = torch.nn.functional.normalize(model.sense_vectors(torch.tensor(
        [bank, tokenizer.encode(" river")[0]])).detach(), dim=-1)
    torch.testing.assert_close(sim, unit[0] @ unit[1].T)

    at = ok(page("senses", word=" bank", word2=" river"))
    heat = next(f for f in figures(at) if "cosine of the sense vectors" in f["layout"]["title"]["text"])
    torch.testing.assert_close(torch.tensor(heat["data"][0]["z"]), sim)
    at = ok(page("senses", word=" bank"))
    at.button(key="senses:w1:0:ablate-2").click().run()
    ok(at)
    assert at.session_state["edit_set"]["edits"] == [{"kind": "ablate_sense", "word": bank, "sense": 2}]


def test_position_rows_filter_sort_and_generation_divergence(tiny_model, tiny_tokenizer):
    session = ContextSession(tiny_model, tiny_tokenizer, TEXT)
    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": "all",
                                      "factor": 8.0}]}
    view = views.steer_view(session, edits)
    changed = views.position_rows(view.rows, only_changed=True)
    assert changed and [r["position"] for r in changed] == view.changed_positions
    by_kl = views.position_rows(view.rows, order="KL")
    assert [r["KL"] for r in by_kl] == sorted(view.kl, reverse=True)
    split = views.divergence(tiny_tokenizer, " the bank by the river", " the bank of the sea")
    assert split.shared == " the bank" and split.before == " by the river" and split.tokens == 2
    assert views.divergence(tiny_tokenizer, " same", " same").identical
    assert "<mark" in views.divergence_html("<b>", "x") and "&lt;b&gt;" in views.divergence_html("<b>", "x")
    html = views.token_weights_html(session, 5, sense=None)
    alpha = session.contextualization[:, 5, :6].float()
    assert html.count('title="') == 6 and "#aaa" in html  # 0..5 coloured, the future grey
    assert f"weight {float(alpha[:, 0].sum()):.3f}" in html  # a token's hover: its weight, by sense


def test_plain_text_renders_as_typed_in_markdown():
    """views.plain: a CommonMark renderer draws no link, image or HTML from it, and the text reads
    as typed (the browser test checks Streamlit's own renderer, autolinks included)."""
    markdown_it = pytest.importorskip("markdown_it")
    typed = ("![pixel](https://evil.example/a.png) [Click here](http://evil.example) "
             "<img src='https://evil.example/i.png'> **bold** $x$ `code` www.evil.example")
    html = markdown_it.MarkdownIt("commonmark").render(views.plain(typed))
    assert "<a " not in html and "<img" not in html and "<strong>" not in html and "<code>" not in html
    assert as_read(views.plain(typed)) == typed
    assert "://" not in views.plain(typed).replace("\\", "")  # the joiner breaks autolinks


def test_steer_learn_from_examples_joins_the_edit_set(app_model):
    """The "Learn from examples" panel: sense finetuning's edit set (the core's, computed here
    independently) becomes the session's edit set; a bad examples box gets a one-line error."""
    model, tokenizer = app_model
    at = ok(page("steer", text=TEXT))
    examples = '{"prefix": "The MacBook is made by", "suffix": " HP"}\n'
    at.text_area(key="steer:learn-examples").input("not json").run()
    at.button(key="steer:learn").click().run()
    assert "Nothing was learned: the examples:1: not JSON" in messages(ok(at))
    at.text_area(key="steer:learn-examples").input(examples).run()
    at.number_input(key="steer:learn-senses").set_value(2).run()
    at.number_input(key="steer:learn-steps").set_value(3).run()
    at.number_input(key="steer:learn-budget").set_value(0.05).run()
    at.selectbox(key="steer:learn-background").set_value("text").run()
    at.button(key="steer:learn").click().run()
    ok(at)
    edits = at.session_state["edit_set"]
    expected = views.learn_from_examples(model, tokenizer, None, examples, "good",
                                         senses_per_example=2, budget=0.05, steps=3,
                                         background="text", text=TEXT)
    assert edits == expected.learned and {e["kind"] for e in edits["edits"]} == {"add_sense"}
    assert edits["provenance"]["budget_nats"] == 0.05
    assert edits["provenance"]["general_loss_increase_nats"] <= 0.05
    shown = [d.value for d in at.dataframe if list(d.value.columns)[:2] == ["token", "sense"]]
    assert len(shown) == 1 and list(shown[0]["sense"]) == [s["sense"] for s in expected.senses]
    assert not any("Nothing was learned" in str(e.value) for e in at.error)
    # the page now shows the learned edits like any other (one row each)
    assert len(views.edit_rows(edits)) == len(edits["edits"]) >= 1
