"""The paper's experiments at our scale: topic control, gender bias, knowledge editing.

Each experiment is one function returning a small dataclass whose `to_dict()` is the JSON the
command-line tools print (`python -m analyses.topic_control` etc.), so the app can call the same
code. They build on the core: sense search (`sense_bank`), edits (`edits`), re-evaluation
(`session`) and generation (`generation`); what is new here is only what the experiments need:

- topic control: the (word, sense) pairs whose sense_logits put the most probability mass on
  the topic's words, found among candidates from the sense bank along the topic's centred
  output direction sum_w (E_w - mean_v E_v) (adding the same amount to every logit changes
  nothing, hence the centring); their contextualization weight is scaled by `strength`; topic
  success and fluency (perplexity of the continuations under the unedited model) with and
  without;
- gender bias: career-noun prompts, the bias ratio mean(max(p(he)/p(she), p(she)/p(he))),
  which is mean(exp |logit_he - logit_she|) (the softmax normaliser cancels); the sense index
  whose projection onto E_he - E_she is largest over career nouns; a down-weighting factor for
  it fit on training prompts; and the baseline of projecting the he-she direction out of the
  career tokens' input embedding;
- knowledge editing: a `KnowledgeEdit`, its probability shifts on prompts, and generations;
- lexical similarity: the best single sense chosen on one benchmark, reported on another.

Words are in-text forms (" science", with the leading space). Anything that must be one token
is checked, and words the vocabulary splits are reported, never silently cut to a piece.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    pass


def progress_bar(iterable: Iterable, desc: str, total: int | None = None, enabled: bool | None = None):
    """tqdm on stderr; enabled=None shows it only on a terminal, False never."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                disable=None if enabled is None or enabled else True)


def track(iterable: Iterable, desc: str, total: int,
          progress: bool | Callable[[int, int], None] | None = True) -> Iterator:
    """`iterable` with progress: a tqdm bar (True/None: on a terminal; False: none), or a
    callback `progress(done, total)` called after each item has been processed (the app's bar)."""
    if not callable(progress):
        return iter(progress_bar(iterable, desc, total=total, enabled=progress))

    def reported():
        for done, item in enumerate(iterable, 1):
            yield item
            progress(done, total)

    return reported()


def set_threads(n: int | None) -> None:
    """torch's intra-op threads (None: leave them). The experiments run many small forward
    passes, which on a busy CPU are several times faster on one thread than on two."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
