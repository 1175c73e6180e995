"""Knowledge editing (the paper's " United" - " States" + " Nations" edit): a `KnowledgeEdit`, its
probability shifts on prompts, and generations before and after.
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
