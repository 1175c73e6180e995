"""Text -> token shards for training.

    python -m backpack_core.training.prepare --input data/corpus/train.jsonl \
        --val-input data/corpus/val.jsonl --tokenizer gpt2 --out data/shards/corpus
    python -m backpack_core.training.prepare --input books/ --tokenizer bpe:16384 --out data/shards/books
    python -m backpack_core.training.prepare --dataset Skylion007/openwebtext --tokenizer gpt2 \
        --val-fraction 0.0005 --out data/shards/openwebtext        # online, needs `datasets`

Documents: every `.txt` / `.text` / `.md` file is one document; every line of a `.jsonl` file is
one document (its "text" field, or --text-field). Directories are searched recursively, files
taken in sorted order. Each document is tokenized and followed by EOS.

Held-out split: the documents of --val-input, or else a fraction of the documents chosen by a
hash of their text (stable across runs and input order; duplicates land on the same side). When
that fraction catches none of two or more distinct documents (a small folder), the one whose hash
is nearest to it is held out, with a note; with a single document the validation split stays
empty, with a warning (training then has no validation curve).

Tokenizer: `gpt2`, a directory holding a `tokenizer.json` (or the file itself), or `bpe:N` to
train our own N-token byte-level BPE on the training documents.

Output (in --out): train.bin, val.bin (flat token ids, uint16 when the vocabulary fits, else
uint32), tokenizer.json + tokenizer_config.json, and manifest.json (inputs with sizes and
sha256, options, tokenizer, dtype, token and document counts, EOS id), written last.
Re-running with the same inputs and options does nothing; --force rebuilds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from backpack_core.model.tokenizer import TOKENIZER_FILE, Tokenizer, gpt2_tokenizer, train_bpe
from backpack_core.training.loader import FORMAT, MANIFEST, DataError, read_manifest

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
DEFAULT_VAL_FRACTION = 0.01


# ----------------------------------------------------------------------------------------------
# Inputs: files and the documents in them
# ----------------------------------------------------------------------------------------------

def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named, and the supported files under directories named (recursive, sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
            if not found:
                raise DataError(f"directory {path} holds no {'/'.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} "
                                "files")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
                raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .txt/.text/.md "
                                "(one document per file) or .jsonl (one document per line)")
            files.append(path)
        else:
            raise DataError(f"input {path} does not exist")
    return [p.resolve() for p in files]


def read_documents(path: Path, text_field: str = "text") -> Iterator[tuple[str, int]]:
    """(document text, bytes of the file it used) for each document in a file."""
    if path.suffix in TEXT_SUFFIXES:
        raw = path.read_bytes()
        yield raw.decode("utf-8", errors="replace"), len(raw)
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                yield "", len(raw)
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err})") from err
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{lineno}: no string field {text_field!r} (found {keys}); "
                                "choose the field with --text-field")
            yield text, len(raw)


def val_score(text: str) -> float:
    """A hash of a document's text as a number in [0, 1): held out when below the fraction."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def in_val_split(text: str, fraction: float) -> bool:
    """Whether a document is held out: a hash of its text, as a number in [0, 1), < fraction."""
    return fraction > 0 and val_score(text) < fraction


def file_record(path: Path, previous: dict[str, dict]) -> dict:
    """path, bytes, mtime and sha256 of an input; the sha256 is reused from the previous manifest
    when size and modification time are unchanged (as git's index does)."""
    stat = path.stat()
    old = previous.get(str(path))
    if old and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
        sha = old["sha256"]
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        sha = h.hexdigest()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}


def dataset_documents(name: str, config: str | None, split: str, text_field: str
                      ) -> tuple[Iterator[tuple[str, int]], int]:
    """Documents of a dataset on the Hugging Face hub (online): (iterator, number of rows)."""
    try:
        import datasets
    except ImportError as err:
        raise DataError("--dataset needs the `datasets` package (pip install datasets) and a network "
                        "connection; offline, pass local text or .jsonl files with --input") from err
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown name, ...: say so plainly
        raise DataError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {err}. "
                        "Offline, pass local files with --input instead") from err
    if text_field not in ds.column_names:
        raise DataError(f"dataset {name!r} has no column {text_field!r} (columns: {ds.column_names}); "
                        "choose one with --text-field")
    return ((row[text_field], 1) for row in ds), len(ds)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def load_tokenizer_spec(spec: str) -> Tokenizer | None:
    """The tokenizer named by `gpt2` or a path; None for `bpe:N` (trained later, on the data)."""
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec.startswith("bpe:"):
        bpe_vocab_size(spec)
        return None
    path = Path(spec).expanduser()
    if path.is_file() and path.name == TOKENIZER_FILE:
        path = path.parent
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        try:
            return Tokenizer.load(path)
        except ValueError as err:
            raise DataError(f"tokenizer in {path}: {err}") from err
    raise DataError(f"unknown tokenizer {spec!r}; use gpt2, bpe:VOCAB_SIZE (e.g. bpe:16384) or a "
                    f"directory containing {TOKENIZER_FILE}")


