"""Texts longer than the model's context: which tokens to read instead of refusing the text.

A Backpack reads at most `n_positions` tokens at once. A longer text can be read as its last
`n_positions` tokens (what a prediction at the end of the text sees, as generation does), or as
one window of a sliding window over it: windows of `n_positions` tokens every `stride` tokens,
the last one ending with the text (as `model.evaluation.perplexity` slides over a corpus).

    window = text_window(tokenizer.encode(text), model.config.n_positions, mode="last")
    session = ContextSession(model, tokenizer, window.token_ids)

Used by the dashboard's Context and Steer pages and by `analyses.attribute` / `analyses.steer`
(`--long-text last|window --window-start N`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("error", "last", "window")


class LongTextError(ValueError):
    """A text longer than the context, read with mode "error"; says how to read it instead."""


@dataclass(frozen=True)
class TextWindow:
    """The tokens read of a text: token_ids = all_ids[start:start + len(token_ids)]."""

    token_ids: list[int]
    start: int  # offset of the first token read in the whole text
    total: int  # tokens in the whole text

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.total

    def describe(self) -> str:
        if self.whole:
            return f"all {self.total:,} tokens"
        return f"tokens {self.start:,}..{self.end - 1:,} of {self.total:,}"


def window_starts(total: int, n_ctx: int, stride: int | None = None) -> list[int]:
    """Starts of the sliding windows over `total` tokens: 0, stride, 2 * stride, ... and the
    last window ending with the text (total - n_ctx). stride defaults to n_ctx // 2."""
    if n_ctx < 1:
        raise ValueError(f"the context must be >= 1 token, got {n_ctx}")
    if total <= n_ctx:
        return [0]
    stride = max(1, n_ctx // 2) if stride is None else stride
    if stride < 1:
        raise ValueError(f"the stride must be >= 1 token, got {stride}")
    last = total - n_ctx
    return [*range(0, last, stride), last]


def text_window(token_ids: Sequence[int], n_ctx: int, mode: str = "error", start: int = 0
                ) -> TextWindow:
    """The tokens of a text the model reads: all of them when they fit in `n_ctx`; else, by
    `mode`: "last" (the last n_ctx tokens), "window" (n_ctx tokens from `start`, clamped so
    that the window stays inside the text), "error" (LongTextError saying what else to do)."""
    if mode not in MODES:
        raise ValueError(f"unknown long-text mode {mode!r}; choose one of {', '.join(MODES)}")
    ids = [int(i) for i in token_ids]
    total = len(ids)
    if total <= n_ctx:
        return TextWindow(ids, 0, total)
    if mode == "error":
        raise LongTextError(f"the text is {total:,} tokens long; the model reads at most {n_ctx:,}: "
                            "read its last tokens or one window of a sliding window instead "
                            "(--long-text last / window)")
    if mode == "last":
        first = total - n_ctx
    else:
        if isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"the window start must be an integer, got {start!r}")
        first = min(max(0, start), total - n_ctx)
    return TextWindow(ids[first:first + n_ctx], first, total)
