"""Reading a Backpack: words to tokens, sense readouts, context readouts, exact attribution.

Everything the CLI and the app show comes from here, as small dataclasses whose `to_dict()` is
the JSON the command-line tools print. Names follow the rest of the workbench:

- `senses` (k, d) of one token, or (k, seq, d) for a text;
- `sense_logits` (k, vocab) = senses @ E^T: what each sense says about every word;
- `contextualization` (k, query, source): alpha[l, i, j];
- `contributions` (k, seq) for one prediction: alpha[l, i, j] * (E_w . C(x_j)_l), summing exactly
  to the model's logit for w at position i (the Backpack's output is linear in its senses).

This module is the floor below `compare`, `edits` and `session`: it imports none of them.
The computations over a text (`context_readout`, `attribute`) live in `backpack_core.session`,
which fills these dataclasses.

A word the tokenizer splits into several tokens is never silently reduced to its first piece:
readouts show each piece, and anything that needs one token (an attribution target, a word in
an edit) refuses with a message naming the pieces.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .limits import LimitError, check_word
from .tokenizer import token_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .model import Backpack
    from .tokenizer import Tokenizer


class WordError(ValueError):
    """A word (or token id) could not be turned into the token(s) asked for; says why."""


class WordLimitError(WordError, LimitError):
    """A word longer than backpack_core.limits.MAX_WORD_CHARS."""


# ----------------------------------------------------------------------------------------------
# Words and tokens
# ----------------------------------------------------------------------------------------------

def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The text of one token as it reads in a text (' science' for the byte-level 'Ġscience').

    A token that holds only part of a UTF-8 character reads as its bytes, '<0xE2>', not as the
    '�' that decoding it alone gives (`tokenizer.token_bytes`)."""
    return token_bytes(tokenizer, token_id).decode("utf-8", errors="backpack-hex-bytes")


@dataclass
class WordTokens:
    """How the tokenizer reads a word: its token ids and the text of each piece.

    `alternatives` holds the other spelling with/without a leading space when it tokenizes
    differently (" science", with the space, is how the word appears inside a text).
    """

    query: str | int
    token_ids: list[int]
    tokens: list[str]
    alternatives: list[WordTokens] = field(default_factory=list)

    @property
    def is_single(self) -> bool:
        return len(self.token_ids) == 1

    def describe(self) -> str:
        """One line for people: which token(s) the word became."""
        if isinstance(self.query, int):
            text = f"token id {self.query} is {self.tokens[0]!r}"
        elif self.is_single:
            text = f"{self.query!r} is one token, {self.tokens[0]!r} (id {self.token_ids[0]})"
        else:
            pieces = " + ".join(f"{t!r} ({i})" for t, i in zip(self.tokens, self.token_ids))
            text = f"{self.query!r} splits into {len(self.token_ids)} tokens: {pieces}"
        for alt in self.alternatives:
            if alt.is_single:
                text += (f"; the form {alt.query!r} is a different token, {alt.tokens[0]!r} "
                         f"(id {alt.token_ids[0]})")
            else:
                text += f"; the form {alt.query!r} splits into {len(alt.token_ids)} tokens"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "token_ids": list(self.token_ids), "tokens": list(self.tokens),
                "single_token": self.is_single,
                "alternatives": [alt.to_dict() for alt in self.alternatives]}


def _check_id(token_id: int, vocab_size: int | None, tokenizer: Tokenizer | None) -> None:
    limit = vocab_size if vocab_size is not None else (len(tokenizer) if tokenizer else None)
    if token_id < 0 or (limit is not None and token_id >= limit):
        raise WordError(f"token id {token_id} is out of range: the vocabulary has ids 0..{limit - 1}"
                        if limit is not None else f"token id {token_id} must be >= 0")


def resolve_word(tokenizer: Tokenizer | None, word: str | int, vocab_size: int | None = None
                 ) -> WordTokens:
    """A word (text) or a token id -> its token(s), with the other leading-space form if it
    tokenizes differently. An int (or a torch/numpy integer) is taken as a token id."""
    if isinstance(word, bool):
        raise WordError(f"expected a word or a token id, got {word!r}")
    if not isinstance(word, str):
        try:
            token_id = operator.index(word)  # ints, numpy / torch integer scalars
        except TypeError:
            raise WordError(f"expected a word (text) or a token id, got {word!r}") from None
        _check_id(token_id, vocab_size, tokenizer)
        tokens = [token_text(tokenizer, token_id)] if tokenizer is not None else [f"<{token_id}>"]
        return WordTokens(token_id, [token_id], tokens)
    if tokenizer is None:
        raise WordError(f"the word {word!r} needs a tokenizer; give a token id instead")
    if word == "":
        raise WordError("the word is empty")
    check_word(word, WordLimitError)  # a 100k-character "word" would allocate gigabytes downstream
    ids = tokenizer.encode(word)
    for token_id in ids:
        _check_id(token_id, vocab_size, None)
    result = WordTokens(word, list(ids), [token_text(tokenizer, i) for i in ids])
    other = word.lstrip(" ") if word.startswith(" ") else " " + word
    if other and other != word and not other.isspace():
        other_ids = tokenizer.encode(other)
        if other_ids != ids:
            result.alternatives.append(
                WordTokens(other, list(other_ids), [token_text(tokenizer, i) for i in other_ids]))
    return result


