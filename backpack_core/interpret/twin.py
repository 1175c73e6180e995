"""The Backpack beside its Transformer twin on one text.

A twin is a Transformer trained like the Backpack, with the same contextualizer and tokenizer
(`model_kind = "transformer"`, e.g. configs/transformer-mini-cpu.toml beside
configs/backpack-mini-cpu.toml). A Backpack directory names its twin in config.json:

    "twin": "../transformer-mini-cpu"      # a directory, relative to the Backpack's directory

(`save_backpack(..., extra_config={"twin": ...})` writes it; `ModelConfig` ignores the key).
`compare_with_twin` runs both models on the same tokens and reports, per position, each one's
next-token predictions and its loss on the token that follows, and where the two next-token
distributions disagree most (Jensen-Shannon divergence, in nats, symmetric and at most ln 2).

    twin, twin_tokenizer = load_twin(twin_directory("path/to/backpack"))  # None: no twin named
    c = compare_with_twin(model, twin, tokenizer, "The MacBook is made by Apple.")
    c.loss, c.twin_loss          # (n - 1,) each: -log p(x_{i+1} | x_<=i)
    c.divergence                 # (n,) JS(p_backpack || p_twin) at each position
    c.disagreements(5)           # the positions where they disagree most
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from backpack_core.interpret.readouts import TokenProb, top_tokens
from backpack_core.model.vocab import token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

TWIN_FIELD = "twin"


def twin_directory(model_directory: str | os.PathLike) -> Path | None:
    """The twin named in the model's config.json ("twin": a path, relative to the directory of
    that config.json, or absolute), or None when it names none. A training run's directory is
    read at its latest checkpoint, as the loader does. ValueError when the path named is not a
    directory, saying which file names it."""
    from backpack_core.model.loading import CHECKPOINTS_DIR, CURRENT_LINK

    model_directory = Path(model_directory)
    current = model_directory / CHECKPOINTS_DIR / CURRENT_LINK
    if not (model_directory / "config.json").is_file() and current.is_dir():
        model_directory = current.resolve()
    config = model_directory / "config.json"
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no readable config: the model loader reports that
    value = raw.get(TWIN_FIELD) if isinstance(raw, dict) else None
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f'{config}: "{TWIN_FIELD}" must be a directory path (text), got {value!r}')
    path = Path(value).expanduser()
    path = path if path.is_absolute() else model_directory / path
    if not path.is_dir():
        raise ValueError(f'{config} names its Transformer twin "{value}", but {path} is not a '
                         "directory; train it (configs/transformer-*.toml) or correct the path")
    return path


def load_twin(source: str | os.PathLike, device=None, dtype=None):
    """(twin, tokenizer) from a model directory that must hold a Transformer
    (model_kind "transformer"); ValueError if it holds a Backpack."""
    from backpack_core.model.loading import load_backpack

    twin, tokenizer = load_backpack(source, device=device, dtype=dtype)
    if twin.config.is_backpack:
        raise ValueError(f"{source} holds a Backpack, not a Transformer twin (its config.json has "
                         f'model_kind "backpack"); a twin has model_kind "transformer"')
    return twin, tokenizer


def check_twin(model: Backpack, twin: Backpack, tokenizer: Tokenizer,
               twin_tokenizer: Tokenizer | None = None) -> None:
    """ValueError unless `twin` is a Transformer that reads the same tokens as `model`."""
    if not model.config.is_backpack:
        raise ValueError("the model to compare is a Transformer; give the Backpack first")
    if twin.config.is_backpack:
        raise ValueError("the twin is a Backpack; a twin has model_kind \"transformer\"")
    if twin.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the twin's vocabulary has {twin.config.vocab_size:,} tokens, the "
                         f"Backpack's {model.config.vocab_size:,}: they do not read the same "
                         "tokens")
    if twin_tokenizer is not None and (
            len(twin_tokenizer) != len(tokenizer)
            or twin_tokenizer.backend.get_vocab(True) != tokenizer.backend.get_vocab(True)):
        raise ValueError("the twin's tokenizer differs from the Backpack's: the two models do not "
                         "read the same tokens, so their predictions cannot be compared")


@dataclass
class TwinComparison:
    """Both models on the same tokens. Predictions and divergence at every position i (the
    prediction after token i); losses of the token that follows, positions 0..n-2."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    predictions: list[list[TokenProb]]  # the Backpack's top words after each token
    twin_predictions: list[list[TokenProb]]
    loss: torch.Tensor  # (n - 1,) nats
    twin_loss: torch.Tensor  # (n - 1,)
    divergence: torch.Tensor  # (n,) Jensen-Shannon, nats

    @property
    def n(self) -> int:
        return len(self.token_ids)

    def mean_loss(self) -> tuple[float, float]:
        """(Backpack, twin) mean loss over the text's n - 1 next tokens (nan for one token)."""
        if self.loss.numel() == 0:
            return math.nan, math.nan
        return float(self.loss.mean()), float(self.twin_loss.mean())

    def disagreements(self, top: int = 5) -> list[int]:
        """The positions of the `top` largest divergences, largest first."""
        order = torch.argsort(self.divergence, descending=True, stable=True)
        return [int(i) for i in order[:top]]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for i in range(self.n):
            nxt = self.tokens[i + 1] if i + 1 < self.n else None
            rows.append({
                "position": i, "token": self.tokens[i], "next_token": nxt,
                "backpack": [p.to_dict() for p in self.predictions[i]],
                "twin": [p.to_dict() for p in self.twin_predictions[i]],
                "loss": float(self.loss[i]) if nxt is not None else None,
                "twin_loss": float(self.twin_loss[i]) if nxt is not None else None,
                "divergence": float(self.divergence[i])})
        return rows

    def to_dict(self, top: int = 5) -> dict[str, Any]:
        loss, twin_loss = self.mean_loss()
        return {"text": self.text, "tokens": self.tokens, "token_ids": self.token_ids,
                "mean_loss": {"backpack": loss, "twin": twin_loss},
                "divergence": "Jensen-Shannon divergence of the next-token distributions, nats",
                "disagreements": self.disagreements(top), "positions": self.rows()}


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) of the softmaxes of (..., vocab) logits -> (...,)."""
    log_p, log_q = logits_p.double().log_softmax(-1), logits_q.double().log_softmax(-1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl = lambda a: (a.exp() * (a - log_m)).sum(-1)  # noqa: E731 - KL(a || m)
    return (0.5 * (kl(log_p) + kl(log_q))).clamp(min=0.0)


def compare_with_twin(model: Backpack, twin: Backpack, tokenizer: Tokenizer, text: str,
                      top: int = 5, twin_tokenizer: Tokenizer | None = None) -> TwinComparison:
    """Both models' next-token predictions and losses on `text`, and their divergence."""
    check_twin(model, twin, tokenizer, twin_tokenizer)
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: there is nothing to compare")
    n_max = min(model.config.n_positions, twin.config.n_positions)
    if len(ids) > n_max:
        raise ValueError(f"the text is {len(ids)} tokens long; the models read at most {n_max}")
    with torch.inference_mode():
        logits = model(torch.tensor(ids, device=model.wte.weight.device)[None]).logits[0]
        twin_logits = twin(torch.tensor(ids, device=twin.wte.weight.device)[None]).logits[0]
        twin_logits = twin_logits.to(logits.device)
        targets = torch.tensor(ids[1:], device=logits.device)
        loss = F.cross_entropy(logits[:-1].float(), targets, reduction="none")
        twin_loss = F.cross_entropy(twin_logits[:-1].float(), targets, reduction="none")
        divergence = js_divergence(logits, twin_logits)
    n_real = min(len(tokenizer), model.config.vocab_size)
    return TwinComparison(
        text=text, token_ids=ids, tokens=[token_text(tokenizer, i) for i in ids],
        predictions=[top_tokens(tokenizer, row, top, n_real) for row in logits],
        twin_predictions=[top_tokens(tokenizer, row, top, n_real) for row in twin_logits],
        loss=loss.cpu(), twin_loss=twin_loss.cpu(), divergence=divergence.float().cpu())
