"""The paper's analyses as commands (`python -m analyses.NAME`): their JSON, checked against
independent computations on the tiny model, and their refusals (exit 2, one message, no
traceback).

Starting Python with torch (and transformers, for generation) costs seconds on a busy machine,
so every command runs in ONE subprocess (`BATCH`): each is executed as `python -m` does
(`runpy.run_module(..., run_name="__main__")`) with its own stdout / stderr / exit code. The
`--help` runs come first, so that process also shows that help imports no torch. Two commands
also run as real `python -m` subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backpack_core.common.datasets import load_benchmark
from backpack_core.model.evaluation import spearman
from backpack_core.model.vocab import token_text
from tests.conftest import HANG_S, strict_json

REPO = Path(__file__).resolve().parent.parent
MODULES = ("sense_topk", "lexsim", "topic_control", "gender_bias", "knowledge_edit", "perplexity",
           "evaluate_edits", "sense_atlas")

RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
spec_path, out_path = sys.argv[1], sys.argv[2]
spec = json.load(open(spec_path))
results = {}
for name, argv in spec:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [argv[0]] + argv[1:]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    if name.startswith("help:"):
        results[name]["torch_imported"] = "torch" in sys.modules
json.dump(results, open(out_path, "w"))
"""


def env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "BACKPACK_CACHE": str(tmp / "cache")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyses")
    (tmp / "text.txt").write_text("The science of money is the science of the bank. " * 12
                                  + "The river bank was full of water.\n")
    (tmp / "careers.json").write_text(json.dumps({
        "pronouns": [" HP", " Apple"],
        "careers": ["doctor", "nurse", "laptop", "river", "MacBook", "banker"],
        "templates": {"train": ["The{} said that", "The{} is made by", "A{} by the"],
                      "heldout": ["The{} is good", "The{} was made by"]}}))
    from gensim.models import KeyedVectors

    wv = KeyedVectors(vector_size=3)  # a stand-in word2vec: covers only some words
    words = ["bank", "money", "deposit", "doctor"]
    wv.add_vectors(words, [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.2, 1.0, 0.0], [0.0, 0.3, 1.0]])
    wv.save(str(tmp / "w2v.kv"))
    return tmp


@pytest.fixture(scope="module")
def batch(tiny_model_dir, files):
    """Every command's result in one subprocess: {name: {"code", "stdout", "stderr"}}."""
    m = ["--model", str(tiny_model_dir)]
    spec = [(f"help:{name}", [f"analyses.{name}", "--help"]) for name in MODULES]
    spec += [
        ("topk", ["analyses.sense_topk", *m, "--word", "bank", "--k", "5", "--senses", "0,3",
                  "--plot", str(files / "senses.html"), "--json"]),
        ("topk_multi", ["analyses.sense_topk", *m, "--word", " banker", "--k", "3", "--json"]),
        ("topk_table", ["analyses.sense_topk", *m, "--word", "science", "--k", "3"]),
        ("lexsim", ["analyses.lexsim", *m, "--json"]),
        ("lexsim_w2v", ["analyses.lexsim", *m, "--benchmarks", "wordsim353", "--word2vec",
                        str(files / "w2v.kv"), "--json"]),
        ("ppl", ["analyses.perplexity", *m, "--text", str(files / "text.txt"), "--json"]),
        ("topic", ["analyses.topic_control", *m, "--topic", "bank,money,river", "--strength", "50",
                   "--samples", "2", "--tokens", "6", "--top-senses", "6", "--prompts", "The",
                   "--json"]),
        ("topic_identity", ["analyses.topic_control", *m, "--topic", "science", "--strength", "1",
                            "--samples", "1", "--tokens", "6", "--prompts", "The", "A", "--json"]),
        ("gender", ["analyses.gender_bias", *m, "--careers", str(files / "careers.json"),
                    "--factors", "0,0.5,1,2", "--plot", str(files / "gender.html"), "--json"]),
        ("gender_zero", ["analyses.gender_bias", *m, "--careers", str(files / "careers.json"),
                         "--factors", "0", "--json"]),
        ("gender_one", ["analyses.gender_bias", *m, "--careers", str(files / "careers.json"),
                        "--factors", "1", "--sense", "2", "--single-token-only", "--json"]),
        ("knowledge", ["analyses.knowledge_edit", *m, "--word", " MacBook", "--remove", " Apple",
                       "--add", " HP", "--prompts", "The MacBook is made by", "A laptop by",
                       "--generate", "4", "--json"]),
        # refusals: exit 2, one paragraph, no traceback
        ("err_empty_word", ["analyses.sense_topk", *m, "--word", "", "--json"]),
        ("err_sense_range", ["analyses.sense_topk", *m, "--word", "bank", "--senses", "0,9"]),
        ("topk_png", ["analyses.sense_topk", *m, "--word", "bank", "--k", "4", "--plot",
                      str(files / "senses.png")]),
        ("gender_png", ["analyses.gender_bias", *m, "--careers", str(files / "careers.json"),
                        "--factors", "0,1", "--plot", str(files / "gender.png"), "--json"]),
        ("err_plot_type", ["analyses.sense_topk", *m, "--word", "bank", "--plot", str(files / "x.svg")]),
        ("err_no_model", ["analyses.lexsim", "--model", str(files / "nope"), "--json"]),
        ("err_no_text", ["analyses.perplexity", *m, "--text", str(files / "missing.txt")]),
        ("err_topic", ["analyses.topic_control", *m, "--topic", "astrology", "--strength", "2"]),
        ("err_careers", ["analyses.gender_bias", *m, "--careers", str(files / "missing.json")]),
        ("err_multi_token", ["analyses.knowledge_edit", *m, "--word", " Macintosh", "--remove",
                             " Apple", "--add", " HP", "--generate", "0"]),
    ]
    spec_path, out_path = files / "spec.json", files / "results.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(spec_path), str(out_path)],
                          capture_output=True, text=True, cwd=REPO, env=env(files), timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out_path.read_text())