def single_token_id(tokenizer: Tokenizer | None, word: str | int, vocab_size: int | None = None,
                    role: str = "word") -> int:
    """The one token id of `word`, or WordError naming the pieces it splits into."""
    resolved = resolve_word(tokenizer, word, vocab_size)
    if resolved.is_single:
        return resolved.token_ids[0]
    pieces = " + ".join(repr(t) for t in resolved.tokens)
    hint = ""
    single_alts = [alt for alt in resolved.alternatives if alt.is_single]
    if single_alts:
        hint = f"; {single_alts[0].query!r} is a single token (id {single_alts[0].token_ids[0]})"
    raise WordError(f"{role} {word!r} is {len(resolved.token_ids)} tokens ({pieces}), but one "
                    f"token is needed: give one piece or a token id{hint}")


# ----------------------------------------------------------------------------------------------
# Sense readout: what each of a word's k senses says, via E . C(word)_l
# ----------------------------------------------------------------------------------------------

@dataclass
class ScoredToken:
    token_id: int
    token: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "token_id": self.token_id, "score": self.score}


@dataclass
class SenseWords:
    """One sense: the words its projection E . C(x)_l scores highest and lowest."""

    sense: int
    top: list[ScoredToken]
    bottom: list[ScoredToken]

    def to_dict(self) -> dict[str, Any]:
        return {"sense": self.sense, "top": [t.to_dict() for t in self.top],
                "bottom": [t.to_dict() for t in self.bottom]}


@dataclass
class TokenSenses:
    """The k sense vectors of one token and their readouts."""

    token_id: int
    token: str
    senses: torch.Tensor  # (k, d)
    readouts: list[SenseWords]

    def to_dict(self, vectors: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"token": self.token, "token_id": self.token_id,
                               "senses": [r.to_dict() for r in self.readouts]}
        if vectors:
            out["sense_vectors"] = self.senses.float().tolist()
        return out


@dataclass
class SenseReadout:
    """Sense readout of a word. `pieces` has one entry per token the word splits into."""

    word: WordTokens
    pieces: list[TokenSenses]
    notes: list[str]

    @property
    def multi_token(self) -> bool:
        return len(self.pieces) > 1

    def to_dict(self, vectors: bool = False) -> dict[str, Any]:
        return {"word": self.word.to_dict(), "multi_token": self.multi_token, "notes": self.notes,
                "pieces": [p.to_dict(vectors) for p in self.pieces]}


def _scored(tokenizer: Tokenizer, values: torch.Tensor, ids: torch.Tensor) -> list[ScoredToken]:
    return [ScoredToken(int(i), token_text(tokenizer, int(i)), float(v))
            for v, i in zip(values.tolist(), ids.tolist())]


def sense_logits(model: Backpack, senses: torch.Tensor) -> torch.Tensor:
    """senses (..., k, d) -> sense_logits (..., k, vocab): each sense projected on E."""
    return model.output_logits(senses)


@torch.inference_mode()
def sense_readout(model: Backpack, tokenizer: Tokenizer, word: str | int, top: int = 10
                  ) -> SenseReadout:
    """For a word (or token id): its k sense vectors and, per sense, the `top` highest and lowest
    scoring vocabulary words of E . C(word)_l with their scores.

    A word that splits into several tokens is reported as such, with every piece's senses.
    Only real tokenizer ids are ranked (not the padding rows of a rounded-up vocabulary).
    """
    resolved = resolve_word(tokenizer, word, model.config.vocab_size)
    notes = [resolved.describe()]
    if not resolved.is_single:
        notes.append("showing the senses of each piece; a Backpack has no senses for the whole word")
    n_real = min(len(tokenizer), model.config.vocab_size)
    top = max(1, min(int(top), n_real))
    ids = torch.tensor(resolved.token_ids, device=model.wte.weight.device)
    senses = model.sense_vectors(ids)  # (pieces, k, d)
    logits = sense_logits(model, senses)[..., :n_real].float()  # (pieces, k, V)
    pieces = []
    for p, token_id in enumerate(resolved.token_ids):
        hi_v, hi_i = logits[p].topk(top, dim=-1)  # (k, top)
        lo_v, lo_i = logits[p].topk(top, dim=-1, largest=False)
        readouts = [SenseWords(l, _scored(tokenizer, hi_v[l], hi_i[l]),
                               _scored(tokenizer, lo_v[l], lo_i[l]))
                    for l in range(senses.shape[1])]
        pieces.append(TokenSenses(token_id, token_text(tokenizer, token_id), senses[p].cpu(),
                                  readouts))
    return SenseReadout(resolved, pieces, notes)


