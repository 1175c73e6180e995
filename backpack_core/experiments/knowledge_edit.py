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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backpack_core.common.progress import progress_bar
from backpack_core.edit.specs import EditSet, KnowledgeEdit

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------------
# Knowledge editing
# ----------------------------------------------------------------------------------------------

@dataclass
class KnowledgeEditResult:
    edits: EditSet
    shifts: list[dict[str, Any]]  # per prompt: {"prompt", "remove": {...}, "add": {...}, "kl"}
    generations: list[dict[str, str]]  # {"prompt", "before", "after"}

    def to_dict(self) -> dict[str, Any]:
        edit = self.edits.edits[0]
        return {"word": edit.word, "remove": edit.remove, "add": edit.add,
                "edits": self.edits.to_dict(), "prompts": self.shifts,
                "generations": self.generations}


def knowledge_edit(model: Backpack, tokenizer: Tokenizer, word: str, remove: str,
                   add: str | None, prompts: Sequence[str], generate_tokens: int = 0,
                   orthogonalize: bool = False, sample: bool = False, seed: int = 0,
                   progress: bool | None = None) -> KnowledgeEditResult:
    """The paper's knowledge edit of `word` (remove `remove`'s output direction from all its
    senses, add `add`'s), its probability shift on each prompt (next word after the prompt) for
    both targets, and, with generate_tokens > 0, generations before and after (same seed)."""
    from backpack_core.interpret.session import ContextSession

    edits = EditSet([KnowledgeEdit(word, remove=remove, add=add, orthogonalize=orthogonalize)],
                    name=f"{word!r}: {remove!r} -> {add!r}")
    edits.validate(tokenizer, model.config)  # one token each, or an EditError naming the pieces
    intervention = edits.compile(model, tokenizer)
    targets = [remove] + ([add] if add is not None else [])
    shifts = []
    for prompt in progress_bar(prompts, "prompts", enabled=progress):
        comparison = ContextSession(model, tokenizer, prompt).compare(intervention, -1, top=5,
                                                                      words=targets)
        row: dict[str, Any] = {"prompt": prompt, "kl": comparison.kl,
                               "top_before": [t.token for t in comparison.before],
                               "top_after": [t.token for t in comparison.after]}
        for role, change in zip(("remove", "add"), comparison.words):
            row[role] = {"token": change.token, "prob_before": math.exp(change.logprob_before),
                         "prob_after": math.exp(change.logprob_after),
                         "logprob_delta": change.delta}
        shifts.append(row)
    generations = []
    if generate_tokens > 0:
        from backpack_core.edit.generation import generate

        for prompt in progress_bar(prompts, "generating", enabled=progress):
            kwargs = dict(max_new_tokens=generate_tokens, do_sample=sample, seed=seed)
            generations.append({"prompt": prompt,
                                "before": generate(model, tokenizer, prompt, None, **kwargs),
                                "after": generate(model, tokenizer, prompt, intervention, **kwargs)})
    return KnowledgeEditResult(edits, shifts, generations)
