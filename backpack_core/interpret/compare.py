"""Before/after comparison of next-token distributions: top-k changes, log-probability changes
of given words, and KL(before || after).

All functions take logits over the vocabulary (last axis); `ContextSession.compare` wires them
to a text and an edit set.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.edit.specs import EditSet, as_edit_set
from backpack_core.interpret.readouts import TokenProb, top_tokens

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.interpret.session import ContextSession
    from backpack_core.model.tokenizer import Tokenizer


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


# ----------------------------------------------------------------------------------------------
# Every position of a text at once
# ----------------------------------------------------------------------------------------------

@dataclass
class _BaseStats:
    """Per text, computed once: the unedited next-token distributions."""

    probs: torch.Tensor  # (n, vocab) float32
    lse: torch.Tensor  # (n,) logsumexp of the logits
    top_ids: list[int]  # most probable next token (among the real tokens) at each position
    top_probs: list[float]


_BASE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _base_stats(session: ContextSession) -> _BaseStats:
    stats = _BASE.get(session)
    if stats is None:
        with torch.inference_mode():
            logits = session.base_logits.float()
            lse = logits.logsumexp(-1)
            best, ids = logits[:, : session.n_real].max(-1)
            stats = _BaseStats((logits - lse[:, None]).exp(), lse, ids.tolist(),
                               (best - lse).exp().tolist())
        _BASE[session] = stats
    return stats


@dataclass
class PositionChanges:
    """Every position's next-token prediction before and after an edit set."""

    top_before: list[int]  # most probable next token id at each position, before
    p_before: list[float]
    top_after: list[int]
    p_after: list[float]
    kl: list[float]  # KL(before || after) per position, nats
    logit_change: list[float]  # max over words of |logit after - logit before| per position
    after_logits: torch.Tensor | None = field(default=None, repr=False)  # (n, vocab); None: no edit

    @property
    def changed(self) -> list[bool]:
        """Positions whose most probable next token changed."""
        return [b != a for b, a in zip(self.top_before, self.top_after)]

    def ranked(self) -> list[int]:
        """Positions that changed at all, the most affected first (by KL, then logit change)."""
        moved = [i for i, (k, d) in enumerate(zip(self.kl, self.logit_change)) if k > 0 or d > 0]
        return sorted(moved, key=lambda i: (-self.kl[i], -self.logit_change[i], i))

    @property
    def most_affected(self) -> int | None:
        """The position whose prediction changed most, or None when none changed."""
        ranked = self.ranked()
        return ranked[0] if ranked else None


def position_changes(session: ContextSession, edits: Any) -> PositionChanges:
    """The prediction at every position of `session`'s text before and after `edits`: one
    re-mix of the cached contextualization and senses (no forward pass). KL per position comes
    from the cached unedited probabilities in float32 (exactly 0 where the logits did not
    change); `kl_divergence` gives float64 at one position."""
    intervention = session.intervention(edits)
    base = _base_stats(session)
    n = session.n
    if intervention is None:
        return PositionChanges(base.top_ids, base.top_probs, base.top_ids, base.top_probs,
                               [0.0] * n, [0.0] * n)
    with torch.inference_mode():
        after = session.logits(intervention).float()  # (n, vocab)
        lse_after = after.logsumexp(-1)
        best_after, id_after = after[:, : session.n_real].max(-1)
        diff = session.base_logits.float() - after  # (n, vocab)
        # KL(before || after) = sum_w p_b (b - a) - lse_b + lse_a
        kl = ((base.probs * diff).sum(-1) - base.lse + lse_after).clamp_min(0.0)
        change = diff.abs().amax(-1)
    return PositionChanges(base.top_ids, base.top_probs, id_after.tolist(),
                           (best_after - lse_after).exp().tolist(), kl.tolist(), change.tolist(),
                           after)


def edit_effects(session: ContextSession, edits: Any) -> list[PositionChanges]:
    """Each edit of an edit set applied alone: which positions it changes and by how much.
    (An edit can act only at its own word's positions: this says where to look.)"""
    edit_set = as_edit_set(edits)
    return [position_changes(session, EditSet([edit])) for edit in edit_set]
