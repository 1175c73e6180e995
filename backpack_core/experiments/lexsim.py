"""Lexical similarity without peeking: the best single sense chosen on one benchmark is reported on
the other; single-token candidate words for the experiments' word lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from backpack_core.model.vocab import resolve_word

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.tokenizer import Tokenizer


def single_token_candidates(tokenizer: Tokenizer, candidates: Iterable[dict[str, Any]],
                            vocab_size: int | None = None,
                            keys: tuple[str, ...] = ("word", "remove", "add")
                            ) -> list[dict[str, Any]]:
    """The candidate edits ({"word", "remove", "add", ...}) whose words are all one token."""
    def single(word: Any) -> bool:
        return word is None or resolve_word(tokenizer, word, vocab_size).is_single

    return [c for c in candidates if all(single(c.get(key)) for key in keys)]



# ----------------------------------------------------------------------------------------------
# Lexical similarity: choosing a sense without peeking
# ----------------------------------------------------------------------------------------------

def held_out_sense(spearman_by_benchmark: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """For each benchmark B: the single sense with the best Spearman on the *other* benchmarks
    (their mean), and its Spearman on B. Picking the best of k senses on the pairs it is scored
    on inflates it (reference doc); this choice does not look at B.

    spearman_by_benchmark: {benchmark: {"sense_0": rho, ..., other methods}} ->
    {benchmark: {"sense", "chosen_on", "spearman"}} (empty with fewer than two benchmarks)."""
    out: dict[str, dict[str, Any]] = {}
    names = list(spearman_by_benchmark)
    if len(names) < 2:
        return out
    for name in names:
        others = [b for b in names if b != name]
        senses = [m for m in spearman_by_benchmark[name] if m.startswith("sense_")
                  and m.removeprefix("sense_").isdigit()]

        def score(method: str, others: list[str] = others) -> float:
            values = [spearman_by_benchmark[b].get(method, float("nan")) for b in others]
            values = [v for v in values if v is not None and math.isfinite(v)]
            return sum(values) / len(values) if values else float("-inf")

        if not senses:
            continue
        best = max(senses, key=score)
        out[name] = {"sense": int(best.removeprefix("sense_")), "chosen_on": others,
                     "spearman": spearman_by_benchmark[name][best]}
    return out
