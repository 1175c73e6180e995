"""Fast re-evaluation of one text under edits.

A Backpack's contextualization weights do not depend on the sense vectors, and the sense vectors
do not depend on context (reference doc, "Consequences"). So after one forward pass over a text,
any edit of senses or contextualization costs only the weighted sum

    o_i = sum_l sum_j alpha[l, i, j] C(x_j)_l          ("b k i j, b k j d -> b i d")

and the output projection logits_i = E o_i, and only for the query positions i whose
predictions are wanted (and only over sources j <= max i). Sense edits touch few tokens, so the
cached senses are mixed as they are and the edited tokens add a correction (see `_mixed`).
`ContextSession` caches `contextualization` (k, n, n), `senses` (k, n, d) and the unedited
logits (n, vocab); its results equal a full forward pass with the same intervention.

    session = ContextSession(model, tokenizer, "The MacBook is made by")
    session.logits(edits, positions=-1)          # (vocab,)
    session.compare(edits, position=-1, top=10)  # before / after, KL
    session.attribution(" Apple", position=-1)   # exact per-(sense, source) terms
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.edit.specs import EditSet, as_edit_set, check_edited_logits, to_intervention
from backpack_core.interpret.compare import Comparison, compare_logits, kl_divergence
from backpack_core.interpret.readouts import Attribution, ContextReadout, Prediction, top_tokens
from backpack_core.model.backpack import Intervention
from backpack_core.model.vocab import single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer


def _is_scalar(value: Any) -> bool:
    """An int, or a numpy / torch integer scalar (not a bool, not a sequence)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