def ok(batch, name) -> dict:
    r = batch[name]
    assert r["code"] == 0 and "Traceback" not in r["stderr"], r["stderr"]
    return strict_json(r["stdout"])  # NaN would not be JSON


def token_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word)
    assert len(ids) == 1
    return ids[0]


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODULES)
def test_help_is_fast_and_imports_no_torch(batch, name):
    r = batch[f"help:{name}"]
    assert r["code"] == 0 and "--model" in r["stdout"] and "--json" in r["stdout"]
    assert r["torch_imported"] is False  # help runs before any heavy import


def test_sense_topk_scores_are_the_sense_logits(batch, tiny_model, tiny_tokenizer, files):
    data = ok(batch, "topk")
    bank = token_id(tiny_tokenizer, " bank")
    assert data["word"] == " bank" and data["tokens"] == [" bank"] and data["token_ids"] == [bank]
    assert [s["index"] for s in data["senses"]] == [0, 3]
    with torch.no_grad():
        logits = (tiny_model.sense_vectors(torch.tensor([bank]))[0]
                  @ tiny_model.wte.weight.T)[:, :len(tiny_tokenizer)]  # (k, V): E . C(x)_l
    for row in data["senses"]:
        top = logits[row["index"]].topk(5)
        bottom = logits[row["index"]].topk(5, largest=False)
        assert [s for _, s in row["top"]] == pytest.approx(top.values.tolist(), abs=1e-4)
        # each token as it reads in a text; a partial-byte token as its bytes ('<0xED>')
        assert [w for w, _ in row["top"]] == [token_text(tiny_tokenizer, i) for i in top.indices.tolist()]
        assert [s for _, s in row["bottom"]] == pytest.approx(bottom.values.tolist(), abs=1e-4)
    html = (files / "senses.html").read_text()
    assert "plotly" in html.lower() and "bottom words" in html


def test_sense_topk_lists_every_piece_of_a_multi_token_word(batch, tiny_tokenizer):
    data = ok(batch, "topk_multi")
    pieces = tiny_tokenizer.encode(" banker")
    assert len(pieces) > 1 and data["multi_token"] is True and data["token_ids"] == pieces
    k = 4  # the tiny preset's senses
    assert [(s["piece"], s["index"]) for s in data["senses"]] == [(p, l) for p in range(len(pieces))
                                                                  for l in range(k)]
    table = batch["topk_table"]["stdout"]
    assert "token ' science'" in table and "  bottom  " in table and "sense  3" in table


