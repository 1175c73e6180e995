"""Topic control (the paper's section on steering generation by topic).

The (word, sense) pairs whose sense_logits put the most probability mass on the topic's words
are found among candidates from the sense bank along the topic's centred output direction
sum_w (E_w - mean_v E_v) (adding the same amount to every logit changes nothing, hence the
centring); their contextualization weight is scaled by `strength`; topic success and fluency
(perplexity of the continuations under the unedited model) are measured with and without.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.common.limits import check_topic_request
from backpack_core.common.progress import progress_bar
from backpack_core.edit.specs import EditSet, ScaleContextualization
from backpack_core.experiments.words import (
    WordList,
    continuation_nll,
    mentions,
    real_vocab_size,
    single_token_words,
)
from backpack_core.model.vocab import WordError, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.interpret.sense_bank import SenseBank
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------------
# Topic control
# ----------------------------------------------------------------------------------------------

def topic_direction(model: Backpack, token_ids: Sequence[int], n_real: int | None = None
                    ) -> torch.Tensor:
    """(d,) sum over the topic words of E_w - mean_v E_v (the mean over the real vocabulary):
    C . direction is how much a sense raises the topic words' logits above the average word's."""
    if not token_ids:
        raise ValueError("the topic has no single-token words in this vocabulary")
    with torch.inference_mode():
        E = model.wte.weight.float()
        mean = E[: n_real or E.shape[0]].mean(0)
        return (E[torch.tensor(list(token_ids), device=E.device)] - mean).sum(0).cpu()


@dataclass
class TopicSense:
    """Sense `sense` of token `token_id`: `mass` is the probability its own distribution
    softmax(E . C(x)_l) puts on the topic words; `projection` is C(x)_l . topic_direction."""

    token_id: int
    token: str
    sense: int
    mass: float
    projection: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TopicSenses:
    """The (word, sense) pairs that most promote a topic, and the edit that turns them up."""

    topic: WordList
    hits: list[TopicSense]  # best first
    candidates: int = 0  # how many senses were scored exactly

    def edit_set(self, strength: float) -> EditSet:
        """One `scale_contextualization` edit per word (all its selected senses), factor
        `strength`, by token id (some selected tokens are pieces without a clean text form)."""
        senses: dict[int, list[int]] = {}
        for hit in self.hits:
            senses.setdefault(hit.token_id, []).append(hit.sense)
        return EditSet([ScaleContextualization(token_id, sorted(s), strength)
                        for token_id, s in senses.items()],
                       name=f"topic x{strength:g}",
                       description=f"scale up {len(self.hits)} topic senses by {strength:g}")

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic.to_dict(), "senses": [h.to_dict() for h in self.hits],
                "candidates": self.candidates}


def topic_senses(model: Backpack, tokenizer: Tokenizer, words: Iterable[str], top: int = 50,
                 bank: SenseBank | None = None, pool: int | None = None,
                 max_token_id: int | None = None, progress: bool | None = None) -> TopicSenses:
    """The `top` (word, sense) pairs of the vocabulary whose sense_logits put the most
    probability mass on the topic words: mass = sum_{w in topic} softmax(E . C(x)_l)_w.

    Scoring every sense exactly costs a (vocab * k, vocab) product, so candidates come first
    from the sense bank (reverse lookup along `topic_direction`): the `pool` senses with the
    largest projection and the `pool` with the largest cosine (default pool: max(2000, 20 top));
    a sense with high mass must point along the topic direction, so it is among them.

    `max_token_id` keeps only tokens with smaller ids: a BPE vocabulary numbers its merges in
    the order they were learned, most frequent first, so this keeps the common words, the ones
    that will be in a context (a contextualization edit only acts where its word occurs)."""
    from backpack_core.interpret.sense_bank import SenseBank

    topic = single_token_words(tokenizer, words, model.config.vocab_size)
    if not topic.ids:
        pieces = "; ".join(f"{d['word']!r} -> {d['tokens']}" for d in topic.dropped[:5])
        raise WordError(f"none of the topic words is a single token in this vocabulary ({pieces}); "
                        "give words the vocabulary holds whole")
    n_real = real_vocab_size(model, tokenizer)
    direction = topic_direction(model, topic.ids, n_real)
    limit = min(n_real, max_token_id) if max_token_id else n_real
    if bank is None:
        bank = SenseBank.for_model(model, progress=sys.stderr.isatty() if progress is None else progress)
    pool = pool or max(2000, 20 * top)
    candidates = sorted({(t, l) for normalize in (False, True)
                         for t, l, _ in bank.query(direction, top=pool, vocab_limit=limit,
                                                   normalize=normalize)})
    tokens = torch.tensor([t for t, _ in candidates])
    senses = torch.tensor([l for _, l in candidates])
    vectors = bank.senses[tokens, senses].float()  # (c, d)
    with torch.inference_mode():
        E = model.wte.weight[:n_real].float().cpu()
        logits = vectors @ E.T  # (c, vocab): the candidates' sense_logits
        log_mass = logits[:, topic.ids].logsumexp(-1) - logits.logsumexp(-1)
        projection = vectors @ direction
    order = log_mass.argsort(descending=True)[:top].tolist()
    hits = [TopicSense(int(tokens[i]), token_text(tokenizer, int(tokens[i])), int(senses[i]),
                       float(log_mass[i].exp()), float(projection[i])) for i in order]
    return TopicSenses(topic, hits, len(candidates))


@dataclass
class TopicSample:
    prompt: str
    seed: int
    before: str
    after: str
    before_topic_words: list[str]
    after_topic_words: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _summary(samples: list[TopicSample], side: str, nll: float, tokens: int) -> dict[str, Any]:
    hits = [bool(getattr(s, f"{side}_topic_words")) for s in samples]
    return {"topic_success": sum(hits) / len(hits) if hits else 0.0,
            "topic_words_per_sample": (sum(len(getattr(s, f"{side}_topic_words")) for s in samples)
                                       / len(samples)) if samples else 0.0,
            "perplexity": math.exp(nll / tokens) if tokens else None, "tokens": tokens}


@dataclass
class TopicControlResult:
    topic_name: str
    strength: float
    senses: TopicSenses
    samples: list[TopicSample]
    before: dict[str, Any]  # {"topic_success", "topic_words_per_sample", "perplexity", "tokens"}
    after: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic_name, "strength": self.strength,
                "words": self.senses.topic.words, "skipped_words": self.senses.topic.dropped,
                "senses": [h.to_dict() for h in self.senses.hits],
                "before": self.before, "after": self.after, "settings": self.settings,
                "samples": [s.to_dict() for s in self.samples]}


def topic_control(model: Backpack, tokenizer: Tokenizer, words: Sequence[str], strength: float,
                  prompts: Sequence[str], samples_per_prompt: int = 2, max_new_tokens: int = 30,
                  top_senses: int = 500, temperature: float = 1.0, top_p: float | None = 0.9,
                  seed: int = 0, topic_name: str = "topic", bank: SenseBank | None = None,
                  progress: bool | None = None) -> TopicControlResult:
    """Generate from each prompt `samples_per_prompt` times (seeds seed, seed+1, ...), without
    and with the topic senses' contextualization scaled by `strength` (same seed for both).

    Topic success: the fraction of samples whose continuation contains a topic word (any of
    `words`, also those the vocabulary splits: they are found in the text).
    Fluency: perplexity of the continuations (given their prompt) under the unedited model."""
    from backpack_core.edit.generation import generate

    if not strength >= 0 or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    if samples_per_prompt < 1 or not prompts:
        raise ValueError("need at least one prompt and one sample per prompt")
    check_topic_request(len(prompts) * samples_per_prompt, top_senses)
    senses = topic_senses(model, tokenizer, words, top=top_senses, bank=bank, progress=progress)
    edits = senses.edit_set(strength)
    intervention = edits.compile(model, tokenizer)
    runs = [(p, seed + s) for p in prompts for s in range(samples_per_prompt)]
    samples, nll, tokens = [], {"before": 0.0, "after": 0.0}, {"before": 0, "after": 0}
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                  top_p=top_p)
    for prompt, s in progress_bar(runs, "topic control", enabled=progress):
        texts = {}
        for side, edit in (("before", None), ("after", intervention)):
            texts[side] = generate(model, tokenizer, prompt, edit, seed=s, **kwargs)
            cont = tokenizer.encode(texts[side])
            nll[side] += continuation_nll(model, tokenizer.encode(prompt), cont)
            tokens[side] += len(cont)
        samples.append(TopicSample(prompt, s, texts["before"], texts["after"],
                                   mentions(texts["before"], words), mentions(texts["after"], words)))
    settings = {"prompts": list(prompts), "samples_per_prompt": samples_per_prompt,
                "max_new_tokens": max_new_tokens, "top_senses": top_senses,
                "temperature": temperature, "top_p": top_p, "seed": seed,
                "edited_words": len(edits)}
    return TopicControlResult(topic_name, strength, senses, samples,
                              _summary(samples, "before", nll["before"], tokens["before"]),
                              _summary(samples, "after", nll["after"], tokens["after"]), settings)