# ----------------------------------------------------------------------------------------------
# Context readout: tokens, next-token distributions, contextualization weights
# ----------------------------------------------------------------------------------------------

@dataclass
class TokenProb:
    token_id: int
    token: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "token_id": self.token_id, "prob": self.prob}


@dataclass
class Prediction:
    """The next-token distribution after position `position` (its most probable words)."""

    position: int
    token: str  # the token at `position`
    top: list[TokenProb]
    next_token: str | None = None  # the token that actually follows in the text, if any
    next_prob: float | None = None  # the model's probability for it

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "token": self.token,
                "top": [t.to_dict() for t in self.top],
                "next_token": self.next_token, "next_prob": self.next_prob}


@dataclass
class ContextReadout:
    text: str
    token_ids: list[int]
    tokens: list[str]
    predictions: list[Prediction]
    contextualization: torch.Tensor  # (k, query, source)

    def to_dict(self, contextualization: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "token_ids": self.token_ids, "tokens": self.tokens,
                               "predictions": [p.to_dict() for p in self.predictions]}
        if contextualization:
            out["contextualization"] = self.contextualization.float().tolist()
        return out


def top_tokens(tokenizer: Tokenizer | None, logits: torch.Tensor, top: int,
               n_real: int | None = None) -> list[TokenProb]:
    """logits (vocab,) -> the `top` most probable tokens (probabilities over the full vocab)."""
    probs = logits.float().softmax(-1)
    if n_real is not None:
        probs = probs[:n_real]
    values, ids = probs.topk(min(top, probs.shape[-1]))
    return [TokenProb(int(i), token_text(tokenizer, int(i)) if tokenizer else f"<{int(i)}>", float(v))
            for v, i in zip(values.tolist(), ids.tolist())]


# ----------------------------------------------------------------------------------------------
# Exact attribution
# ----------------------------------------------------------------------------------------------

@dataclass
class Contribution:
    position: int  # source position j
    token: str  # the token at j
    sense: int  # l
    value: float  # alpha[l, i, j] * (E_w . C(x_j)_l)

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "token": self.token, "sense": self.sense,
                "value": self.value}


@dataclass
class Attribution:
    """The logit of `target` predicted at `position` (i), split over source positions j <= i and
    senses l: contributions[l, j] = alpha[l, i, j] * (E_target . C(x_j)_l). They sum to `logit`
    exactly, up to float rounding (the model's output is linear in the sense vectors)."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    position: int
    target: str | int
    target_id: int
    target_token: str
    logit: float  # the model's logit for the target at `position` (under the edits, if any)
    contributions: torch.Tensor  # (k, position + 1)

    @property
    def total(self) -> float:
        return float(self.contributions.double().sum())

    def by_position(self) -> torch.Tensor:
        """(position + 1,): summed over senses."""
        return self.contributions.sum(0)

    def by_sense(self) -> torch.Tensor:
        """(k,): summed over source positions."""
        return self.contributions.sum(1)

    def entries(self) -> list[Contribution]:
        """Every (position, sense) term, in position-then-sense order."""
        values = self.contributions.float().t().tolist()  # (seq, k)
        return [Contribution(j, self.tokens[j], l, v)
                for j, row in enumerate(values) for l, v in enumerate(row)]

    def top(self, n: int = 20) -> list[Contribution]:
        """The n terms of largest magnitude."""
        return sorted(self.entries(), key=lambda c: -abs(c.value))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text, "tokens": self.tokens, "position": self.position,
            "predicting_after": self.tokens[self.position],
            "target": self.target, "target_id": self.target_id, "target_token": self.target_token,
            "logit": self.logit, "sum": self.total,
            "contributions": [c.to_dict() for c in self.entries()],
            "by_position": self.by_position().float().tolist(),
            "by_sense": self.by_sense().float().tolist(),
        }