class ContextSession:
    """One text, one forward pass, then cheap re-evaluation under any edit set.

    text: a string (tokenized with `tokenizer`) or a sequence / 1-d tensor of token ids
    (then `tokenizer` may be None if edits name words by token id).
    Every method runs without autograd and never changes the model. It computes in the model's
    dtype: float32 unless the model was loaded otherwise (`load_backpack`'s default on every
    device), which exact attribution needs.
    """

    def __init__(self, model: Backpack, tokenizer: Tokenizer | None,
                 text: str | Sequence[int] | torch.Tensor):
        if not model.config.is_backpack:
            raise ValueError("ContextSession needs a Backpack (this model is a Transformer twin: "
                             "it has no senses)")
        self.model, self.tokenizer = model, tokenizer
        device = model.wte.weight.device
        if isinstance(text, str):
            if tokenizer is None:
                raise ValueError("a text needs a tokenizer; give token ids instead")
            ids = tokenizer.encode(text)
            self.text = text
        else:
            ids = [int(i) for i in (text.tolist() if isinstance(text, torch.Tensor) else text)]
            self.text = tokenizer.decode(ids) if tokenizer is not None else ""
        if not ids:
            raise ValueError("the text is empty: there is nothing to read")
        n_max = model.config.n_positions
        if len(ids) > n_max:
            raise ValueError(f"the text is {len(ids)} tokens long; the model reads at most {n_max}")
        vocab = model.config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")
        self.n = len(ids)
        self._ids = torch.tensor(ids, device=device)[None]  # (1, n)
        self._positions = torch.arange(self.n, device=device)[None]  # (1, n)
        with torch.inference_mode():
            out = model(self._ids, output_contextualization=True, output_senses=True)
        self._contextualization = out.contextualization  # (1, k, n, n)
        self._senses = out.senses.contiguous()  # (1, k, n, d); contiguous: mix() reshapes it
        self.base_logits = out.logits[0]  # (n, vocab): the unedited predictions
        self.token_ids: list[int] = ids
        self.tokens = ([token_text(tokenizer, i) for i in ids] if tokenizer is not None
                       else [f"<{i}>" for i in ids])

    # -- cached tensors, batch axis dropped --

    @property
    def contextualization(self) -> torch.Tensor:
        """(k, query, source)"""
        return self._contextualization[0]

    @property
    def senses(self) -> torch.Tensor:
        """(k, seq, d)"""
        return self._senses[0]

    @property
    def n_real(self) -> int:
        """Token ids that are real words (the tokenizer's), not padding rows of the vocabulary."""
        vocab = self.model.config.vocab_size
        return min(len(self.tokenizer), vocab) if self.tokenizer is not None else vocab

    # -- positions and edits --

    def position(self, position: int) -> int:
        """A query position (negative counts from the end) -> 0..n-1, or ValueError."""
        try:
            if isinstance(position, bool):
                raise TypeError
            position = operator.index(position)  # ints, numpy / torch integer scalars
        except TypeError:
            raise ValueError(f"a position must be an integer, got {position!r}") from None
        p = position + self.n if position < 0 else position
        if not 0 <= p < self.n:
            raise ValueError(f"position {position} is outside the text: it has {self.n} tokens "
                             f"(positions 0..{self.n - 1}, or -1..-{self.n} from the end)")
        return p

    def _query(self, positions: int | Sequence[int] | None) -> list[int]:
        if positions is None:
            return list(range(self.n))
        if _is_scalar(positions):
            return [self.position(positions)]
        query = [self.position(p) for p in positions]
        if not query:
            raise ValueError("no positions asked for")
        return query

    def intervention(self, edits: Any) -> Intervention | None:
        """Compile edits (EditSet, dict, JSON text, list of edits, ...) for this model."""
        return to_intervention(edits, self.model, self.tokenizer)

    def _edited(self, intervention: Intervention | None, query: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextualization rows (1, k, p, m) of the query positions and senses (1, k, m, d) of
        sources 0..m-1 (m = max query + 1: later sources get no weight), after the edits."""
        m = max(query) + 1
        senses = self._senses[:, :, :m]
        if intervention is not None:
            senses = intervention.on_senses(senses, self._ids[:, :m], self._positions[:, :m])
        return self._edited_rows(intervention, query), senses

    def _edited_rows(self, intervention: Intervention | None, query: list[int]) -> torch.Tensor:
        """Contextualization rows (1, k, p, m) of the query positions, after the edits."""
        m = max(query) + 1
        if query == list(range(query[0], query[-1] + 1)):  # a slice: no copy
            rows = self._contextualization[:, :, query[0]:m, :m]
        else:
            rows = self._contextualization[:, :, query, :m]
        if intervention is not None:
            ids, positions = self._ids[:, :m], self._positions[:, :m]
            query_positions = torch.tensor(query, device=ids.device)[None]
            rows = intervention.on_contextualization(rows, ids, positions, query_positions)
        return rows

    def _mixed(self, intervention: Intervention | None, query: list[int]) -> torch.Tensor:
        """The weighted sum o_i (1, p, d) for the query positions, under `intervention`.

        With compiled edits (which report their `sense_sites`) the cached senses are mixed as
        they are and only the edited tokens add a correction, rows[..., U] @ (new - old)[U]:
        no copy of the (k, n, d) senses. Other interventions get the plain path."""
        sites = getattr(intervention, "sense_sites", None)
        if sites is None:
            return self.model.mix(*self._edited(intervention, query))
        m = max(query) + 1
        rows, senses = self._edited_rows(intervention, query), self._senses[:, :, :m]
        mixed = self.model.mix(rows, senses)
        ids, positions = self._ids[:, :m], self._positions[:, :m]
        edited = sites(ids, positions)[0].nonzero().squeeze(1)  # (u,) source positions
        if edited.numel():
            old = senses[:, :, edited]  # (1, k, u, d)
            new = intervention.on_senses(old, ids[:, edited], positions[:, edited])
            mixed = mixed + self.model.mix(rows[..., edited], new - old)
        return mixed

    # -- predictions --

    def logits(self, edits: Any = None, positions: int | Sequence[int] | None = None) -> torch.Tensor:
        """Next-token logits under `edits` at `positions` (default all): (p, vocab), or (vocab,)
        for a single int position. Equal to the full forward pass with the same intervention."""
        intervention = self.intervention(edits)
        query = self._query(positions)
        with torch.inference_mode():
            if intervention is None:
                out = self.base_logits[query]
            else:
                out = self.model.output_logits(self._mixed(intervention, query))[0]  # (p, vocab)
                check_edited_logits(out)  # never a NaN shown as a prediction
        return out[0] if _is_scalar(positions) else out

    def kl(self, edits: Any, positions: int | Sequence[int] | None = None) -> torch.Tensor:
        """KL(before || after) per position: (p,) float64."""
        query = self._query(positions)
        after = self.logits(edits, query)
        return kl_divergence(self.base_logits[query], after)

    def compare(self, edits: Any, position: int = -1, top: int = 10,
                words: Sequence[str | int] = ()) -> Comparison:
        """The prediction at `position` before and after `edits`: top-k of each, the tokens that
        entered / left the top-k, KL(before || after) and the log-probability change of `words`."""
        i = self.position(position)
        if isinstance(edits, Intervention):
            edit_set = None
        else:
            edit_set = as_edit_set(edits) if edits is not None else EditSet()
        after = self.logits(edit_set if edit_set is not None else edits, i)
        vocab = self.model.config.vocab_size
        word_ids = [(w, single_token_id(self.tokenizer, w, vocab, role="word")) for w in words]
        return compare_logits(self.tokenizer, self.base_logits[i], after, text=self.text,
                              position=i, token=self.tokens[i], top=top, words=word_ids,
                              n_real=self.n_real,
                              edits=edit_set.to_dict() if edit_set is not None else None)

    # -- attribution --

    def attribution(self, target: str | int, position: int = -1, edits: Any = None) -> Attribution:
        """contributions[l, j] = alpha[l, i, j] * (E_target . C(x_j)_l) for j <= i, summing to the
        model's logit of `target` at position i (under `edits`, if given)."""
        i = self.position(position)
        target_id = single_token_id(self.tokenizer, target, self.model.config.vocab_size,
                                    role="target")
        intervention = self.intervention(edits)
        with torch.inference_mode():
            rows, senses = self._edited(intervention, [i])  # (1, k, 1, i+1), (1, k, i+1, d)
            e_w = self.model.wte.weight[target_id]  # (d,)
            projected = senses[0] @ e_w  # (k, i+1): E_w . C(x_j)_l
            contributions = rows[0, :, 0, :] * projected  # (k, i+1)
            if intervention is None:
                logit = self.base_logits[i, target_id]
            else:
                logit = self.model.output_logits(self.model.mix(rows, senses))[0, 0, target_id]
        return Attribution(
            text=self.text, token_ids=self.token_ids, tokens=self.tokens, position=i,
            target=target, target_id=target_id,
            target_token=(token_text(self.tokenizer, target_id) if self.tokenizer is not None
                          else f"<{target_id}>"),
            logit=float(logit), contributions=contributions.float().cpu())

    # -- readout --

    def readout(self, top: int = 5) -> ContextReadout:
        """Tokens, next-token distribution at each position, contextualization (k, n, n)."""
        with torch.inference_mode():
            probs = self.base_logits.float().softmax(-1)
        predictions = []
        for i in range(self.n):
            nxt = self.token_ids[i + 1] if i + 1 < self.n else None
            predictions.append(Prediction(
                position=i, token=self.tokens[i],
                top=top_tokens(self.tokenizer, self.base_logits[i], top, self.n_real),
                next_token=self.tokens[i + 1] if nxt is not None else None,
                next_prob=float(probs[i, nxt]) if nxt is not None else None))
        return ContextReadout(self.text, self.token_ids, self.tokens, predictions,
                              self.contextualization.float().cpu())


# ----------------------------------------------------------------------------------------------
# One-call readouts (a session used once)
# ----------------------------------------------------------------------------------------------

def context_readout(model: Backpack, tokenizer: Tokenizer, text: str, top: int = 5
                    ) -> ContextReadout:
    """A text's tokens, the next-token distribution at each position and its contextualization
    weights per sense (k, query, source)."""
    return ContextSession(model, tokenizer, text).readout(top=top)


def attribute(model: Backpack, tokenizer: Tokenizer, text: str, target: str | int,
              position: int = -1, edits=None) -> Attribution:
    """Exact attribution of the logit of `target` (one token) predicted at `position` of `text`
    (negative counts from the end), optionally under an edit set."""
    return ContextSession(model, tokenizer, text).attribution(target, position, edits=edits)
