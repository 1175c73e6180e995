"""Before/after comparison of next-token distributions: top-k changes, log-probability changes
of given words, and KL(before || after).

All functions take logits over the vocabulary (last axis); `ContextSession.compare` wires them
to a text and an edit set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .inspect import TokenProb, top_tokens

if TYPE_CHECKING:  # pragma: no cover
    from .tokenizer import Tokenizer


def kl_divergence(before_logits: torch.Tensor, after_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_before || P_after) in nats, over the last axis: (..., vocab) -> (...). Computed in
    float64 so that tiny changes do not drown in rounding."""
    log_p = before_logits.double().log_softmax(-1)
    log_q = after_logits.double().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


@dataclass
class WordChange:
    """How the log-probability of one word changed."""

    word: str | int
    token_id: int
    token: str
    logprob_before: float
    logprob_after: float

    @property
    def delta(self) -> float:
        return self.logprob_after - self.logprob_before

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "token": self.token, "token_id": self.token_id,
                "logprob_before": self.logprob_before, "logprob_after": self.logprob_after,
                "delta": self.delta}


@dataclass
class Comparison:
    """The prediction at one position of a text, before and after an edit set."""

    text: str
    position: int
    token: str  # the token at `position` (the prediction is for the one after it)
    before: list[TokenProb]  # most probable first
    after: list[TokenProb]
    kl: float  # KL(before || after), nats
    entered: list[str] = field(default_factory=list)  # in the top-k after, not before
    left: list[str] = field(default_factory=list)  # in the top-k before, not after
    words: list[WordChange] = field(default_factory=list)
    edits: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "position": self.position, "token": self.token,
                "edits": self.edits,
                "before": [{"token": t.token, "prob": t.prob} for t in self.before],
                "after": [{"token": t.token, "prob": t.prob} for t in self.after],
                "kl": self.kl, "entered": self.entered, "left": self.left,
                "words": [w.to_dict() for w in self.words]}


def word_changes(tokenizer: Tokenizer | None, before_logits: torch.Tensor, after_logits: torch.Tensor,
                 words: list[tuple[str | int, int]]) -> list[WordChange]:
    """words: (as given, token id) pairs; logits (vocab,)."""
    lp_before = before_logits.double().log_softmax(-1)
    lp_after = after_logits.double().log_softmax(-1)
    out = []
    for word, token_id in words:
        token = tokenizer.decode([token_id]) if tokenizer is not None else f"<{token_id}>"
        out.append(WordChange(word, token_id, token, float(lp_before[token_id]),
                              float(lp_after[token_id])))
    return out


def compare_logits(tokenizer: Tokenizer | None, before_logits: torch.Tensor,
                   after_logits: torch.Tensor, *, text: str = "", position: int = -1,
                   token: str = "", top: int = 10, words: list[tuple[str | int, int]] = (),
                   n_real: int | None = None, edits: dict[str, Any] | None = None) -> Comparison:
    """Compare two next-token distributions, logits (vocab,) each."""
    before = top_tokens(tokenizer, before_logits, top, n_real)
    after = top_tokens(tokenizer, after_logits, top, n_real)
    before_set, after_set = {t.token_id for t in before}, {t.token_id for t in after}
    return Comparison(
        text=text, position=position, token=token, before=before, after=after,
        kl=float(kl_divergence(before_logits, after_logits)),
        entered=[t.token for t in after if t.token_id not in before_set],
        left=[t.token for t in before if t.token_id not in after_set],
        words=word_changes(tokenizer, before_logits, after_logits, list(words)), edits=edits)
