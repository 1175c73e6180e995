"""Reading a Backpack: sense readouts, context readouts, exact attribution.

Everything the CLI and the app show comes from here, as small dataclasses whose `to_dict()` is
the JSON the command-line tools print. Names follow the rest of the workbench:

- `senses` (k, d) of one token, or (k, seq, d) for a text;
- `sense_logits` (k, vocab) = senses @ E^T: what each sense says about every word;
- `contextualization` (k, query, source): alpha[l, i, j];
- `contributions` (k, seq) for one prediction: alpha[l, i, j] * (E_w . C(x_j)_l), summing exactly
  to the model's logit for w at position i (the Backpack's output is linear in its senses).

The computations over a text (`context_readout`, `attribute`) live in `interpret.session`, which
fills these dataclasses; words become tokens in `model.vocab`.

A word the tokenizer splits into several tokens is never silently reduced to its first piece:
readouts show each piece, and anything that needs one token (an attribution target, a word in
an edit) refuses with a message naming the pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.model.vocab import WordTokens, resolve_word, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer


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
