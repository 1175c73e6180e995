"""Exported edited models (backpack_core.edit.export): the directory computes what the session
computes under the edits (logits to 1e-5 in float32, the same greedy tokens, with and without
the generation cache, in plain PyTorch and through transformers in a fresh process); an empty
edit set exports the base model exactly; unexportable edits and mismatched packs are refused
naming what and why; the base model's files are never changed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from backpack_core import Backpack, ModelConfig, load_backpack, save_backpack
from backpack_core.edit.export import (
    PACK_FILE,
    ExportError,
    PackError,
    check_pack,
    edited_model,
    export_edited_model,
    make_pack,
    override_tables,
)
from backpack_core.edit.generation import generate
from backpack_core.edit.specs import EditError, EditSet, as_edit_set
from backpack_core.model.config import PRESETS
from backpack_core.model.fingerprint import weights_fingerprint
from backpack_core.model.loading import DEFAULT_MODEL_DIR
from tests.conftest import HANG_S, TINY_CORPUS

REPO_ROOT = Path(__file__).resolve().parent.parent

# every exportable kind, with overlaps: two sense edits on one word (order matters), two
# scalings of one word's weights (they multiply), a replace to 0 (a scaling by 0)
EDITS = {"version": 1, "name": "tiny edits", "description": "for the round trip", "edits": [
    {"kind": "knowledge_edit", "word": " MacBook", "remove": " Apple", "add": " HP",
     "note": "the paper's edit"},
    {"kind": "scale_sense", "word": " bank", "sense": [1, 2], "factor": 3.0},
    {"kind": "ablate_sense", "word": " bank", "sense": 2},
    {"kind": "replace_sense", "word": " money", "sense": 0, "source": {"word": " river", "sense": 1}},
    {"kind": "replace_sense", "word": " laptop", "sense": 3, "vector": [0.5] * 32},
    {"kind": "add_sense", "word": " science", "senses": [2, 0],
     "delta": [[0.1 * (i % 7) for i in range(32)], [-0.2] * 32]},
    {"kind": "add_sense", "word": " bank", "senses": [1], "delta": [[0.3] * 32]},
    {"kind": "scale_contextualization", "word": " river", "sense": [0, 3], "factor": 0.25},
    {"kind": "scale_contextualization", "word": " river", "sense": 0, "factor": 2.0},
    {"kind": "scale_contextualization", "word": " the", "sense": "all", "factor": 1.5},
    {"kind": "replace_contextualization", "word": " science", "sense": 1, "value": 0},
]}
TEXT = " ".join(TINY_CORPUS[i] for i in (0, 2, 4))  # every edited word, < 64 tokens


def file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """(base model, tokenizer, exported directory, base files' hashes before the export)."""
    before = file_hashes(tiny_model_dir)
    model, tokenizer = load_backpack(tiny_model_dir)
    out = tmp_path_factory.mktemp("export") / "edited"
    result = export_edited_model(model, tokenizer, EDITS, out, base_name="tiny")
    assert result.sizes == {"sense_tokens": 5, "contextualization_tokens": 3}
    return model, tokenizer, out, before


def session_logits(model, tokenizer, ids, edits, attention_mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=attention_mask,
                     intervention=as_edit_set(edits).compile(model, tokenizer)).logits


def test_exported_logits_equal_the_session_and_base_files_unchanged(exported, tiny_model_dir):
    model, tokenizer, out, before = exported
    edited, edited_tokenizer = load_backpack(out)
    ids = torch.tensor([tokenizer.encode(TEXT)])
    want = session_logits(model, tokenizer, ids, EDITS)
    with torch.no_grad():
        got = edited(ids).logits
        base = model(ids).logits
    assert (got - want).abs().max() < 1e-5
    assert (base - want).abs().max() > 0.1  # the edits do change the predictions
    # left padding, two rows: the real positions agree too
    other = tokenizer.encode(TINY_CORPUS[3])
    n = ids.shape[1]
    padded = torch.tensor([[0] * (n - len(other)) + other, ids[0].tolist()])
    mask = torch.tensor([[0] * (n - len(other)) + [1] * len(other), [1] * n])
    want = session_logits(model, tokenizer, padded, EDITS, mask)
    with torch.no_grad():
        got = edited(padded, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max() < 1e-5
    assert edited_tokenizer.encode(TEXT) == ids[0].tolist()
    assert file_hashes(tiny_model_dir) == before  # the base model's files were only read


def test_exported_senses_are_the_edited_senses(exported):
    """Readouts and the sense bank read `sense_vectors`: they show the carried edits."""
    model, tokenizer, out, _ = exported
    edited, _ = load_backpack(out)
    compiled = as_edit_set(EDITS).compile(model, tokenizer)
    ids = torch.arange(model.config.vocab_size)[None]
    with torch.no_grad():
        want = compiled.on_senses(model.sense_vectors(ids).permute(0, 2, 1, 3), ids,
                                  torch.zeros_like(ids)).permute(0, 2, 1, 3)
        got = edited.sense_vectors(ids)
    assert (got - want).abs().max() < 1e-5
    bank = tokenizer.encode(" bank")[0]
    assert float(got[0, bank, 2].abs().max()) == 0.0  # ablated
    assert weights_fingerprint(edited) != weights_fingerprint(model)


def test_exported_generation_equals_the_session_with_and_without_cache(exported):
    from backpack_core.model.hf import BackpackLM

    model, tokenizer, out, _ = exported
    edited, _ = load_backpack(out)
    ids = torch.tensor([tokenizer.encode("The bank by the river has money. The MacBook")])
    greedy = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    compiled = as_edit_set(EDITS).compile(model, tokenizer)
    session, plain = BackpackLM.from_backpack(model), BackpackLM.from_backpack(edited)
    with torch.no_grad():
        want = session.generate(ids, intervention=compiled, use_cache=True, **greedy)
        assert torch.equal(session.generate(ids, intervention=compiled, use_cache=False, **greedy),
                           want)
        assert not torch.equal(session.generate(ids, use_cache=True, **greedy), want)
        assert torch.equal(plain.generate(ids, use_cache=True, **greedy), want)
        assert torch.equal(plain.generate(ids, use_cache=False, **greedy), want)


CLIENT = textwrap.dedent("""
    import json, sys
    import backpack_core  # registers the Auto classes when transformers is imported
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    path, prompt = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].tolist()
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    cached = model.generate(ids, use_cache=True, **greedy)[0].tolist()
    uncached = model.generate(ids, use_cache=False, **greedy)[0].tolist()
    text = pipeline("text-generation", model=path)(prompt, **greedy)[0]["generated_text"]
    print(json.dumps({"model": type(model).__name__, "ids": ids[0].tolist(), "logits": logits,
                      "cached": cached, "uncached": uncached, "pipeline": text,
                      "decoded": tokenizer.decode(cached)}))
""")


def transformers_client(directory: Path, prompt: str, cwd: Path) -> dict:
    """What a fresh process sees through transformers alone (after `import backpack_core`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CLIENT, str(directory), prompt], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_S, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_client_against_session(out: dict, model, tokenizer, edits, prompt: str) -> None:
    ids = torch.tensor([out["ids"]])
    assert out["ids"] == tokenizer.encode(prompt)
    want = session_logits(model, tokenizer, ids, edits)[0]
    assert out["model"] == "BackpackLM"
    assert (torch.tensor(out["logits"]) - want).abs().max() < 1e-5
    from backpack_core.model.hf import BackpackLM

    with torch.no_grad():
        expected = BackpackLM.from_backpack(model).generate(
            ids, intervention=as_edit_set(edits).compile(model, tokenizer), max_new_tokens=12,
            do_sample=False, pad_token_id=tokenizer.eos_token_id)[0].tolist()
    assert out["cached"] == out["uncached"] == expected
    assert out["pipeline"] == out["decoded"]


def test_transformers_in_a_fresh_process_matches_the_session(exported, tmp_path):
    model, tokenizer, out, _ = exported
    prompt = "The MacBook is made by the river bank"
    client = transformers_client(out, prompt, tmp_path)
    check_client_against_session(client, model, tokenizer, EDITS, prompt)


def test_empty_edit_set_exports_the_base_model(tiny_model, tiny_tokenizer, tmp_path):
    result = export_edited_model(tiny_model, tiny_tokenizer, {"version": 1, "edits": []},
                                 tmp_path / "same")
    assert result.sizes == {"sense_tokens": 0, "contextualization_tokens": 0}
    same, _ = load_backpack(tmp_path / "same")
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    with torch.no_grad():
        assert torch.equal(same(ids).logits, tiny_model(ids).logits)
        assert torch.equal(same(ids, output_contextualization=True).logits,
                           tiny_model(ids, output_contextualization=True).logits)
    assert (generate(same, tiny_tokenizer, "The bank", max_new_tokens=10)
            == generate(tiny_model, tiny_tokenizer, "The bank", max_new_tokens=10))
    assert "(none: this model computes exactly what the base model computes)" in (
        tmp_path / "same" / "README.md").read_text()


def test_exporting_an_exported_model_composes(exported, tmp_path):
    """Edits on top of an edited model: the new tables hold both sets, in order."""
    model, tokenizer, out, _ = exported
    edited, _ = load_backpack(out)
    more = {"version": 1, "edits": [
        {"kind": "scale_sense", "word": " bank", "sense": 1, "factor": -1.0},
        {"kind": "ablate_sense", "word": " is", "sense": 0},
        {"kind": "scale_contextualization", "word": " river", "sense": 0, "factor": 4.0}]}
    export_edited_model(edited, tokenizer, more, tmp_path / "twice")
    twice, _ = load_backpack(tmp_path / "twice")
    ids = torch.tensor([tokenizer.encode(TEXT)])
    both = EditSet.from_dict(EDITS) + EditSet.from_dict(more)
    with torch.no_grad():
        got = twice(ids).logits
    assert (got - session_logits(model, tokenizer, ids, both)).abs().max() < 1e-5


def test_model_card_lists_edits_provenance_and_fingerprint(exported):
    model, tokenizer, out, _ = exported
    card = (out / "README.md").read_text()
    assert card.startswith("# tiny edits\n\nfor the round trip")
    assert weights_fingerprint(model) in card
    for edit in EditSet.from_dict(EDITS):
        assert edit.describe() in card
    assert "the paper's edit" in card  # the note
    config = json.loads((out / "config.json").read_text())
    assert config["edit_overrides"] == {"sense_tokens": 5, "contextualization_tokens": 3}
    assert config["edited_from"]["base_model"] == weights_fingerprint(model)
    pack = EditSet.load(out / PACK_FILE)
    assert pack.pack["base_model"] == weights_fingerprint(model)
    assert [e.to_dict() for e in pack] == [e.to_dict() for e in EditSet.from_dict(EDITS)]


@pytest.mark.parametrize("edit, reason", [
    ({"kind": "ablate_sense", "word": " bank", "sense": 1, "positions": [3]},
     "restricts it to text positions [3]"),
    ({"kind": "scale_contextualization", "word": " bank", "sense": 1, "factor": 0.5,
      "renormalize": True}, "renormalises rows"),
    ({"kind": "replace_contextualization", "word": " bank", "sense": 1, "value": 0.3},
     "sets contextualization weights (to a value other than 0)"),
    ({"kind": "replace_contextualization", "sense": 1, "weights": [[0.0, 1.0], [0.5, 0.5]]},
     "matrix over text positions"),
    ({"kind": "replace_contextualization", "sense": 1, "value": 0, "query_positions": [2]},
     "'query_positions' restricts it"),
])
def test_unexportable_edits_are_refused_naming_the_edit(tiny_model, tiny_tokenizer, tmp_path,
                                                        edit, reason):
    edits = {"version": 1, "edits": [{"kind": "ablate_sense", "word": " river", "sense": 0}, edit]}
    with pytest.raises(ExportError) as err:
        export_edited_model(tiny_model, tiny_tokenizer, edits, tmp_path / "no")
    message = str(err.value)
    assert message.startswith(f"edit 1 ({edit['kind']}: ") and reason in message
    assert "\n" not in message
    assert not (tmp_path / "no").exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_and_non_float32(tiny_model, tiny_tokenizer, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(ExportError, match="already holds files"):
        export_edited_model(tiny_model, tiny_tokenizer, EDITS, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep"
    half = edited_model(tiny_model, override_tables(tiny_model, tiny_tokenizer, [])).to(
        torch.bfloat16)
    with pytest.raises(ExportError, match="load it in float32"):
        export_edited_model(half, tiny_tokenizer, EDITS, tmp_path / "half")


# ----------------------------------------------------------------------------------------------
# Packs
# ----------------------------------------------------------------------------------------------

def other_model(num_senses: int = 4) -> Backpack:
    torch.manual_seed(1)
    return Backpack(ModelConfig(**{**PRESETS["tiny"], "num_senses": num_senses})).eval()


def test_pack_round_trip_and_same_model(tiny_model, tiny_tokenizer):
    pack = make_pack(EDITS, tiny_model, tiny_tokenizer, title="MacBook by HP",
                     description="d", base_model_name="tiny")
    again = EditSet.from_json(pack.to_json())
    assert again.name == "MacBook by HP" and again.description == "d"
    assert again.pack == pack.pack and again.pack["base_model"] == weights_fingerprint(tiny_model)
    checked = check_pack(again, tiny_model, tiny_tokenizer)
    assert checked.same_model and len(checked.edit_set) == len(EDITS["edits"])
    # an old edit set (no "pack") loads and applies as before
    old = check_pack(json.dumps(EDITS), tiny_model, tiny_tokenizer)
    assert old.same_model and old.edit_set.pack is None and len(old.edit_set) == 11


def test_pack_on_another_model_is_refused_unless_applied_anyway(tiny_model, tiny_tokenizer):
    pack = make_pack(EDITS, tiny_model, tiny_tokenizer, title="MacBook by HP",
                     base_model_name="tiny")
    other = other_model(num_senses=2)  # same tokenizer; senses 2 and 3 do not exist there
    with pytest.raises(PackError) as err:
        check_pack(pack, other, tiny_tokenizer)
    assert "'MacBook by HP' was made on another model ('tiny'" in str(err.value)
    assert "--apply-anyway" in str(err.value)
    checked = check_pack(pack, other, tiny_tokenizer, apply_anyway=True)
    assert not checked.same_model
    left_out = [u["index"] for u in checked.unresolved]
    assert left_out == [1, 2, 4, 5, 7]  # the edits naming sense 2 or 3 (on a model with 2)
    assert all("out of range" in u["reason"] or "d =" in u["reason"]
               for u in checked.unresolved)
    assert len(checked.edit_set) == 11 - 5
    checked.edit_set.compile(other, tiny_tokenizer)  # the rest applies


def test_pack_with_another_tokenizer_is_refused_even_anyway(tiny_model, tiny_tokenizer):
    from backpack_core import train_bpe

    pack = make_pack(EDITS, tiny_model, tiny_tokenizer)
    tokenizer = train_bpe(TINY_CORPUS[:3] * 20, vocab_size=300)
    for anyway in (False, True):
        with pytest.raises(PackError, match="with another tokenizer .* so it is refused"):
            check_pack(pack, other_model(), tokenizer, apply_anyway=anyway)


def test_malformed_pack_is_refused(tiny_model, tiny_tokenizer):
    data = {**EDITS, "pack": {"format": 1, "base_model": "abc", "tokenizer": "0" * 64}}
    with pytest.raises(PackError, match="'base_model' must be a sha256"):
        check_pack(data, tiny_model, tiny_tokenizer)
    with pytest.raises(EditError, match="'pack' must be an object"):
        EditSet.from_dict({**EDITS, "pack": [1]})


def test_export_applies_a_pack_anyway_and_lists_the_rest(tiny_model, tiny_tokenizer, tmp_path):
    pack = make_pack(EDITS, tiny_model, tiny_tokenizer, base_model_name="tiny")
    other = other_model(num_senses=2)
    with pytest.raises(PackError):
        export_edited_model(other, tiny_tokenizer, pack, tmp_path / "a")
    result = export_edited_model(other, tiny_tokenizer, pack, tmp_path / "b", apply_anyway=True)
    assert [u["index"] for u in result.unresolved] == [1, 2, 4, 5, 7]
    card = (tmp_path / "b" / "README.md").read_text()
    assert "Left out" in card and "edit 4:" in card
    assert f"made on another model (fingerprint `{weights_fingerprint(tiny_model)}`)" in card
    written = EditSet.load(tmp_path / "b" / PACK_FILE).pack
    assert written["base_model"] == weights_fingerprint(other)
    assert written["adapted_from"] == weights_fingerprint(tiny_model)


# ----------------------------------------------------------------------------------------------
# The command, and the shipped model end to end
# ----------------------------------------------------------------------------------------------

def run_cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "analyses.export_edited", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=HANG_S, env=env)


def test_cli_refusal_is_one_line(tiny_model_dir, tmp_path):
    edits = tmp_path / "e.json"
    edits.write_text(json.dumps({"version": 1, "edits": [
        {"kind": "ablate_sense", "word": " bank", "sense": 1, "positions": [0, 2]}]}))
    proc = run_cli("--model", str(tiny_model_dir), "--edits", str(edits), "--out",
                   str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "export_edited: error: edit 0 (ablate_sense: ablate sense 1 of ' bank' at positions "
        "[0, 2]) cannot be exported: its 'positions' restricts it to text positions [0, 2]; an "
        "exported model applies an edit to every occurrence of a word. Leave out the positions "
        "to export it"]


@pytest.mark.slow
def test_shipped_model_end_to_end(tmp_path):
    """The command on the shipped model, then transformers in a fresh process."""
    model, tokenizer = load_backpack()
    word = next(w for w in (" bank", " river", " money") if len(tokenizer.encode(w)) == 1)
    edits = {"version": 1, "name": "shipped", "edits": [
        {"kind": "ablate_sense", "word": word, "sense": [0, 5, 9]},
        {"kind": "scale_sense", "word": " the", "sense": "all", "factor": 0.5},
        {"kind": "scale_contextualization", "word": " of", "sense": "all", "factor": 0.0}]}
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(edits))
    before = file_hashes(DEFAULT_MODEL_DIR)
    proc = run_cli("--edits", str(path), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["edit_overrides"] == {"sense_tokens": 2, "contextualization_tokens": 1}
    assert result["base_fingerprint"] == weights_fingerprint(model)
    assert file_hashes(DEFAULT_MODEL_DIR) == before
    prompt = f"The man went to the{word} of the"
    client = transformers_client(tmp_path / "out", prompt, tmp_path)
    check_client_against_session(client, model, tokenizer, edits, prompt)


def test_save_backpack_round_trips_a_model_carrying_edits(tiny_model, tiny_tokenizer, tmp_path):
    """save_backpack / load_backpack and BackpackLM.save_pretrained keep the tables."""
    edited = edited_model(tiny_model, override_tables(tiny_model, tiny_tokenizer, EDITS))
    save_backpack(edited, tiny_tokenizer, tmp_path / "a")
    again, _ = load_backpack(tmp_path / "a")
    from backpack_core.model.hf import BackpackLM

    BackpackLM.from_backpack(again).save_pretrained(tmp_path / "b")
    third = BackpackLM.from_pretrained(tmp_path / "b").backpack
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    with torch.no_grad():
        want = edited(ids).logits
        assert torch.equal(again(ids).logits, want) and torch.equal(third(ids).logits, want)


def test_commands_check_packs(exported, tiny_model_dir, capsys):
    """The edit pack written beside an exported model applies to its base model in the
    commands; on the exported model itself (the edits would apply twice) it is refused."""
    from analyses import steer

    _, _, out, _ = exported
    argv = ["--text", "The bank by the river", "--edits", str(out / PACK_FILE), "--json"]
    assert steer.main(["--model", str(tiny_model_dir), *argv]) == 0
    assert json.loads(capsys.readouterr().out)["kl"] > 0
    with pytest.raises(PackError, match="was made on another model \\('tiny'"):
        steer.main(["--model", str(out), *argv])
    assert steer.main(["--model", str(out), "--apply-anyway", *argv]) == 0


def test_save_in_bfloat16_keeps_token_ids_and_masks(tiny_model, tiny_tokenizer, tmp_path):
    """save_backpack(dtype=...) casts floating tensors only: an exported model's id tables and
    masks stay int64 and bool (they were cast to bfloat16, ids above 256 rounded)."""
    edited = edited_model(tiny_model, override_tables(tiny_model, tiny_tokenizer, EDITS))
    save_backpack(edited, tiny_tokenizer, tmp_path, dtype=torch.bfloat16)
    again, _ = load_backpack(tmp_path, dtype="bfloat16")
    carried = again.edit_overrides
    assert carried.sense_token_ids.dtype == torch.int64 and carried.sense_mask.dtype == torch.bool
    assert torch.equal(carried.sense_token_ids, edited.edit_overrides.sense_token_ids)
    assert carried.senses.dtype == torch.bfloat16


def test_sense_bank_and_atlas_see_the_carried_edits(exported, tmp_path, monkeypatch):
    from backpack_core.interpret.atlas import contextualization_and_senses
    from backpack_core.interpret.sense_bank import SenseBank, model_fingerprint

    model, tokenizer, out, _ = exported
    edited, _ = load_backpack(out)
    assert model_fingerprint(edited) != model_fingerprint(model)
    monkeypatch.setenv("BACKPACK_CACHE", str(tmp_path))
    SenseBank.for_model(model)  # the base model's bank is cached first: it must not be reused
    bank = SenseBank.for_model(edited)
    assert torch.allclose(bank.senses.float(),
                          edited.sense_vectors(torch.arange(model.config.vocab_size)).float(),
                          atol=1e-6)
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        forward = edited(ids, output_contextualization=True, output_senses=True)
        contextualization, senses = contextualization_and_senses(edited, ids)
    assert torch.allclose(contextualization, forward.contextualization, atol=1e-6)
    assert torch.allclose(senses, forward.senses, atol=1e-6)


def test_a_failed_write_leaves_nothing_behind(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    import backpack_core.edit.export as export

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_text_atomic", full_disk)
    with pytest.raises(ExportError, match="cannot write the exported model .*No space left"):
        export_edited_model(tiny_model, tiny_tokenizer, EDITS, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_help_imports_no_torch_and_json_errors(tiny_model_dir, tmp_path):
    code = ("import runpy, sys\nsys.argv = ['export_edited', '--help']\ntry:\n"
            "    runpy.run_module('analyses.export_edited', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=HANG_S, env=env)
    assert "--apply-anyway" in proc.stdout and proc.stdout.strip().endswith("torch imported: False")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    proc = run_cli("--model", str(tiny_model_dir), "--edits", json.dumps(EDITS), "--out",
                   str(tmp_path / "full"), "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["kind"] == "edit" and "already holds files" in proc.stdout


@pytest.mark.parametrize("value, message", [
    ({"sense_tokens": 10**12, "contextualization_tokens": 0}, "from 0 to vocab_size (512)"),
    ({"sense_tokens": -1, "contextualization_tokens": 0}, "from 0 to vocab_size (512)"),
    ({"sense_tokens": 1}, "exactly sense_tokens, contextualization_tokens"),
    ([1, 2], "must be an object"),
])
def test_config_edit_overrides_are_checked(tiny_model_dir, tmp_path, value, message):
    import shutil

    from backpack_core.model.loading import CheckpointError

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "edit_overrides": value}))
    with pytest.raises(CheckpointError, match=f"Invalid model config: edit_overrides.*{re.escape(message)}"):
        load_backpack(tmp_path / "m")


def test_card_and_pack_keep_the_edit_sets_provenance(tiny_model, tiny_tokenizer, tmp_path):
    """A learned edit set (edit.finetune) says where it came from: the pack and the card keep it."""
    learned = {**EDITS, "provenance": {"method": "sense finetuning", "examples": 12, "kl": 0.01}}
    export_edited_model(tiny_model, tiny_tokenizer, learned, tmp_path / "out")
    pack = EditSet.load(tmp_path / "out" / PACK_FILE)
    assert pack.provenance == learned["provenance"]
    assert '"method": "sense finetuning"' in (tmp_path / "out" / "README.md").read_text()


def test_compounding_edits_that_overflow_are_refused(tiny_model, tiny_tokenizer, tmp_path):
    """Each factor is within the limits, but seven scalings of one word by 1e6 reach infinity:
    the export is refused (a model with infinite weights would not even load)."""
    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": 0,
                                      "factor": 1e6}] * 7}
    with pytest.raises(ExportError, match="overflow"):
        export_edited_model(tiny_model, tiny_tokenizer, edits, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_transformers_model_exports_too(tiny_model, tiny_tokenizer, tmp_path):
    from backpack_core.model.hf import BackpackLM

    lm = BackpackLM.from_backpack(tiny_model)
    export_edited_model(lm, tiny_tokenizer, EDITS, tmp_path / "a")
    export_edited_model(tiny_model, tiny_tokenizer, EDITS, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()
    assert check_pack(make_pack(EDITS, lm, tiny_tokenizer), tiny_model, tiny_tokenizer).same_model
