"""The Steer page's export section and edit packs, under AppTest on the tiny model (the
fixtures and helpers of tests/test_app.py)."""

from __future__ import annotations

import io
import json
import zipfile

import torch

from backpack_core.edit.export import make_pack
from backpack_core.edit.specs import EditSet
from backpack_core.model.backpack import Backpack
from backpack_core.model.config import ModelConfig
from backpack_core.model.fingerprint import weights_fingerprint
from backpack_core.model.loading import load_backpack
from tests import test_app
from tests.test_app import TEXT, messages, ok, page

app_model = test_app.app_model  # the fixture: the app's default model is the tiny model
views = test_app.views  # app/views.py, imported as the app imports it

EDITS = {"version": 1, "name": "no river", "edits": [
    {"kind": "ablate_sense", "word": " river", "sense": "all"},
    {"kind": "scale_contextualization", "word": " bank", "sense": [0, 1], "factor": 0.0}]}


def logits_agree(directory, model, tokenizer, edits) -> bool:
    exported, _ = load_backpack(directory)
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        want = model(ids, intervention=EditSet.from_dict(edits).compile(model, tokenizer)).logits
        return bool((exported(ids).logits - want).abs().max() < 1e-5)


def test_export_to_an_allowed_directory_and_as_a_zip(app_model, tmp_path, monkeypatch):
    model, tokenizer = app_model
    monkeypatch.setenv("BACKPACK_MODEL_ROOTS", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    at = ok(page("steer", text=TEXT))
    assert at.button(key="steer:export").disabled  # nothing to export yet
    at.text_area(key="steer:json").input(json.dumps(EDITS))
    at.button(key="steer:apply-json").click().run()
    assert ok(at).text_input(key="steer:title").value == "no river"
    at.text_input(key="steer:title").input("River gone").run()
    assert ok(at).session_state["edit_set"]["name"] == "River gone"

    at.text_input(key="steer:export-dir").input(str(tmp_path / "elsewhere")).run()
    at.button(key="steer:export").click().run()
    assert "outside the model directories this server may open" in messages(ok(at))
    assert not (tmp_path / "elsewhere").exists()

    target = tmp_path / "runs" / "edited"
    at.text_input(key="steer:export-dir").input(str(target)).run()
    at.button(key="steer:export").click().run()
    ok(at)
    assert "Exported 1 token(s) with replaced senses and 1 with scaled" in at.success[0].value
    assert logits_agree(target, model, tokenizer, EDITS)
    card = (target / "README.md").read_text()
    assert card.startswith("# River gone") and weights_fingerprint(model) in card

    at.button(key="steer:export-zip").click().run()
    ok(at)
    data = at.session_state["steer:exported"]["zip"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert "edited-model/model.safetensors" in archive.namelist()
        archive.extractall(tmp_path / "unzipped")
    assert logits_agree(tmp_path / "unzipped" / "edited-model", model, tokenizer, EDITS)
    assert at.get("download_button")[-1].label == "Download the edited model (zip)"


def test_the_operator_can_turn_off_exports_to_the_server(app_model, tmp_path, monkeypatch):
    """BACKPACK_SERVER_EXPORT=0: no directory field nor Export button, a line saying why; the
    view refuses too (one message); the zip download still works."""
    monkeypatch.setenv("BACKPACK_MODEL_ROOTS", str(tmp_path))
    monkeypatch.setenv("BACKPACK_SERVER_EXPORT", "0")
    at = ok(page("steer", text=TEXT))
    at.text_area(key="steer:json").input(json.dumps(EDITS))
    at.button(key="steer:apply-json").click().run()
    ok(at)
    keys = {b.key for b in at.button}
    assert "steer:export" not in keys and "steer:export-zip" in keys
    assert "steer:export-dir" not in {t.key for t in at.text_input}
    assert any("BACKPACK_SERVER_EXPORT=0" in c.value for c in at.caption)
    model, tokenizer = app_model
    try:
        views.export_to_directory(EDITS, model, tokenizer, str(tmp_path / "x"), "tiny")
    except ValueError as err:
        assert "turned off on this server" in str(err) and "zip download" in str(err)
    else:
        raise AssertionError("the export was not refused")
    assert not (tmp_path / "x").exists()
    at.button(key="steer:export-zip").click().run()
    assert ok(at).session_state["steer:exported"]["zip"]


def test_unexportable_edit_is_a_message(app_model, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPACK_MODEL_ROOTS", str(tmp_path))
    at = ok(page("steer", text=TEXT))
    edits = {"version": 1, "edits": [{"kind": "ablate_sense", "word": " river", "sense": 1,
                                      "positions": [9]}]}
    at.text_area(key="steer:json").input(json.dumps(edits))
    at.button(key="steer:apply-json").click().run()
    at.text_input(key="steer:export-dir").input(str(tmp_path / "x")).run()
    at.button(key="steer:export").click().run()
    assert "edit 0 (ablate_sense: ablate sense 1 of ' river' at positions [9]) cannot be " \
           "exported" in messages(ok(at))
    assert not (tmp_path / "x").exists()


def test_download_is_a_pack_and_foreign_packs_need_apply_anyway(app_model):
    model, tokenizer = app_model
    pack = EditSet.from_json(views.pack_json(EDITS, model, tokenizer, "tiny"))
    assert pack.pack["base_model"] == weights_fingerprint(model) and pack.name == "no river"

    torch.manual_seed(3)
    other = Backpack(ModelConfig(**{**model.config.to_dict(), "num_senses": 2})).eval()
    foreign = make_pack({**EDITS, "edits": EDITS["edits"] + [
        {"kind": "scale_sense", "word": " bank", "sense": 1, "factor": 2.0}]}, other, tokenizer,
        base_model_name="other")
    foreign = {**foreign.to_dict(), "edits": foreign.to_dict()["edits"][:1] + [
        {"kind": "ablate_sense", "word": " bank", "sense": 3},  # fits here (k = 4)
        {"kind": "replace_sense", "word": " bank", "sense": 0, "vector": [1.0] * 16}]}  # d = 32
    at = ok(page("steer", text=TEXT))
    at.file_uploader(key="steer:upload").upload("pack.json", json.dumps(foreign).encode(),
                                                "application/json")
    at.run()
    assert "was made on another model ('other'" in messages(ok(at))
    assert at.session_state["edit_set"]["edits"] == []

    at.checkbox(key="steer:apply-anyway").check().run()
    at.file_uploader(key="steer:upload").upload("pack.json", json.dumps(foreign).encode(),
                                                "application/json")
    at.run()
    ok(at)
    assert [e["kind"] for e in at.session_state["edit_set"]["edits"]] == ["ablate_sense"] * 2
    assert "left out 1 edit(s)" in messages(at) and "edit 2: 'vector' has 16 numbers" in messages(at)
    assert "pack" not in at.session_state["edit_set"]  # the session's set records no model