def bpe_vocab_size(spec: str) -> int:
    try:
        size = int(spec.removeprefix("bpe:"))
    except ValueError:
        size = 0
    if size < 257:
        raise DataError(f"tokenizer {spec!r}: bpe:N needs an integer N >= 257 (the 256 bytes + EOS)")
    return size


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

class SplitWriter:
    """Appends tokenized documents (+ EOS) to a temporary file, renamed into place by `commit`."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file = open(self.tmp, "wb")
        self.tokens = self.documents = 0

    def write(self, docs: list[list[int]], eos: int) -> None:
        if not docs:
            return
        ids = np.fromiter((t for doc in docs for t in (*doc, eos)), dtype=self.dtype)
        ids.tofile(self.file)
        self.tokens += len(ids)
        self.documents += len(docs)

    def commit(self) -> dict:
        self.file.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "tokens": self.tokens, "documents": self.documents}

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _up_to_date(out: Path, identity: dict) -> dict | None:
    """The existing manifest if it was built from exactly these inputs and options."""
    try:
        old = read_manifest(out)
    except DataError:
        return None
    comparable = {k: _strip_mtime(v) if k in ("inputs", "val_inputs") else v for k, v in old.items()}
    same = all(comparable.get(k) == v for k, v in identity.items())
    files_ok = all((out / s["file"]).is_file()
                   and (out / s["file"]).stat().st_size == s["tokens"] * np.dtype(old["dtype"]).itemsize
                   for s in old.get("splits", {}).values())
    return old if same and files_ok and (out / TOKENIZER_FILE).is_file() else None


def _strip_mtime(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "mtime_ns"} for r in records]


def prepare(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    tokenizer: str = "gpt2",
    val_inputs: Iterable[str | os.PathLike] = (),
    val_fraction: float | None = None,
    text_field: str = "text",
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    force: bool = False,
    progress: bool = True,
    batch_documents: int = 256,
) -> tuple[dict, bool]:
    """Build token shards in `out`. Returns (manifest, whether anything was built)."""
    out = Path(out)
    inputs, val_inputs = list(inputs), list(val_inputs)
    if bool(inputs) == bool(dataset):
        raise DataError("give either --input (local files or directories) or --dataset (online)")
    if val_inputs and val_fraction:
        raise DataError("give either --val-input (explicit held-out files) or --val-fraction, not both")
    if val_fraction is None:
        val_fraction = 0.0 if val_inputs else DEFAULT_VAL_FRACTION
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")

    previous = {}
    if (out / MANIFEST).is_file():
        try:
            old = read_manifest(out)
            previous = {r["path"]: r for r in old.get("inputs", []) + old.get("val_inputs", [])
                        if "path" in r}
        except DataError:
            pass
    train_files, val_files = expand_inputs(inputs), expand_inputs(val_inputs)
    overlap = set(train_files) & set(val_files)
    if overlap:
        raise DataError(f"{sorted(map(str, overlap))[0]} is both a training and a held-out input")
    train_records = [file_record(p, previous) for p in train_files]
    val_records = [file_record(p, previous) for p in val_files]
    if dataset:
        train_records = [{"dataset": dataset, "config": dataset_config, "split": dataset_split}]

    tok = load_tokenizer_spec(tokenizer)
    options = {"tokenizer": tokenizer, "val_fraction": val_fraction, "text_field": text_field,
               "eos": "after every document"}
    identity = {"format": FORMAT, "options": options,
                "inputs": _strip_mtime(train_records), "val_inputs": _strip_mtime(val_records)}
    if tok is not None:
        identity["tokenizer_sha256"] = tokenizer_sha256(tok)
    if not force:
        old = _up_to_date(out, identity)
        if old is not None:
            if (old["inputs"], old["val_inputs"]) != (train_records, val_records):  # new mtimes
                old.update(inputs=train_records, val_inputs=val_records)
                _atomic_json(out / MANIFEST, old)
            return old, False

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # until the new one is written, nothing looks complete
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    forced: float | None = None  # val_score of the document held out when the fraction caught none

    def held_out(text: str) -> bool:
        return in_val_split(text, val_fraction) or (forced is not None and val_score(text) == forced)

    def documents() -> Iterator[tuple[str, str, int]]:
        """(split, text, bytes read) of every document, in order; one pass over the inputs."""
        if dataset:
            docs, _ = dataset_documents(dataset, dataset_config, dataset_split, text_field)
            for text, n in docs:
                yield ("val" if held_out(text) else "train"), text, n
            return
        for path in train_files:
            for text, n in read_documents(path, text_field):
                yield ("val" if held_out(text) else "train"), text, n
        for path in val_files:
            for text, n in read_documents(path, text_field):
                yield "val", text, n

    started = time.time()
    total = None if dataset else sum(r["bytes"] for r in train_records + val_records)
    given_tok = tok
    while True:  # twice at most: again with one document held out when the fraction caught none
        tok = given_tok
        if tok is None:  # bpe:N, trained on the training documents only
            size = bpe_vocab_size(tokenizer)
            say(f"training a {size}-token byte-level BPE on the training documents")
            tok = train_bpe((text for split, text, _ in documents() if split == "train" and text.strip()),
                            size)
        dtype = token_dtype(len(tok))
        eos = tok.eos_token_id
        writers = {split: SplitWriter(out / f"{split}.bin", dtype) for split in ("train", "val")}
        batches: dict[str, list[str]] = {"train": [], "val": []}
        lowest: list[float] = []  # the two smallest distinct val_scores of training documents
        bar = tqdm(total=total, unit="B" if total else "doc", unit_scale=True, desc="tokenizing",
                   disable=not progress)
        try:
            for split, text, n in documents():
                bar.update(n)
                if text.strip():  # empty documents are skipped, not turned into a lone EOS
                    batches[split].append(text)
                    if split == "train" and val_fraction > 0:
                        lowest = sorted({*lowest, val_score(text)})[:2]
                if len(batches[split]) >= batch_documents:
                    writers[split].write(tok.encode_batch(batches[split]), eos)
                    batches[split] = []
            for split, batch in batches.items():
                writers[split].write(tok.encode_batch(batch), eos)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        finally:
            bar.close()
        if writers["val"].documents == 0 and forced is None and len(lowest) == 2:
            for writer in writers.values():
                writer.abort()
            forced = lowest[0]
            print(f"note: --val-fraction {val_fraction:g} held out none of the "
                  f"{writers['train'].documents:,} documents; holding out the one nearest to it "
                  "(its hash is the lowest)", file=sys.stderr, flush=True)
            continue
        break
    splits = {split: writer.commit() for split, writer in writers.items()}
    if splits["train"]["tokens"] == 0:
        raise DataError("no training documents: every input document was empty or held out")
    if splits["val"]["tokens"] == 0:
        why = (f"--val-fraction {val_fraction:g}" if not val_files and val_fraction == 0
               else "the --val-input files hold no text" if val_files
               else f"{splits['train']['documents']} document(s), fewer than 2 distinct: none can be "
                    "held out")
        print(f"warning: the validation split is empty ({why}); training will have no validation "
              "loss. Give held-out files with --val-input, or more documents.", file=sys.stderr,
              flush=True)

    tok.save(out)
    manifest = {
        **identity,
        "inputs": train_records, "val_inputs": val_records,
        "tokenizer_sha256": tokenizer_sha256(tok),
        "vocab_size": len(tok), "eos_token_id": eos, "dtype": dtype.name,
        "splits": splits, "seconds": round(time.time() - started, 2),
    }
    _atomic_json(out / MANIFEST, manifest)
    return manifest, True


def describe(manifest: dict) -> str:
    parts = [f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens"
             for name, s in manifest["splits"].items()]
    return (f"{'; '.join(parts)} (tokenizer {manifest['options']['tokenizer']}, vocabulary "
            f"{manifest['vocab_size']:,}, {manifest['dtype']}, EOS id {manifest['eos_token_id']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backpack_core.training.prepare",
                                     description="Tokenize text into training shards.")
    parser.add_argument("--input", nargs="+", default=[], metavar="PATH",
                        help="text (.txt/.text/.md: one document per file) or .jsonl (one per line) "
                             "files, or directories of them")
    parser.add_argument("--val-input", nargs="+", default=[], metavar="PATH",
                        help="explicit held-out files (otherwise --val-fraction of the documents)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help=f"held-out fraction of documents, by hash (default {DEFAULT_VAL_FRACTION} "
                             "without --val-input)")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="gpt2 | bpe:VOCAB_SIZE | directory with tokenizer.json (default gpt2)")
    parser.add_argument("--text-field", default="text", help="field of .jsonl records / dataset rows")
    parser.add_argument("--dataset", help="a dataset on the Hugging Face hub (online), instead of --input")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--dataset-split", default="train")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        manifest, built = prepare(
            args.out, args.input, tokenizer=args.tokenizer, val_inputs=args.val_input,
            val_fraction=args.val_fraction, text_field=args.text_field, dataset=args.dataset,
            dataset_config=args.dataset_config, dataset_split=args.dataset_split, force=args.force,
            progress=not args.quiet)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if built:
        print(f"wrote {args.out}: {describe(manifest)}")
    else:
        print(f"{args.out} is up to date (same inputs and options); nothing to do. "
              f"{describe(manifest)}. Use --force to rebuild.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