def test_lexsim_coverage_and_spearman(batch, tiny_model, tiny_tokenizer):
    data = ok(batch, "lexsim")
    entries = {e["benchmark"]: e for e in data["benchmarks"]}
    assert set(entries) == {"simlex999", "wordsim353"}
    for name, e in entries.items():
        pairs = load_benchmark(name)
        covered = [(a, b, h) for a, b, h in pairs if len(tiny_tokenizer.encode(" " + a)) == 1
                   and len(tiny_tokenizer.encode(" " + b)) == 1]
        assert e["pairs_total"] == len(pairs) and e["pairs_used"] == len(covered)
        assert e["pairs_skipped"] == len(pairs) - len(covered)
    ws = entries["wordsim353"]
    assert ws["pairs_used"] > 0 and entries["simlex999"]["pairs_used"] == 0
    assert {"embedding", "sense_0", "sense_3", "sense_pairs_min", "sense_pairs_max",
            "sense_pairs_mean"} <= set(ws["spearman"])
    covered = [(a, b, h) for a, b, h in load_benchmark("wordsim353")
               if len(tiny_tokenizer.encode(" " + a)) == 1 and len(tiny_tokenizer.encode(" " + b)) == 1]
    E = tiny_model.wte.weight.detach()
    cos = [float(torch.cosine_similarity(E[token_id(tiny_tokenizer, " " + a)],
                                         E[token_id(tiny_tokenizer, " " + b)], dim=0))
           for a, b, _ in covered]
    assert ws["spearman"]["embedding"] == pytest.approx(spearman(cos, [h for _, _, h in covered]))


def test_lexsim_word2vec_scores_the_same_pairs(batch, files):
    from gensim.models import KeyedVectors

    data = ok(batch, "lexsim_w2v")
    (entry,) = data["benchmarks"]
    wv = KeyedVectors.load(str(files / "w2v.kv"))
    pairs = [(a, b, h) for a, b, h in load_benchmark("wordsim353")
             if a in wv.key_to_index and b in wv.key_to_index]
    assert entry["pairs_used"] == len(pairs) == 3  # doctor-nurse is dropped: no 'nurse' vector
    expected = spearman([float(wv.similarity(a, b)) for a, b, _ in pairs], [h for *_, h in pairs])
    assert entry["spearman"]["word2vec"] == pytest.approx(expected)
    assert "held_out_sense" not in entry  # one benchmark: nothing to choose a sense on


