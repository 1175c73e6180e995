"""Token shards: EOS after every document, the held-out split, idempotent re-runs, clear errors;
and the loader: batches a pure function of (seed, step), ranks slicing one global batch, every
window once per epoch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from backpack_core.model.tokenizer import gpt2_tokenizer
from backpack_core.training.loader import (
    DataError,
    ShardSet,
    TrainBatches,
    eval_windows,
    read_manifest,
)
from backpack_core.training.prepare import in_val_split, main, prepare, token_dtype, val_score

DOCS = ["The cat sat on the mat.", "A second document,\nwith two lines.", "Third: numbers 1 2 3!"]


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def split_docs(ids: np.ndarray, eos: int) -> list[list[int]]:
    assert ids[-1] == eos, "every document, the last included, ends with EOS"
    cuts = np.flatnonzero(ids == eos)
    return [ids[a + 1:b].tolist() for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]


def test_documents_each_followed_by_eos(tmp_path, gpt2):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:2] + ["   "])  # a blank document is skipped
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "b.txt").write_text(DOCS[2])
    val = write_jsonl(tmp_path / "held_out.jsonl", ["Held-out text."])
    manifest, built = prepare(tmp_path / "out", [tmp_path / "a.jsonl", tmp_path / "texts"],
                              tokenizer="gpt2", val_inputs=[val], progress=False)
    assert built and manifest["dtype"] == "uint16" and manifest["eos_token_id"] == 50256
    shards = ShardSet(tmp_path / "out")
    assert split_docs(np.asarray(shards.train), 50256) == [gpt2.encode(t) for t in DOCS]
    assert split_docs(np.asarray(shards.val), 50256) == [gpt2.encode("Held-out text.")]
    assert manifest["splits"]["train"] == {"file": "train.bin", "tokens": len(shards.train), "documents": 3}
    assert shards.tokenizer().encode(DOCS[0]) == gpt2.encode(DOCS[0])  # tokenizer.json saved
    assert [Path(r["path"]).name for r in manifest["inputs"]] == ["a.jsonl", "b.txt"]
    assert all(len(r["sha256"]) == 64 and r["bytes"] > 0 for r in manifest["inputs"])


def test_rerun_is_idempotent_and_changes_rebuild(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", [f"document {i} about topic {i % 7}." for i in range(200)])
    args = ["--input", str(docs), "--tokenizer", "bpe:270", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    first = read_manifest(tmp_path / "out")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    capsys.readouterr()
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps
    os.utime(docs)  # touched, same content: still up to date
    _, built = prepare(tmp_path / "out", [docs], tokenizer="bpe:270", progress=False)
    assert not built
    _, built = prepare(tmp_path / "out", [docs], tokenizer="bpe:270", val_fraction=0.2, progress=False)
    assert built  # another option
    with open(docs, "a") as f:
        f.write(json.dumps({"text": "one more document."}) + "\n")
    manifest, built = prepare(tmp_path / "out", [docs], tokenizer="bpe:270", val_fraction=0.2,
                              progress=False)
    assert built and manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] \
        == first["splits"]["train"]["documents"] + first["splits"]["val"]["documents"] + 1
    assert manifest["vocab_size"] == 270 and manifest["eos_token_id"] == 0


def test_hash_split_is_stable_and_disjoint(tmp_path, gpt2):
    texts = [f"sentence number {i} of the corpus." for i in range(300)]
    write_jsonl(tmp_path / "x.jsonl", texts[:150])
    write_jsonl(tmp_path / "y.jsonl", texts[150:])
    m1, _ = prepare(tmp_path / "o1", [tmp_path / "x.jsonl", tmp_path / "y.jsonl"], val_fraction=0.1,
                    progress=False)
    m2, _ = prepare(tmp_path / "o2", [tmp_path / "y.jsonl", tmp_path / "x.jsonl"], val_fraction=0.1,
                    progress=False)
    held_out = {t for t in texts if in_val_split(t, 0.1)}
    assert 10 < len(held_out) < 60
    for out in ("o1", "o2"):
        val = split_docs(np.asarray(ShardSet(tmp_path / out).val), 50256)
        assert sorted(map(tuple, val)) == sorted(tuple(gpt2.encode(t)) for t in held_out)
    assert m1["splits"]["val"]["documents"] == len(held_out)
    assert m1["splits"]["train"]["documents"] == 300 - len(held_out)


def test_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    for args, expected in [
        (["--input", str(tmp_path / "nope.txt")], "does not exist"),
        (["--input", str(bad)], "bad.jsonl:2: no string field 'text'"),
        (["--input", str(bad), "--tokenizer", "wordpiece"], "unknown tokenizer 'wordpiece'"),
        (["--input", str(bad), "--tokenizer", "bpe:10"], "bpe:N needs an integer N >= 257"),
    ]:
        assert main([*args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    with pytest.raises(DataError, match="python -m backpack_core.training.prepare"):
        ShardSet(tmp_path / "no-shards")
    assert token_dtype(50257) == np.uint16 and token_dtype(2**16) == np.uint16
    assert token_dtype(2**16 + 1) == np.uint32


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a, b = TrainBatches(tokens, 10, 8, seed=3), TrainBatches(tokens, 10, 8, seed=3)
    for step in (0, 7, 12, 40, 7):  # any order, fresh instances: same rows
        assert np.array_equal(a.starts(step), b.starts(step))
    assert not np.array_equal(a.starts(0), TrainBatches(tokens, 10, 8, seed=4).starts(0))
    rows = a.micro_batches(5, 4)
    assert len(rows) == 2 and rows[0].shape == (4, 10)
    assert all(np.array_equal(r.numpy(), np.arange(int(r[0]), int(r[0]) + 10)) for r in rows[0])  # contiguous

    # Ranks slice the same global batch: together they are exactly its rows.
    ranks = [a.starts(9, rank, 4) for rank in range(4)]
    assert np.array_equal(np.sort(np.concatenate(ranks)), np.sort(a.starts(9)))

    # Each epoch (100 windows, 8 rows a step) visits every window once, shifted by one offset.
    tokens = np.arange(1005, dtype=np.uint16)
    batches = TrainBatches(tokens, 10, 8, seed=0)
    starts = np.concatenate([batches.starts(s) for s in range(25)])  # 200 rows = 2 epochs
    for epoch in starts[:100], starts[100:]:
        offsets = set(epoch % 10)
        assert len(offsets) == 1 and sorted(epoch - offsets.pop()) == list(range(0, 1000, 10))


def test_eval_windows_fixed_and_disjoint():
    tokens = np.zeros(1000, dtype=np.uint16)
    starts = eval_windows(tokens, 32, 10)
    assert len(starts) == 10 and np.all(np.diff(starts) >= 32) and starts[-1] + 32 <= 1000
    assert len(eval_windows(tokens, 32, 1000)) == 1000 // 32
    assert len(eval_windows(tokens[:10], 32, 4)) == 0


def test_a_small_folder_still_gets_a_validation_split(tmp_path, capsys):
    """Issue 20.7: 3 documents at the default 1% fraction made an empty val split without a word
    (training then had no validation curve). The document of lowest hash is held out, with a note;
    the choice does not depend on the input order; one document alone is a warning."""
    texts = ["The first small document.", "A second one, about rivers.", "Third: the bank of the river."]
    assert not any(in_val_split(t, 0.01) for t in texts)  # the fraction alone catches none
    nearest = min(texts, key=val_score)
    for name, order in (("a", texts), ("b", texts[::-1])):
        folder = tmp_path / f"in-{name}"
        folder.mkdir()
        for i, text in enumerate(order):
            (folder / f"{i}.txt").write_text(text)
        manifest, _ = prepare(tmp_path / f"out-{name}", [folder], tokenizer="gpt2", progress=False)
        assert manifest["splits"]["val"]["documents"] == 1 and manifest["splits"]["train"]["documents"] == 2
        shards = ShardSet(tmp_path / f"out-{name}")
        assert split_docs(np.asarray(shards.val), 50256) == [gpt2_tokenizer().encode(nearest)]
        err = capsys.readouterr().err
        assert "note: --val-fraction 0.01 held out none of the 3 documents" in err, err
    # a clear warning when nothing can be held out, and when the user asked for no split
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "only.txt").write_text(texts[0])
    manifest, _ = prepare(tmp_path / "out-one", [tmp_path / "one"], tokenizer="gpt2", progress=False)
    assert manifest["splits"]["val"]["documents"] == 0 and manifest["splits"]["train"]["documents"] == 1
    err = capsys.readouterr().err
    assert "warning: the validation split is empty (1 document(s), fewer than 2 distinct" in err, err
    assert "--val-input" in err
    assert main(["--input", str(tmp_path / "in-a"), "--val-fraction", "0", "--out",
                 str(tmp_path / "out-zero"), "--quiet"]) == 0
    assert "warning: the validation split is empty (--val-fraction 0)" in capsys.readouterr().err
