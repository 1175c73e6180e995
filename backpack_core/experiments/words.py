"""Word lists and likelihoods shared by the paper's experiments.

Words are in-text forms (" science", with the leading space). Anything that must be one token
is checked, and words the vocabulary splits are reported, never silently cut to a piece.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.model.vocab import resolve_word

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer


def model_device(model: Backpack) -> torch.device:
    return model.wte.weight.device


def real_vocab_size(model: Backpack, tokenizer: Tokenizer | None) -> int:
    vocab = model.config.vocab_size
    return min(len(tokenizer), vocab) if tokenizer is not None else vocab


# ----------------------------------------------------------------------------------------------
# Words
# ----------------------------------------------------------------------------------------------

@dataclass
class WordList:
    """Words split by whether they are one token: `ids`/`words` kept, `dropped` with pieces."""

    words: list[str]
    ids: list[int]
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"word", "tokens"}

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "token_ids": self.ids, "dropped": self.dropped}


def single_token_words(tokenizer: Tokenizer, words: Iterable[str], vocab_size: int | None = None
                       ) -> WordList:
    """Keep the words that are one token (in the form given: " science" with its space)."""
    kept, ids, dropped = [], [], []
    for word in dict.fromkeys(words):
        resolved = resolve_word(tokenizer, word, vocab_size)
        if resolved.is_single:
            kept.append(word)
            ids.append(resolved.token_ids[0])
        else:
            dropped.append({"word": word, "tokens": resolved.tokens})
    return WordList(kept, ids, dropped)


def mentions(text: str, words: Iterable[str]) -> list[str]:
    """The words (compared case-insensitively as whole words, leading spaces ignored) that occur
    in `text`, in the order of `words`."""
    found = {w.lower() for w in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?", text)}
    return [w for w in dict.fromkeys(words) if w.strip().lower() in found]


@torch.inference_mode()
def continuation_nll(model: Backpack, prompt_ids: Sequence[int], continuation_ids: Sequence[int]
                     ) -> float:
    """Total negative log-likelihood (nats) of `continuation_ids` following `prompt_ids`.

    The prompt is context only: its own tokens are not scored. An empty prompt starts from EOS.
    """
    prompt_ids = list(prompt_ids) or [model.config.eos_token_id]
    continuation_ids = list(continuation_ids)
    if not continuation_ids:
        return 0.0
    ids = (prompt_ids + continuation_ids)[-model.config.n_positions:]
    n_cont = min(len(continuation_ids), len(ids) - 1)
    x = torch.tensor([ids], device=model_device(model))
    logprobs = model(x).logits[0].float().log_softmax(-1)  # (n, vocab)
    targets = x[0, -n_cont:]
    return float(-logprobs[-n_cont - 1:-1].gather(-1, targets[:, None]).sum())
