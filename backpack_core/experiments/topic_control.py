"""Topic control (the paper's section on steering generation by topic).

The (word, sense) pairs whose sense_logits put the most probability mass on the topic's words
are found among candidates from the sense bank along the topic's centred output direction
sum_w (E_w - mean_v E_v) (adding the same amount to every logit changes nothing, hence the
centring); their contextualization weight is scaled by `strength`; topic success and fluency
(perplexity of the continuations under the unedited model) are measured with and without.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from backpack_core.common.limits import check_topic_request
from backpack_core.common.progress import progress_bar
from backpack_core.edit.specs import EditSet, ScaleContextualization
from backpack_core.experiments.words import (
    WordList,
    continuation_nll,
    mentions,
    model_device,
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


@torch.inference_mode()
def word_boundary(model: Backpack, tokenizer: Tokenizer, token_ids: Sequence[int],
                  n_real: int | None = None, batch: int = 1024) -> torch.Tensor:
    """(n,) the model's probability that a word ends after each token (seen alone, after EOS):
    the mass of the next tokens that do not continue it, those whose text starts with a space,
    punctuation or a newline. A word piece such as ' regul' (of ' regulation') scores low, a
    whole word such as ' science' high."""
    n_real = n_real or real_vocab_size(model, tokenizer)
    starts = torch.tensor([not token_text(tokenizer, i)[:1].isalnum() for i in range(n_real)],
                          device=model_device(model))  # (V,) tokens that begin a new word or a sign
    out = []
    for first in range(0, len(token_ids), batch):
        chunk = torch.tensor([[model.config.eos_token_id, t] for t in token_ids[first:first + batch]],
                             device=model_device(model))  # (b, 2)
        probs = model(chunk).logits[:, -1, :n_real].float().softmax(-1)  # (b, V)
        out.append(probs[:, starts].sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


WHOLE_WORD = re.compile(r"^ [A-Za-z]+$")  # a word as it reads in a text: a space, then letters


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
    word_pieces: int = 0  # candidates left out as word pieces (whole_words), not whole words

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
                "candidates": self.candidates, "word_pieces": self.word_pieces}


def topic_senses(model: Backpack, tokenizer: Tokenizer, words: Iterable[str], top: int = 50,
                 bank: SenseBank | None = None, pool: int | None = None,
                 max_token_id: int | None = None, progress: bool | None = None,
                 whole_words: bool = True) -> TopicSenses:
    """The `top` (word, sense) pairs of the vocabulary whose sense_logits put the most
    probability mass on the topic words: mass = sum_{w in topic} softmax(E . C(x)_l)_w.

    Scoring every sense exactly costs a (vocab * k, vocab) product, so candidates come first
    from the sense bank (reverse lookup along `topic_direction`): the `pool` senses with the
    largest projection and the `pool` with the largest cosine (default pool: max(2000, 20 top));
    a sense with high mass must point along the topic direction, so it is among them.

    `max_token_id` keeps only tokens with smaller ids: a BPE vocabulary numbers its merges in
    the order they were learned, most frequent first, so this keeps the common words, the ones
    that will be in a context (a contextualization edit only acts where its word occurs).

    `whole_words`: keep only senses of whole words, tokens that read as a space and letters
    after which the model expects a word to end (`word_boundary` >= 0.5): the senses of a word
    piece such as ' regul' or ' mathemat' act only where the model writes that piece, which
    is rare (issue 20: the README's science example chose 151 such tokens and changed nothing)."""
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
        bank = SenseBank.for_model(model, progress=progress is not False)
    pool = pool or max(2000, 20 * top)
    candidates = sorted({(t, l) for normalize in (False, True)
                         for t, l, _ in bank.query(direction, top=pool, vocab_limit=limit,
                                                   normalize=normalize)})
    pieces = 0
    if whole_words:
        ids = sorted({t for t, _ in candidates if WHOLE_WORD.match(token_text(tokenizer, t))})
        whole = {t for t, p in zip(ids, word_boundary(model, tokenizer, ids, n_real).tolist())
                 if p >= 0.5}
        kept = [(t, l) for t, l in candidates if t in whole]
        pieces, candidates = len(candidates) - len(kept), kept
        if not candidates:
            raise WordError("no whole word has a sense that promotes these topic words; "
                            "pass whole_words=False to use word pieces too")
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
    return TopicSenses(topic, hits, len(candidates), pieces)


@dataclass
class TopicSample:
    prompt: str
    seed: int
    before: str
    after: str
    before_topic_words: list[str]
    after_topic_words: list[str]
    edited_words_in_context: list[str] = field(default_factory=list)  # edited tokens the "after" run saw

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
    notes: list[str] = field(default_factory=list)  # why the edit changed nothing, when it did not

    @property
    def samples_changed(self) -> int:
        return sum(s.before != s.after for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic_name, "strength": self.strength,
                "words": self.senses.topic.words, "skipped_words": self.senses.topic.dropped,
                "senses": [h.to_dict() for h in self.senses.hits], "notes": self.notes,
                "samples_changed": self.samples_changed,
                "before": self.before, "after": self.after, "settings": self.settings,
                "samples": [s.to_dict() for s in self.samples]}


def topic_control(model: Backpack, tokenizer: Tokenizer, words: Sequence[str], strength: float,
                  prompts: Sequence[str], samples_per_prompt: int = 2, max_new_tokens: int = 30,
                  top_senses: int = 500, temperature: float = 1.0, top_p: float | None = 0.9,
                  seed: int = 0, topic_name: str = "topic", bank: SenseBank | None = None,
                  progress: bool | None = None, whole_words: bool = True) -> TopicControlResult:
    """Generate from each prompt `samples_per_prompt` times (seeds seed, seed+1, ...), without
    and with the topic senses' contextualization scaled by `strength` (same seed for both).

    Topic success: the fraction of samples whose continuation contains a topic word (any of
    `words`, also those the vocabulary splits: they are found in the text).
    Fluency: perplexity of the continuations (given their prompt) under the unedited model.
    `notes` says why nothing could change when nothing did: strength 1, or none of the edited
    words in any prompt or sample (the edit acts only where its word is in the context)."""
    from backpack_core.edit.generation import generate

    if not strength >= 0 or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    if samples_per_prompt < 1 or not prompts:
        raise ValueError("need at least one prompt and one sample per prompt")
    check_topic_request(len(prompts) * samples_per_prompt, top_senses)
    senses = topic_senses(model, tokenizer, words, top=top_senses, bank=bank, progress=progress,
                          whole_words=whole_words)
    edits = senses.edit_set(strength)
    edited = {h.token_id for h in senses.hits}
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
        # what the edited run's predictions saw: the prompt and every sampled token but the last
        context = tokenizer.encode(prompt) + tokenizer.encode(texts["after"])[:-1]
        present = [token_text(tokenizer, t) for t in dict.fromkeys(context) if t in edited]
        samples.append(TopicSample(prompt, s, texts["before"], texts["after"],
                                   mentions(texts["before"], words), mentions(texts["after"], words),
                                   present))
    settings = {"prompts": list(prompts), "samples_per_prompt": samples_per_prompt,
                "max_new_tokens": max_new_tokens, "top_senses": top_senses,
                "temperature": temperature, "top_p": top_p, "seed": seed,
                "edited_words": len(edits), "whole_words": whole_words}
    notes = []
    if strength == 1:
        notes.append("strength 1 leaves every weight as it is: no sample can change")
    elif not any(s.edited_words_in_context for s in samples):
        notes.append(f"none of the {len(edits)} edited words occurred in a prompt or a sample, so no "
                     "sample changed: the edit acts only where its word is in the context. Give "
                     "prompts that hold such words (--prompts), or more --samples / --tokens")
    elif not any(s.before != s.after for s in samples):
        reached = sum(bool(s.edited_words_in_context) for s in samples)
        notes.append(f"edited words occurred in {reached} of {len(samples)} samples, but no sample "
                     f"changed at strength {strength:g}: try a larger --strength")
    return TopicControlResult(topic_name, strength, senses, samples,
                              _summary(samples, "before", nll["before"], tokens["before"]),
                              _summary(samples, "after", nll["after"], tokens["after"]), settings,
                              notes)