def test_perplexity_is_exp_of_the_models_loss(batch, tiny_model, tiny_tokenizer, files):
    data = ok(batch, "ppl")
    ids = torch.tensor(tiny_tokenizer.encode((files / "text.txt").read_text()))
    n = tiny_model.config.n_positions
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, n):
            w = ids[i:i + n][None]
            if w.shape[1] >= 2:
                nll += float(tiny_model(w, labels=w).loss) * (w.shape[1] - 1)
                count += w.shape[1] - 1
    assert data["tokens"] == count and data["seq_len"] == n
    assert data["loss"] == pytest.approx(nll / count, abs=1e-5)
    assert data["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert data["words"] == len((files / "text.txt").read_text().split()) and data["tokens_per_s"] > 0


def test_topic_control_json(batch, tiny_model, tiny_tokenizer):
    data = ok(batch, "topic")
    assert data["words"] == [" bank", " money", " river"] and data["strength"] == 50
    ids = [token_id(tiny_tokenizer, w) for w in data["words"]]
    n = len(tiny_tokenizer)
    with torch.no_grad():  # the selected senses: most probability mass on the topic words
        E = tiny_model.wte.weight[:n]
        logits = tiny_model.sense_vectors(torch.arange(n)) @ E.T  # (V, k, V): sense_logits
        mass = logits.softmax(-1)[..., ids].sum(-1)  # (V, k)
        direction = (E[ids] - E.mean(0)).sum(0)
        projection = tiny_model.sense_vectors(torch.arange(n)) @ direction
        # only whole words (issue 20.4): ' ' + letters, after which the model expects a word end
        begins = torch.tensor([not token_text(tiny_tokenizer, i)[:1].isalnum() for i in range(n)])
        alone = torch.tensor([[tiny_model.config.eos_token_id, t] for t in range(n)])
        ends = tiny_model(alone).logits[:, -1, :n].softmax(-1)[:, begins].sum(-1)  # (V,)
    whole = torch.tensor([bool(re.fullmatch(r" [A-Za-z]+", token_text(tiny_tokenizer, t))) and ends[t] >= 0.5
                          for t in range(n)])
    assert 0 < int(whole.sum()) < n
    mass = mass.masked_fill(~whole[:, None], -1.0)
    best = mass.flatten().topk(6)
    k = tiny_model.config.num_senses
    assert [(h["token_id"], h["sense"]) for h in data["senses"]] == [divmod(i, k) for i in
                                                                    best.indices.tolist()]
    assert [h["mass"] for h in data["senses"]] == pytest.approx(best.values.tolist(), rel=1e-4)
    assert [h["projection"] for h in data["senses"]] == pytest.approx(
        [float(projection[divmod(i, k)]) for i in best.indices.tolist()], rel=1e-4, abs=1e-5)
    assert len(data["samples"]) == 2
    for side in ("before", "after"):
        hits = [bool(s[f"{side}_topic_words"]) for s in data["samples"]]
        assert data[side]["topic_success"] == sum(hits) / len(hits)
        assert data[side]["perplexity"] is None or data[side]["perplexity"] > 1
    for s in data["samples"]:
        for side in ("before", "after"):
            found = {w.strip() for w in s[f"{side}_topic_words"]}
            assert found <= {"bank", "money", "river"}
            assert all(w in s[side].lower() for w in found)
    # strength 1 changes nothing: the same seed gives the same text, and a note says why
    same = ok(batch, "topic_identity")
    assert len(same["samples"]) == 2 and all(s["before"] == s["after"] for s in same["samples"])
    assert same["before"] == same["after"]
    assert same["samples_changed"] == 0 and same["notes"] == [
        "strength 1 leaves every weight as it is: no sample can change"]


def test_topic_control_says_when_its_senses_cannot_matter(tiny_model, tiny_tokenizer):
    """Issue 20.4: with no edited word in the context the samples cannot change; the result
    says so instead of showing identical samples without a word. One new token from a prompt
    without the edited word: the edit cannot act. The same prompt followed by the edited word:
    it does."""
    from backpack_core.experiments.topic_control import topic_control, topic_senses

    words = [" bank", " money", " river"]
    (hit,) = topic_senses(tiny_model, tiny_tokenizer, words, top=1, progress=False).hits
    prompt = "The MacBook is made by"
    assert hit.token_id not in tiny_tokenizer.encode(prompt)
    kwargs = dict(samples_per_prompt=3, max_new_tokens=1, top_senses=1, progress=False)
    cannot = topic_control(tiny_model, tiny_tokenizer, words, 50.0, [prompt], **kwargs)
    assert cannot.samples_changed == 0 and all(not s.edited_words_in_context for s in cannot.samples)
    assert len(cannot.notes) == 1 and cannot.notes[0].startswith(
        "none of the 1 edited words occurred in a prompt or a sample, so no sample changed")
    can = topic_control(tiny_model, tiny_tokenizer, words, 50.0, [prompt + hit.token], **kwargs)
    assert all(s.edited_words_in_context == [hit.token] for s in can.samples)
    assert not any("occurred" in note for note in can.notes)


@pytest.mark.slow
def test_readme_topic_control_example_changes_samples():
    """Issue 20.4: the README's topic_control example left every sample identical. Run as the
    README writes it, on the shipped model (whichever is shipped: the property, not the text):
    some sample changes and no note says the edit could not act."""
    import shlex

    (line,) = [line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| `topic_control ")]
    command = shlex.split(line.split("`")[1])
    proc = subprocess.run([sys.executable, "-m", f"analyses.{command[0]}", *command[1:], "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = strict_json(proc.stdout)
    changed = [s for s in data["samples"] if s["before"] != s["after"]]
    assert data["samples_changed"] == len(changed) > 0 and not data["notes"], data["notes"]
    assert all(s["edited_words_in_context"] for s in changed)


def gaps_by_forward(model, tokenizer, templates, careers, he, she):
    out = []
    with torch.no_grad():
        for t in templates:
            for c in careers:
                prefix, suffix = t.split("{}")
                ids = tokenizer.encode(prefix) + tokenizer.encode(" " + c) + tokenizer.encode(suffix)
                logits = model(torch.tensor([ids])).logits[0, -1]
                out.append(float(logits[he] - logits[she]))
    return out


def test_gender_bias_json(batch, tiny_model, tiny_tokenizer, files):
    data = ok(batch, "gender")
    spec = json.loads((files / "careers.json").read_text())
    he, she = (token_id(tiny_tokenizer, w) for w in spec["pronouns"])
    assert data["careers"] == spec["careers"] and data["skipped_careers"] == []
    assert data["prompts"] == {"train": 18, "heldout": 12}
    # the sense index: the largest mean |(E_he - E_she) . C(career)_l|
    with torch.no_grad():
        d = tiny_model.wte.weight[he] - tiny_model.wte.weight[she]
        per_career = [(tiny_model.sense_vectors(torch.tensor(tiny_tokenizer.encode(" " + c))) @ d)
                      .abs().mean(0) for c in spec["careers"]]
    expected = torch.stack(per_career).mean(0)
    assert data["sense_scores"] == pytest.approx(expected.tolist(), rel=1e-4)
    assert data["sense"] == int(expected.argmax())
    # bias ratios: mean max(p(he)/p(she), p(she)/p(he)) >= 1, before = plain forward passes
    gaps = gaps_by_forward(tiny_model, tiny_tokenizer, spec["templates"]["heldout"], spec["careers"],
                           he, she)
    ratio = sum(math.exp(abs(g)) for g in gaps) / len(gaps)
    assert data["heldout"]["before"] == pytest.approx(ratio, rel=1e-4)
    for value in (*data["heldout"].values(), *data["train"].values()):
        assert value >= 1.0
    fit = {r["factor"]: r["bias_ratio"] for r in data["fit"]}
    assert set(fit) == {0.0, 0.5, 1.0, 2.0} and data["factor"] == min(fit, key=fit.get)
    assert data["train"]["after"] == min(fit.values())
    train_gaps = gaps_by_forward(tiny_model, tiny_tokenizer, spec["templates"]["train"],
                                 spec["careers"], he, she)
    assert fit[1.0] == pytest.approx(sum(math.exp(abs(g)) for g in train_gaps) / len(train_gaps),
                                     rel=1e-4)
    assert "bias ratio on training prompts" in (files / "gender.html").read_text()
    assert data["heldout"]["projection_baseline"] != pytest.approx(data["heldout"]["before"], rel=1e-9)
    # the career senses' share of the gap (attribution) is what an edit of them removes
    g = data["gap"]
    assert g["mean"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-4, abs=1e-5)
    assert g["career"] == pytest.approx(sum(g["career_by_sense"]), rel=1e-4, abs=1e-6)
    zero = ok(batch, "gender_zero")
    assert zero["factor"] == 0.0 and set(zero["gap"]) == set(g)
    for key, value in g.items():  # pytest.approx compares flat containers only (pytest >= 9.2)
        assert zero["gap"][key] == pytest.approx(value), key
    mean_after = sum(r["gap_after"] for r in zero["per_career"]) / len(zero["per_career"])
    assert mean_after == pytest.approx(g["mean"] - g["career_by_sense"][zero["sense"]], abs=1e-4)
    # factor 1 is the identity; multi-token careers are dropped on request
    one = ok(batch, "gender_one")
    assert one["sense"] == 2 and one["sense_chosen_by"] == "given" and one["factor"] == 1.0
    assert one["heldout"]["after"] == pytest.approx(one["heldout"]["before"], rel=1e-6)
    assert [c["career"] for c in one["skipped_careers"]] == ["banker"]


def test_knowledge_edit_moves_the_targets(batch, tiny_model, tiny_tokenizer):
    data = ok(batch, "knowledge")
    assert (data["word"], data["remove"], data["add"]) == (" MacBook", " Apple", " HP")
    assert data["edits"]["edits"][0]["kind"] == "knowledge_edit"
    first = data["prompts"][0]
    with torch.no_grad():
        probs = tiny_model(torch.tensor([tiny_tokenizer.encode(first["prompt"])])).logits[0, -1].softmax(-1)
    assert first["remove"]["prob_before"] == pytest.approx(float(probs[token_id(tiny_tokenizer, " Apple")]),
                                                           rel=1e-4)
    assert first["add"]["prob_before"] == pytest.approx(float(probs[token_id(tiny_tokenizer, " HP")]),
                                                        rel=1e-4)
    assert first["add"]["logprob_delta"] > 0 > first["remove"]["logprob_delta"]
    second = data["prompts"][1]  # no MacBook in the prompt: nothing changes
    assert second["kl"] == pytest.approx(0.0, abs=1e-9)
    assert second["remove"]["prob_after"] == pytest.approx(second["remove"]["prob_before"], rel=1e-5)
    assert [g["prompt"] for g in data["generations"]] == ["The MacBook is made by", "A laptop by"]
    assert all(isinstance(g["before"], str) and isinstance(g["after"], str) for g in data["generations"])


@pytest.mark.parametrize("name, message", [
    ("err_empty_word", "empty"),
    ("err_sense_range", "0..3"),
    ("err_plot_type", "write a .html (Plotly) or .png (Pillow) file"),
    ("err_no_model", "not a directory"),
    ("err_no_text", "cannot read --text"),
    ("err_topic", "unknown topic 'astrology'"),
    ("err_careers", "cannot read the careers file"),
    ("err_multi_token", "single token"),
])
def test_refusals(batch, name, message):
    r = batch[name]
    assert r["code"] == 2 and "Traceback" not in r["stderr"]
    text = r["stderr"].strip()
    assert "\n" not in text and message in text
    if r["stdout"]:  # with --json: the error as a JSON object, stdout always valid JSON
        assert strict_json(r["stdout"]).keys() == {"error", "kind"}


def test_real_python_m(tiny_model_dir, files):
    """The same entry points as `python -m` in a fresh process: a lookup and a refusal."""
    proc = subprocess.run([sys.executable, "-m", "analyses.sense_topk", "--model", str(tiny_model_dir),
                           "--word", "river", "--k", "2", "--json"], capture_output=True, text=True,
                          cwd=REPO, env=env(files), timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tokens"] == [" river"] and all(len(s["top"]) == 2 for s in data["senses"])
    proc = subprocess.run([sys.executable, "-m", "analyses.knowledge_edit", "--model", str(tiny_model_dir),
                           "--word", "MacBook", "--remove", " Apple"], capture_output=True, text=True,
                          cwd=REPO, env=env(files), timeout=HANG_S)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "single token" in proc.stderr


def test_figures_draw_offline_and_png_needs_no_kaleido(batch, files):
    """Issue 20.5: the HTML figures loaded plotly.js from a CDN (blank offline) and
    `sense_topk --plot x.png` needed kaleido while sense_atlas drew PNG with Pillow. Now one way
    for every command (analyses._cli.write_plot): HTML with plotly.min.js written beside it, PNG
    drawn with Pillow."""
    import re

    from PIL import Image

    for name in ("senses.html", "gender.html"):
        html = (files / name).read_text()
        assert re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) == ["plotly.min.js"], name
        assert "cdn.plot.ly" not in html and "Plotly.newPlot" in html
    assert "plotly.js v" in (files / "plotly.min.js").read_text()[:1000]
    for run, name in (("topk_png", "senses.png"), ("gender_png", "gender.png")):
        assert batch[run]["code"] == 0, batch[run]["stderr"]
        with Image.open(files / name) as img:
            colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
            assert img.format == "PNG" and img.width >= 1000 and colours and len(colours) > 10, name


def test_docs_figures_load_nothing_from_the_network():
    """Every script a figure under docs/ loads is a file beside it (issue 20.5)."""
    import re

    pages = sorted((REPO / "docs").rglob("*.html"))
    assert pages
    for page in pages:
        sources = re.findall(r'<script[^>]*\bsrc="([^"]+)"', page.read_text())
        for src in sources:
            assert "://" not in src and (page.parent / src).is_file(), (page, src)
