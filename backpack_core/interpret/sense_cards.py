"""A card per (word, sense), as feature dashboards show one per feature, and how senses compare.

    cards = sense_cards(model, tokenizer, " bank", top=10)       # one SenseCard per sense
    cards[3].top, cards[3].bottom, cards[3].duplicates
    near_duplicate_groups(senses, threshold=0.9)                  # [[1, 12], ...]
    sense_similarity(model, tokenizer, " bank", " river")         # (k, k) cosines

A card holds a sense's top and bottom words (sense_logits = E . C(x)_l; tokens that are only
bytes of a UTF-8 character, shown as <0xE2>, are left out by default: they crowd the lists of
small vocabularies and read as nothing), its norm, and the other senses of the same word that
are near-duplicates of it (cosine of the sense vectors >= a threshold). The dashboard's Senses
page draws them; the atlas adds where each sense is used.
"""

from __future__ import annotations

import re
import unicodedata
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from backpack_core.interpret.readouts import sense_logits
from backpack_core.model.vocab import single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

DUPLICATE_COSINE = 0.9  # two senses of a word this close (cosine of their vectors) are one
_BYTES = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_BYTE_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_byte_token(text: str) -> bool:
    """A token that holds only part of a UTF-8 character (`token_text` shows it as <0xE2>), or
    a control character other than a newline or tab (shown as <0x7F> too)."""
    return bool(_BYTES.search(text)) or any(
        unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text)


def byte_token_mask(tokenizer: Tokenizer, n_real: int) -> torch.Tensor:
    """(n_real,) bool: which token ids are byte tokens; computed once per tokenizer."""
    mask = _BYTE_MASKS.get(tokenizer)
    if mask is None or len(mask) != n_real:
        mask = torch.tensor([is_byte_token(token_text(tokenizer, i)) for i in range(n_real)])
        _BYTE_MASKS[tokenizer] = mask
    return mask


@dataclass
class SenseCard:
    """One sense of one word: its top / bottom words as (token, token_id, score), its norm and
    its near-duplicate senses (same word)."""

    word: str
    token_id: int
    sense: int
    norm: float
    top: list[tuple[str, int, float]]
    bottom: list[tuple[str, int, float]]
    duplicates: list[int] = field(default_factory=list)
    bytes_hidden: bool = True


def near_duplicate_groups(senses: torch.Tensor, threshold: float = DUPLICATE_COSINE
                          ) -> list[list[int]]:
    """senses (k, d) -> groups (two or more senses each, ascending) whose members are linked by
    cosine >= threshold (transitively: a chain of close senses is one group)."""
    unit = torch.nn.functional.normalize(senses.float(), dim=-1)
    close = (unit @ unit.T) >= threshold  # (k, k)
    k = senses.shape[0]
    parent = list(range(k))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in close.triu(1).nonzero().tolist():
        parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for s in range(k):
        groups.setdefault(root(s), []).append(s)
    return [g for g in groups.values() if len(g) > 1]


@torch.inference_mode()
def sense_cards(model: Backpack, tokenizer: Tokenizer, word: str | int, top: int = 10,
                hide_bytes: bool = True, threshold: float = DUPLICATE_COSINE) -> list[SenseCard]:
    """A card per sense of a one-token word (WordError otherwise): its `top` highest and lowest
    scoring words of E . C(word)_l (byte tokens left out when hide_bytes), its norm, and its
    near-duplicate senses (cosine >= threshold)."""
    token_id = single_token_id(tokenizer, word, model.config.vocab_size)
    n_real = min(len(tokenizer), model.config.vocab_size)
    senses = model.sense_vectors(torch.tensor(token_id, device=model.wte.weight.device))  # (k, d)
    logits = sense_logits(model, senses)[:, :n_real].float()  # (k, V)
    high, low = logits.clone(), logits.clone()
    if hide_bytes:
        mask = byte_token_mask(tokenizer, n_real).to(logits.device)
        high[:, mask], low[:, mask] = float("-inf"), float("inf")
    top = max(1, min(int(top), n_real))
    hi_v, hi_i = high.topk(top, dim=-1)  # (k, top)
    lo_v, lo_i = low.topk(top, dim=-1, largest=False)
    groups = near_duplicate_groups(senses, threshold)
    text = token_text(tokenizer, token_id)
    cards = []
    for l in range(senses.shape[0]):
        group = next((g for g in groups if l in g), [])
        cards.append(SenseCard(
            text, token_id, l, float(senses[l].float().norm()),
            [(token_text(tokenizer, i), i, v) for v, i in zip(hi_v[l].tolist(), hi_i[l].tolist())],
            [(token_text(tokenizer, i), i, v) for v, i in zip(lo_v[l].tolist(), lo_i[l].tolist())],
            [s for s in group if s != l], hide_bytes))
    return cards


@torch.inference_mode()
def sense_similarity(model: Backpack, tokenizer: Tokenizer | None, word_a: str | int,
                     word_b: str | int) -> torch.Tensor:
    """(k, k) cosine similarity of the sense vectors of two one-token words: [i, j] = cos(
    C(a)_i, C(b)_j). WordError when a word is not one token."""
    vocab = model.config.vocab_size
    ids = torch.tensor([single_token_id(tokenizer, w, vocab) for w in (word_a, word_b)],
                       device=model.wte.weight.device)
    senses = torch.nn.functional.normalize(model.sense_vectors(ids).float(), dim=-1)  # (2, k, d)
    return (senses[0] @ senses[1].T).cpu()
