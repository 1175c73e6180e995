"""Edit sets measured over a corpus (backpack_core.interpret.edit_effects, analyses.evaluate_edits and
the Steer page's "Evaluate on a dataset"), checked against full forward passes on the tiny model:
the blast radius is exactly the set of positions whose logits change, the loss changes and the
strength sweep equal full passes with the edits applied, and nothing outside the radius moves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backpack_core import load_backpack
from backpack_core.common.corpus import read_corpus
from backpack_core.edit.specs import EditSet
from backpack_core.interpret.edit_effects import (
    PromptError,
    ScaledEdits,
    TargetPrompt,
    at_strength,
    evaluate_edits,
    naive_losses,
    parse_strengths,
    read_prompts,
)
from tests.conftest import HANG_S, TINY_CORPUS, strict_json

REPO = Path(__file__).resolve().parent.parent
SEQ, BATCH = 24, 3  # several batches of windows, and a short last window

EDIT_SETS = {
    "scale_sense": [{"kind": "scale_sense", "word": " bank", "sense": [1, 3], "factor": 2.5}],
    "ablate_at_positions": [{"kind": "ablate_sense", "word": " the", "sense": "all",
                             "positions": [3, 10, 17]}],
    "knowledge_edit": [{"kind": "knowledge_edit", "word": " MacBook", "remove": " Apple",
                        "add": " HP"}],
    "replace_sense": [{"kind": "replace_sense", "word": " river", "sense": 0,
                       "source": {"word": " money", "sense": 2}}],
    "scale_contextualization": [{"kind": "scale_contextualization", "word": " money",
                                 "sense": [0, 2], "factor": 3.0}],
    "replace_contextualization": [{"kind": "replace_contextualization", "sense": 1, "value": 0.2,
                                   "query_positions": [5, 6, 20], "source_positions": [2, 19]}],
    "two_edits": [{"kind": "scale_sense", "word": " science", "sense": "all", "factor": -1.0},
                  {"kind": "scale_contextualization", "word": " is", "sense": 3, "factor": 0.0}],
    "no_op": [{"kind": "scale_sense", "word": " bank", "sense": "all", "factor": 1.0}],
}


def edit_set(name: str) -> dict:
    return {"version": 1, "edits": EDIT_SETS[name]}


@pytest.fixture(scope="module")
def corpus(tiny_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(" ".join(TINY_CORPUS * 2))
    c = read_corpus(str(path), tiny_tokenizer)
    assert len(c) % SEQ and len(c) // SEQ > BATCH  # a short last window, several batches
    return c


def full_passes(model, tokenizer, corpus, edits, strength):
    """Independent reference: per scored position (corpus order) the NLL before and after, and
    per position whether any logit changed, from full forward passes with and without the
    intervention (the same non-fused path, so unchanged rows are bitwise equal)."""
    iv = at_strength(edits, strength, model, tokenizer)
    radius, inside, before, after = [], [], [], []
    with torch.inference_mode():
        for batch, starts in corpus.windows(SEQ, BATCH):
            base = model(batch, output_contextualization=True).logits
            edited = model(batch, intervention=iv).logits
            changed = (edited != base).any(-1)  # (b, s)
            offsets = starts[:, None] + torch.arange(batch.shape[1])
            radius += offsets[changed].tolist()
            inside.append(changed[:, :-1].flatten())  # scored positions: all but the last
            for logits, out in ((base, before), (edited, after)):
                out.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(),
                                           reduction="none"))
    return {"radius": sorted(radius), "before": torch.cat(before), "after": torch.cat(after),
            "inside": torch.cat(inside)}


def test_the_radius_is_read_off_the_weights_in_the_models_dtype(tiny_model, tiny_tokenizer, corpus):
    """Documented (module docstring, "Blast radius"; issue 20, item 14): the radius is read off
    the weights as the model computes them, float32 by default, where a weight below ~7e-46
    underflows to exactly 0, so its term cannot change and its position can fall outside the
    radius (rightly: its float32 logits do not move), and scaling a tiny weight by 1 + s (f - 1)
    may round back to it, so the radius can differ by strength. A float64 model (no underflow
    here) has every position at or after an occurrence of the word. "all" does not depend on
    the radius; "inside" (a mean over it) does."""
    import copy

    sharp = copy.deepcopy(tiny_model)
    with torch.no_grad():
        sharp.sense_weight_network.c_attn.weight.mul_(100.0)  # many weights underflow
    edits = {"version": 1, "edits": [{"kind": "scale_contextualization", "word": " the",
                                      "sense": "all", "factor": 1.5}]}
    run = dict(strengths=[0.001, 1], seq_len=SEQ, batch_size=BATCH, progress=False)
    r32 = evaluate_edits(sharp, tiny_tokenizer, edits, corpus, **run)
    r64 = evaluate_edits(copy.deepcopy(sharp).double(), tiny_tokenizer, edits, corpus, **run)
    the = tiny_tokenizer.encode(" the")[0]
    after_word = sum(int((batch == the).long().cummax(1).values.sum())
                     for batch, _ in corpus.windows(SEQ, BATCH))  # positions at/after " the"
    assert [r.radius for r in r64.sweep] == [after_word, after_word]
    assert r32.at(0.001).radius < r32.at(1.0).radius < after_word
    moved = full_passes(sharp, tiny_tokenizer, corpus, edits, 1.0)["radius"]
    assert set(moved) <= set(r32.blast_radius)  # outside it the float32 logits do not move
    one32, one64 = r32.at(1.0), r64.at(1.0)
    assert one32.loss_change["all"] == pytest.approx(one64.loss_change["all"], rel=1e-5)
    assert one32.loss_change["inside"] > one64.loss_change["inside"] * 1.1


@pytest.mark.parametrize("name", list(EDIT_SETS))
def test_blast_radius_is_exactly_where_the_logits_change(name, tiny_model, tiny_tokenizer, corpus):
    result = evaluate_edits(tiny_model, tiny_tokenizer, edit_set(name), corpus, strengths=[1],
                            seq_len=SEQ, batch_size=BATCH, progress=False)
    ref = full_passes(tiny_model, tiny_tokenizer, corpus, edit_set(name), 1.0)
    assert result.blast_radius == ref["radius"]
    if name == "no_op":
        assert ref["radius"] == []
    else:
        assert 0 < len(ref["radius"]) < len(corpus)
    # outside the radius the loss is exactly unchanged, in the full passes too
    outside = ~ref["inside"]
    assert torch.equal(ref["after"][outside], ref["before"][outside])
    one = result.at(1.0)
    assert one.loss_change["outside"] == 0.0
    assert one.scored_inside == int(ref["inside"].sum())
    assert result.scored == ref["before"].numel()


def test_the_radius_follows_the_word_and_its_positions(tiny_model, tiny_tokenizer, corpus):
    """Sense edits: positions at or after an occurrence of the word in the same window."""
    bank = tiny_tokenizer.encode(" bank")[0]
    expected = []
    for batch, starts in corpus.windows(SEQ, BATCH):
        for row, start in zip(batch, starts.tolist()):
            hits = (row == bank).nonzero()
            if hits.numel():
                expected += range(start + int(hits[0]), start + len(row))
    result = evaluate_edits(tiny_model, tiny_tokenizer, edit_set("scale_sense"), corpus,
                            strengths=[1], seq_len=SEQ, batch_size=BATCH, progress=False)
    assert result.blast_radius == expected


@pytest.mark.parametrize("name", ["knowledge_edit", "scale_contextualization", "two_edits"])
def test_sweep_equals_full_passes_at_each_strength(name, tiny_model, tiny_tokenizer, corpus):
    strengths = [-0.5, 0.0, 0.5, 1.0, 2.0, 3.0]
    result = evaluate_edits(tiny_model, tiny_tokenizer, edit_set(name), corpus, strengths=strengths,
                            seq_len=SEQ, batch_size=BATCH, progress=False)
    assert result.strengths == strengths
    ref0 = full_passes(tiny_model, tiny_tokenizer, corpus, edit_set(name), 0.0)
    assert result.loss_before == pytest.approx(float(ref0["before"].double().mean()), abs=1e-6)
    for s in strengths:
        ref = full_passes(tiny_model, tiny_tokenizer, corpus, edit_set(name), s)
        row = result.at(s)
        delta = (ref["after"] - ref["before"]).double()
        assert row.loss_change["all"] == pytest.approx(float(delta.mean()), abs=1e-5)
        assert row.scored_inside == int(ref["inside"].sum())
        if s == 0.0:
            assert row.radius == 0 and row.loss_change["all"] == 0.0
        else:
            assert row.loss_change["inside"] == pytest.approx(float(delta[ref["inside"]].mean()),
                                                              abs=1e-5)
            assert row.loss_after["inside"] == pytest.approx(
                float(ref["after"][ref["inside"]].double().mean()), abs=1e-5)
        # the reference the bench uses agrees too
        naive = naive_losses(tiny_model, tiny_tokenizer, edit_set(name), corpus, s, SEQ, BATCH)
        assert torch.allclose(naive, ref["after"], atol=1e-5)


def test_the_transformer_runs_once_per_window(tiny_model, tiny_tokenizer, corpus, monkeypatch):
    calls = []
    original = tiny_model.contextualizer.forward
    monkeypatch.setattr(tiny_model.contextualizer, "forward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    evaluate_edits(tiny_model, tiny_tokenizer, edit_set("two_edits"), corpus,
                   strengths=[0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6], seq_len=SEQ, batch_size=BATCH,
                   progress=False)
    assert len(calls) == corpus.n_batches(SEQ, BATCH)


def test_strength_scales_each_edits_change(tiny_model, tiny_tokenizer):
    """scale_sense by f at strength s is a scaling by 1 + s (f - 1); ablate_sense one by 1 - s;
    scale_contextualization by f one by max(0, 1 + s (f - 1)); strength 0 changes nothing."""
    ids = torch.tensor([tiny_tokenizer.encode(TINY_CORPUS[2] + " " + TINY_CORPUS[3])])

    def logits(edits):
        with torch.inference_mode():
            return tiny_model(ids, intervention=edits).logits

    def spec(kind, factor=None, **extra):
        edit = {"kind": kind, "word": " bank", "sense": [0, 2], **extra}
        if factor is not None:
            edit["factor"] = factor
        return EditSet.from_dict({"version": 1, "edits": [edit]}).compile(tiny_model, tiny_tokenizer)

    base = logits(spec("scale_sense", 1.0))
    for s in (0.0, 0.5, 2.0, -1.0):
        assert torch.allclose(logits(ScaledEdits(spec("scale_sense", 3.0), s)),
                              logits(spec("scale_sense", 1 + s * 2.0)), atol=1e-4)
        assert torch.allclose(logits(ScaledEdits(spec("ablate_sense"), s)),
                              logits(spec("scale_sense", 1 - s)), atol=1e-4)
        factor = max(0.0, 1 + s * (0.0 - 1))
        assert torch.allclose(logits(ScaledEdits(spec("scale_contextualization", 0.0), s)),
                              logits(spec("scale_contextualization", factor)), atol=1e-5)
    assert torch.equal(logits(ScaledEdits(spec("knowledge_edit", remove=" Apple", add=" HP"), 0.0)),
                       base)


def test_parse_strengths():
    assert parse_strengths("2, 0,0.5") == [0.0, 0.5, 1.0, 2.0]  # sorted, 1 added
    assert parse_strengths(None) == [0.0, 0.5, 1.0, 2.0]
    assert parse_strengths([3]) == [1.0, 3.0]
    for bad, message in (("0,x", "'x' is not a number"), (",", "no strengths"), ("nan", "finite")):
        with pytest.raises(ValueError, match=message):
            parse_strengths(bad)


def test_target_prompts_success_before_and_after(tiny_model, tiny_tokenizer, corpus):
    prompts = [TargetPrompt("The MacBook is made by", " HP", " Apple"),
               TargetPrompt("A laptop made by HP is not a MacBook", " by"),
               TargetPrompt("The laptop by Apple is the MacBook", " HP", " Apple")]
    strengths = [0.0, 1.0, 4.0]
    result = evaluate_edits(tiny_model, tiny_tokenizer, edit_set("knowledge_edit"), corpus,
                            prompts=prompts, strengths=strengths, seq_len=SEQ, batch_size=BATCH,
                            progress=False)
    n_real = len(tiny_tokenizer)
    for j, s in enumerate([None, *strengths]):
        successes = []
        for p, got in zip(prompts, result.prompts):
            ids = torch.tensor([tiny_tokenizer.encode(p.prompt)])
            iv = None if s is None else at_strength(edit_set("knowledge_edit"), s, tiny_model,
                                                    tiny_tokenizer)
            with torch.inference_mode():
                last = tiny_model(ids, intervention=iv).logits[0, -1].float()
            logp = last.log_softmax(-1)
            t = tiny_tokenizer.encode(p.target)[0]
            score = got.before if s is None else got.by_strength[j - 1]
            assert score.target_logprob == pytest.approx(float(logp[t]), abs=1e-4)
            if p.foil is not None:
                f = tiny_tokenizer.encode(p.foil)[0]
                success = bool(logp[t] > logp[f])
                assert score.foil_logprob == pytest.approx(float(logp[f]), abs=1e-4)
            else:
                success = int(last[:n_real].argmax()) == t
            assert score.success == success
            successes.append(success)
        rate = sum(successes) / len(prompts)
        if s is None:
            assert result.success_before == rate
        else:
            assert result.at(s).success_rate == rate
    assert result.at(0.0).success_rate == result.success_before
    # the knowledge edit moves ' Apple' to ' HP' after a prompt that ends in ' MacBook'
    first = result.prompts[2]
    assert first.by_strength[1].target_logprob > first.before.target_logprob


def test_read_prompts_refuses_clearly(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "A", "target": " b"}\n\n{"prompt": "C", "target": 3, "foil": " d"}\n')
    assert read_prompts(good) == [TargetPrompt("A", " b"), TargetPrompt("C", 3, " d")]
    cases = {
        '{"prompt": "A", "target": " b"}\n{"prompt": "A" "target": " b"}\n': "line 2: not valid JSON",
        '{"prompt": "A"}\n': 'line 1: lacks "target"',
        '{"prompt": "A", "target": " b", "weight": 2}\n': "unknown field 'weight'",
        '["A", " b"]\n': "line 1: a line must be a JSON object",
        '{"prompt": "", "target": " b"}\n': '"prompt" must be a non-empty string',
        '{"prompt": "A", "target": true}\n': '"target" must be a word',
        "\n\n": "holds no prompts",
    }
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(PromptError, match=message):
            read_prompts(good)
    with pytest.raises(PromptError, match="cannot read the prompts file"):
        read_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(PromptError, match="not UTF-8"):
        read_prompts(b"\xff\xfe", name="upload.jsonl")


def test_multi_token_target_names_the_prompt_before_the_pass(tiny_model, tiny_tokenizer, corpus):
    ticks = []
    with pytest.raises(PromptError, match=r"prompt 2 \('B'\): target ' riverbanks' is \d+ tokens"):
        evaluate_edits(tiny_model, tiny_tokenizer, edit_set("scale_sense"), corpus,
                       prompts=[TargetPrompt("A", " bank"), TargetPrompt("B", " riverbanks")],
                       seq_len=SEQ, batch_size=BATCH, progress=lambda done, total: ticks.append(done))
    assert ticks == []  # refused before reading the corpus
    with pytest.raises(PromptError, match=r"prompt 1 .*: the prompt is \d+ tokens long; give 1 to 64"):
        evaluate_edits(tiny_model, tiny_tokenizer, edit_set("scale_sense"), corpus,
                       prompts=[TargetPrompt("the " * 70, " bank")], progress=False)


# ------------------------------------------------------------------------------- the command --

def run_cli(argv, capsys):
    from analyses import _cli
    from analyses.evaluate_edits import main

    code = _cli.run(main, argv, prog="evaluate_edits")
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_equals_the_core(tiny_model, tiny_tokenizer, tiny_model_dir, corpus, tmp_path,
                                  capsys):
    edits, prompts = tmp_path / "e.json", tmp_path / "p.jsonl"
    edits.write_text(json.dumps(edit_set("knowledge_edit")))
    prompts.write_text('{"prompt": "The MacBook is made by", "target": " HP", "foil": " Apple"}\n')
    data_file = tmp_path / "tiny.txt"
    data_file.write_text(" ".join(TINY_CORPUS * 2))
    argv = ["--model", str(tiny_model_dir), "--edits", str(edits), "--data", str(data_file),
            "--prompts", str(prompts), "--strengths", "0,2", "--seq-len", str(SEQ),
            "--batch-size", str(BATCH), "--positions"]
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    expected = evaluate_edits(tiny_model, tiny_tokenizer, edit_set("knowledge_edit"), corpus,
                              prompts=read_prompts(prompts), strengths=[0, 2], seq_len=SEQ,
                              batch_size=BATCH, progress=False)
    assert data["strengths"] == [0.0, 1.0, 2.0]
    assert data["blast_radius"]["positions"] == expected.blast_radius
    assert data["blast_radius"]["count"] == len(expected.blast_radius) > 0
    assert data["loss_change"]["all"] == pytest.approx(expected.at(1.0).loss_change["all"], abs=1e-6)
    assert data["loss_change"]["outside"] == 0.0
    assert [r["success_rate"] for r in data["sweep"]] == [r.success_rate for r in expected.sweep]
    assert data["corpus"]["tokens"] == len(corpus) and data["corpus"]["sha256"] == corpus.sha256
    code, out, err = run_cli(argv, capsys)  # the table
    assert code == 0 and "blast radius:" in out and "Δloss outside" in out and "target prompts" in out


def test_cli_refusals(tiny_model_dir, tmp_path, capsys):
    m = ["--model", str(tiny_model_dir)]
    good, bad = tmp_path / "e.json", tmp_path / "bad.json"
    good.write_text(json.dumps(edit_set("scale_sense")))
    bad.write_text('{"version": 1, "edits": [\n{"kind": "scale_sense", }]}')
    text = tmp_path / "t.txt"
    text.write_text("The bank by the river. " * 5)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "A", "target": " b"}\n{"prompt": "A", "target": " b"}\n{"prompt": }\n')
    cases = [
        ([*m, "--edits", str(bad), "--data", str(text)], "edit", "malformed JSON at line 2"),
        ([*m, "--edits", str(tmp_path / "none.json"), "--data", str(text)], "edit",
         "cannot read the edits file"),
        ([*m, "--edits", str(good), "--data", str(tmp_path / "missing.txt")], "input",
         "does not exist"),
        ([*m, "--edits", str(good), "--data", str(text), "--prompts", str(prompts)], "input",
         "p.jsonl, line 3: not valid JSON"),
        ([*m, "--edits", str(good), "--data", str(text), "--strengths", "1,zero"], "input",
         "'zero' is not a number"),
        ([*m, "--edits", str(good)], "usage", "one of the arguments --data --dataset is required"),
    ]
    for argv, kind, message in cases:
        code, out, err = run_cli([*argv, "--json"], capsys)
        assert code == 2 and "Traceback" not in err
        error = strict_json(out)
        assert error["kind"] == kind and message in error["error"], error
        assert err.count("\n") == 1 and message in err


def test_cli_real_python_m_help_is_fast(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = ['x', '--help'];\n"
                           "try:\n    runpy.run_module('analyses.evaluate_edits', run_name='__main__')\n"
                           "except SystemExit:\n    pass\nprint('torch' in sys.modules)"],
                          capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert proc.returncode == 0 and "--strengths" in proc.stdout
    assert proc.stdout.strip().endswith("False")


def test_shipped_example_files_read(tmp_path):
    from analyses.evaluate_edits import DATA

    edits = EditSet.load(DATA / "edits_last_week.json")
    assert [e.kind for e in edits] == ["knowledge_edit"]
    prompts = read_prompts(DATA / "prompts_last_week.jsonl")
    assert all(p.prompt.endswith("last") and p.target == " week" for p in prompts)


def test_bench_smoke(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, "bench/bench_edit_sweep.py", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data == json.loads(proc.stdout)
    assert len(data["strengths"]) == 10 and data["blast_radius"] > 0
    assert data["max_abs_loss_diff"] < 1e-5  # the cached sweep equals the naive full passes
    assert data["cached_s"] > 0 and data["naive_s"] > 0


# --------------------------------------------------------------------------- the Steer page --

APP = REPO / "app"
PAGE_TEXT = "The MacBook is made by Apple. The bank by the river has money. The MacBook is good."


def test_steer_page_evaluates_the_edit_set_on_a_dataset(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))
    import state

    monkeypatch.setenv(state.MODEL_ENV, str(tiny_model_dir))
    monkeypatch.setenv(state.DEVICE_ENV, "cpu")
    monkeypatch.setenv(state.DTYPE_ENV, "float32")
    monkeypatch.setenv("BACKPACK_CACHE", str(tmp_path / "cache"))
    edits = edit_set("knowledge_edit")
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=HANG_S)
    at.query_params["text"] = PAGE_TEXT
    at.switch_page("app_pages/steer.py")
    at.session_state["edit_set"] = edits
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="steer:eval-data").set_value("text")
    at.text_input(key="steer:eval-strengths").set_value("0, 2")
    prompts = b'{"prompt": "The MacBook is made by", "target": " HP", "foil": " Apple"}\n'
    at.file_uploader(key="steer:eval-prompts").set_value(("p.jsonl", prompts, "application/json"))
    at.run()
    at.button(key="steer:evaluate").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]

    # The page calls the same core function (evaluation_view.evaluate -> evaluate_edits) on the
    # model as the app loads it: memory-mapped from model.safetensors, so its weights sit at
    # 8-byte-aligned addresses where tiny_model's are 64-byte aligned, and the BLAS kernel of a
    # one-row product (output_logits of one edited position) rounds differently for the two
    # (6e-7 on a logit, 2.3e-5 relative on a loss change of 1e-3). The reference is therefore
    # computed on the model loaded the same way.
    path = tmp_path / "page.txt"
    path.write_text(PAGE_TEXT)
    loaded, loaded_tokenizer = load_backpack(tiny_model_dir, device="cpu", dtype="float32")
    expected = evaluate_edits(loaded, loaded_tokenizer, edits, read_corpus(str(path), loaded_tokenizer),
                              prompts=read_prompts(prompts), strengths=[0, 2], progress=False)
    shown = {m.label: m.value for m in at.metric}
    assert shown["blast radius"] == f"{len(expected.blast_radius):,}" and expected.blast_radius
    assert shown["Δ loss, all text"] == f"{expected.at(1.0).loss_change['all']:+.4f}"
    assert shown["Δ loss, outside"] == "+0.0000"
    (figure,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")
                 if "Success vs loss" in c.proto.spec]
    points = figure["data"][0]
    assert points["y"] == [r.success_rate for r in expected.sweep]
    # Tolerance: each x is a mean of differences of float32 cross-entropies of a few nats
    # (rounding ~5e-7 each), and which kernel a product uses may depend on the thread running it
    # (the page runs in a script thread), so 1e-6 nats/token absolute; the values themselves are
    # 1e-3 to 5e-3 apart, so a point of another strength or another loss fails it.
    assert points["x"] == pytest.approx([r.loss_change["inside"] or 0.0 for r in expected.sweep],
                                        rel=0, abs=1e-6)
    assert points["text"] == ["0", "1", "2"]
    (sweep,) = [d.value for d in at.dataframe if "blast radius" in d.value.columns]
    assert sweep["blast radius"].tolist() == [r.radius for r in expected.sweep]

    # a malformed prompts file is one message naming its line, not a traceback
    at.file_uploader(key="steer:eval-prompts").set_value(("bad.jsonl", b'{"prompt": 1}\n', "text/plain"))
    at.run()
    at.button(key="steer:evaluate").click().run()
    assert not at.exception
    shown = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]  # Markdown escapes undone
    assert any("bad.jsonl, line 1" in s for s in shown), shown

    # an uploaded text file: the same corpus gives the same radius; a file that is not UTF-8 is a message
    at.file_uploader(key="steer:eval-prompts").set_value(None)
    at.radio(key="steer:eval-data").set_value("upload").run()
    at.file_uploader(key="steer:eval-file").set_value(("latin.txt", b"caf\xe9 bank", "text/plain"))
    at.run()
    at.button(key="steer:evaluate").click().run()
    assert not at.exception
    shown = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]
    assert any("latin.txt" in s and "not UTF-8" in s for s in shown), shown
    at.file_uploader(key="steer:eval-file").set_value(("page.txt", PAGE_TEXT.encode(), "text/plain"))
    at.run()
    at.button(key="steer:evaluate").click().run()
    assert not at.exception and not at.error
    shown = {m.label: m.value for m in at.metric}
    assert shown["blast radius"] == f"{len(expected.blast_radius):,}"

    # an error found during the evaluation (a target of several tokens): one message, and the
    # progress bar is gone (it stayed, at "Reading the corpus…", under the message)
    at.file_uploader(key="steer:eval-prompts").set_value(
        ("multi.jsonl", b'{"prompt": "The bank", "target": " Macintosh"}\n', "text/plain"))
    at.run()
    at.button(key="steer:evaluate").click().run()
    assert not at.exception and any("one token is needed" in e.value for e in at.error)
    assert not at.get("progress")


# -- review of issue 17 ------------------------------------------------------------------------------

def test_window_arguments_are_checked_as_in_the_atlas(tiny_model, tiny_tokenizer, corpus, tmp_path,
                                                      capsys):
    """--seq-len past the context was silently cut to it (the atlas refuses it) and --batch-size
    was unbounded (a whole corpus in one forward pass)."""
    from backpack_core.common import limits

    n = tiny_model.config.n_positions
    for seq_len in (n + 1, 1, 0):
        with pytest.raises(ValueError, match=f"seq_len must be in 2..{n}"):
            evaluate_edits(tiny_model, tiny_tokenizer, edit_set("scale_sense"), corpus,
                           seq_len=seq_len, progress=False)
    with pytest.raises(limits.LimitError, match="BACKPACK_MAX_BATCH_WINDOWS"):
        evaluate_edits(tiny_model, tiny_tokenizer, edit_set("scale_sense"), corpus,
                       batch_size=limits.MAX_BATCH_WINDOWS + 1, progress=False)
    edits, text = tmp_path / "e.json", tmp_path / "t.txt"
    edits.write_text(json.dumps(edit_set("scale_sense")))
    text.write_text("The bank by the river. " * 5)
    code, out, err = run_cli(["--model", "/nonexistent/model", "--edits", str(edits), "--data",
                              str(text), "--batch-size", "100000000", "--json"], capsys)
    assert code == 2 and err.count("\n") == 1 and "BACKPACK_MAX_BATCH_WINDOWS" in err
    assert strict_json(out)["kind"] == "limit"


def test_negative_zero_strength_is_zero():
    import math

    assert [math.copysign(1.0, s) for s in parse_strengths("-0, 1")] == [1.0, 1.0]
    assert parse_strengths([-0.0, 2]) == [0.0, 1.0, 2.0]


def test_prompt_errors_stay_short_and_the_prompts_file_is_bounded(tiny_model, tiny_tokenizer, tmp_path,
                                                                 monkeypatch):
    """A 5,000-word prompt made a 25 kB error message (the prompt echoed whole); a prompts file
    was read whole whatever its size."""
    from backpack_core.interpret import edit_effects as edit_evaluation

    long = TargetPrompt("word " * 5000, " bank")
    with pytest.raises(PromptError, match="tokens long") as err:
        edit_evaluation.check_prompts(tiny_model, tiny_tokenizer, [long])
    assert len(str(err.value)) < 300 and "…" in str(err.value)
    monkeypatch.setattr(edit_evaluation, "MAX_PROMPTS_BYTES", 100)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "The bank", "target": " river"}\n' * 5)
    for source in (path, path.read_bytes()):
        with pytest.raises(PromptError, match="more than the limit of 100 bytes"):
            read_prompts(source)


def test_strengths_that_overflow_are_refused(tiny_model, tiny_tokenizer, corpus):
    """--strengths 3e38 overflowed float32: losses NaN (null in the JSON), every prompt scored
    'rank 0, failed'. Strengths are bounded by MAX_ABS_STRENGTH; the bound itself works."""
    from backpack_core.interpret.edit_effects import MAX_ABS_STRENGTH

    for text in ("3e38", "-3e38", f"{MAX_ABS_STRENGTH * 10:g}"):
        with pytest.raises(ValueError, match="strength .* is too large"):
            parse_strengths(text)
    with pytest.raises(ValueError, match="too large"):
        ScaledEdits(EditSet.from_dict(edit_set("scale_sense")).compile(tiny_model, tiny_tokenizer), 1e30)
    result = evaluate_edits(tiny_model, tiny_tokenizer, edit_set("knowledge_edit"), corpus,
                            strengths=[-MAX_ABS_STRENGTH, MAX_ABS_STRENGTH], progress=False)
    assert all(v is not None and v == v for r in result.sweep for v in r.loss_change.values())
