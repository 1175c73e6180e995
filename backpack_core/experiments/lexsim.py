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
