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

import copy
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .edits import EditSet, KnowledgeEdit, ScaleContextualization
from .inspect import WordError, resolve_word, single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    from .model import Backpack
    from .sense_bank import SenseBank
    from .tokenizer import Tokenizer


def progress_bar(iterable: Iterable, desc: str, total: int | None = None, enabled: bool | None = None):
    """tqdm on stderr, also when stderr is not a terminal (a log, a pipe: then an update every
    10 s, and the last one stays); enabled=False: none. stdout (the result, --json) is untouched."""
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=not terminal,
                mininterval=0.1 if terminal else 10.0, disable=enabled is False)


def track(iterable: Iterable, desc: str, total: int,
          progress: bool | Callable[[int, int], None] | None = True) -> Iterator:
    """`iterable` with progress: a tqdm bar on stderr (True/None; False: none), or a
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


def _device(model: Backpack) -> torch.device:
    return model.wte.weight.device


def _n_real(model: Backpack, tokenizer: Tokenizer | None) -> int:
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
    x = torch.tensor([ids], device=_device(model))
    logprobs = model(x).logits[0].float().log_softmax(-1)  # (n, vocab)
    targets = x[0, -n_cont:]
    return float(-logprobs[-n_cont - 1:-1].gather(-1, targets[:, None]).sum())


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
    n_real = n_real or _n_real(model, tokenizer)
    starts = torch.tensor([not token_text(tokenizer, i)[:1].isalnum() for i in range(n_real)],
                          device=_device(model))  # (V,) tokens that begin a new word or a sign
    out = []
    for first in range(0, len(token_ids), batch):
        chunk = torch.tensor([[model.config.eos_token_id, t] for t in token_ids[first:first + batch]],
                             device=_device(model))  # (b, 2)
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
    from .sense_bank import SenseBank

    topic = single_token_words(tokenizer, words, model.config.vocab_size)
    if not topic.ids:
        pieces = "; ".join(f"{d['word']!r} -> {d['tokens']}" for d in topic.dropped[:5])
        raise WordError(f"none of the topic words is a single token in this vocabulary ({pieces}); "
                        "give words the vocabulary holds whole")
    n_real = _n_real(model, tokenizer)
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
    from .generation import generate

    if not strength >= 0 or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    if samples_per_prompt < 1 or not prompts:
        raise ValueError("need at least one prompt and one sample per prompt")
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


# ----------------------------------------------------------------------------------------------
# Gender bias
# ----------------------------------------------------------------------------------------------

@dataclass
class CareerPrompt:
    """One prompt: `template` with `career` in it; `career_positions` are the token positions of
    the career's piece(s) (the prompt is tokenized in parts, so they are exact)."""

    template: str
    career: str
    text: str
    token_ids: list[int]
    career_positions: list[int]

    @property
    def career_ids(self) -> list[int]:
        return [self.token_ids[p] for p in self.career_positions]


def career_prompts(tokenizer: Tokenizer, templates: Iterable[str], careers: Iterable[str]
                   ) -> list[CareerPrompt]:
    """Fill each template ("The{} said that": '{}' takes " nurse", with its space) with each
    career noun (given without the space)."""
    out = []
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must hold exactly one '{{}}' for the career")
        prefix, suffix = template.split("{}")
        for career in careers:
            word = " " + career.strip()
            pre, mid, post = tokenizer.encode(prefix), tokenizer.encode(word), tokenizer.encode(suffix)
            out.append(CareerPrompt(template, career.strip(), prefix + word + suffix,
                                    pre + mid + post, list(range(len(pre), len(pre) + len(mid)))))
    return out


def gender_direction(model: Backpack, tokenizer: Tokenizer, he: str = " he", she: str = " she"
                     ) -> tuple[torch.Tensor, int, int]:
    """(E_he - E_she (d,), he id, she id): the logit-difference direction in output space."""
    he_id = single_token_id(tokenizer, he, model.config.vocab_size, role="pronoun")
    she_id = single_token_id(tokenizer, she, model.config.vocab_size, role="pronoun")
    with torch.inference_mode():
        E = model.wte.weight.float()
        return (E[he_id] - E[she_id]).cpu(), he_id, she_id


@torch.inference_mode()
def sense_separation(model: Backpack, career_token_ids: Sequence[Sequence[int]],
                     direction: torch.Tensor) -> torch.Tensor:
    """(k,) for each sense index l: mean over careers of |direction . C(x)_l|, averaged over a
    career's pieces: how strongly sense l of career nouns pushes he against she."""
    d = direction.to(_device(model), torch.float32)
    per_career = []
    for ids in career_token_ids:
        senses = model.sense_vectors(torch.tensor(list(ids), device=_device(model))).float()
        per_career.append((senses @ d).abs().mean(0))  # (pieces, k) -> (k,)
    return torch.stack(per_career).mean(0).cpu()


def bias_ratio(gaps: torch.Tensor) -> float:
    """mean over prompts of max(p(he)/p(she), p(she)/p(he)) = mean exp(|logit_he - logit_she|)."""
    return float(gaps.double().abs().exp().mean())


def downweight_edits(prompt: CareerPrompt, sense: int | Sequence[int], factor: float) -> EditSet:
    """Scale the contextualization weight of `sense` on the career's piece(s) of this prompt."""
    return EditSet([ScaleContextualization(token_id, sense, factor, positions=[p])
                    for p, token_id in zip(prompt.career_positions, prompt.career_ids)])


class _PromptSessions:
    """One `ContextSession` per prompt: each factor then costs a weighted sum per prompt."""

    def __init__(self, model: Backpack, tokenizer: Tokenizer, prompts: list[CareerPrompt],
                 he_id: int, she_id: int, progress: bool | None = None):
        from .session import ContextSession

        self.prompts, self.he_id, self.she_id = prompts, he_id, she_id
        self.sessions = [ContextSession(model, tokenizer, p.token_ids)
                         for p in progress_bar(prompts, "prompts", enabled=progress)]

    def gaps(self, sense: int | Sequence[int] | None = None, factor: float = 1.0) -> torch.Tensor:
        """(prompts,) logit_he - logit_she at the last position, with the career's `sense`
        contextualization scaled by `factor` (none: unedited)."""
        out = []
        for prompt, session in zip(self.prompts, self.sessions):
            edits = None if sense is None else downweight_edits(prompt, sense, factor)
            logits = session.logits(edits, positions=-1)
            out.append(logits[self.he_id] - logits[self.she_id])
        return torch.stack(out).float().cpu()

    def career_contributions(self) -> torch.Tensor:
        """(prompts, k): the part of logit_he - logit_she (unedited) that the career token(s)'
        senses contribute, per sense: sum over the career positions j of
        alpha[l, i, j] * ((E_he - E_she) . C(x_j)_l), from the exact attribution."""
        out = []
        for prompt, session in zip(self.prompts, self.sessions):
            he = session.attribution(self.he_id, -1).contributions  # (k, n)
            she = session.attribution(self.she_id, -1).contributions
            out.append((he - she)[:, prompt.career_positions].sum(1))
        return torch.stack(out).float()


@torch.inference_mode()
def last_position_gaps(model: Backpack, prompts: Sequence[CareerPrompt], he_id: int, she_id: int
                       ) -> torch.Tensor:
    """(prompts,) logit_he - logit_she after each prompt, by plain forward passes (any model:
    a Backpack or its Transformer twin), prompts of equal length batched together."""
    gaps = torch.empty(len(prompts))
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p.token_ids), []).append(i)
    for rows in by_length.values():
        x = torch.tensor([prompts[i].token_ids for i in rows], device=_device(model))
        logits = model(x).logits[:, -1].float()
        gaps[rows] = (logits[:, he_id] - logits[:, she_id]).cpu()
    return gaps


def project_out_embedding(model: Backpack, token_ids: Iterable[int], direction: torch.Tensor
                          ) -> Backpack:
    """A copy of `model` whose embedding rows `token_ids` have `direction` projected out:
    E_x <- E_x - (E_x . u) u, u = direction / |direction|. The row feeds the contextualizer and
    (in a Backpack) the sense network. E is tied to the output layer, so those words' own logits
    change too, but not the logits of other words (p(he)/p(she) after a prompt is unaffected
    except through the prompt's representation). The original model is not touched."""
    edited = copy.deepcopy(model)
    u = direction.to(_device(model), torch.float32)
    u = u / u.norm().clamp_min(1e-12)
    ids = torch.tensor(sorted(set(int(i) for i in token_ids)), device=_device(model))
    with torch.no_grad():
        rows = edited.wte.weight[ids].float()
        rows = rows - (rows @ u)[:, None] * u
        edited.wte.weight[ids] = rows.to(edited.wte.weight.dtype)
    return edited


@dataclass
class GenderBiasResult:
    sense: int
    sense_scores: list[float]  # (k,) sense_separation
    sense_chosen_by: str
    factor: float
    fit: list[dict[str, float]]  # [{"factor", "bias_ratio"}] on the training prompts
    train: dict[str, float]  # {"before", "after"}
    heldout: dict[str, float]  # {"before", "after", "projection_baseline"} (+ "twin_*")
    gap: dict[str, Any]  # held-out, unedited: mean gap and the career senses' share of it
    careers: list[str]
    skipped_careers: list[dict[str, Any]]
    prompts: dict[str, int]
    per_career: list[dict[str, Any]]  # held-out mean gap before / after per career

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


DEFAULT_FACTORS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def gender_bias(model: Backpack, tokenizer: Tokenizer, careers: Sequence[str],
                train_templates: Sequence[str], heldout_templates: Sequence[str],
                sense: int | None = None, factors: Sequence[float] = DEFAULT_FACTORS,
                pronouns: tuple[str, str] = (" he", " she"), twin: Backpack | None = None,
                single_token_only: bool = False, progress: bool | None = None) -> GenderBiasResult:
    """The paper's gender-bias experiment.

    1. sense index: the one whose sense vectors of the career nouns project most onto
       E_he - E_she (`sense_separation`), unless `sense` is given;
    2. factor: the scale of that sense's contextualization weight on the career token(s) that
       minimises the bias ratio over the training prompts (grid `factors`);
    3. report the bias ratio on held-out prompts before and after, and for the baseline that
       projects the he-she direction out of the career tokens' input embedding (in this model,
       and in `twin`, a Transformer trained the same way, if given);
    4. `gap`: how much of the mean held-out gap logit_he - logit_she the career token's senses
       contribute (exact attribution), per sense: what any edit of the career's senses can
       reach at most; the rest comes from the other words of the prompt.

    A career the vocabulary splits into pieces is edited on every piece (each at its position);
    `single_token_only` drops such careers instead."""
    if not careers or not train_templates or not heldout_templates:
        raise ValueError("need careers, training templates and held-out templates")
    direction, he_id, she_id = gender_direction(model, tokenizer, *pronouns)
    kept, skipped = [], []
    for career in dict.fromkeys(c.strip() for c in careers):
        resolved = resolve_word(tokenizer, " " + career, model.config.vocab_size)
        if single_token_only and not resolved.is_single:
            skipped.append({"career": career, "tokens": resolved.tokens})
        else:
            kept.append(career)
    if not kept:
        raise WordError("no career noun is left: every one is several tokens in this vocabulary")
    career_ids = [tokenizer.encode(" " + c) for c in kept]
    scores = sense_separation(model, career_ids, direction)
    k = model.config.num_senses
    if sense is None:
        sense, chosen_by = int(scores.argmax()), "largest mean |(E_he - E_she) . C(career)_l|"
    else:
        if not 0 <= sense < k:
            raise ValueError(f"sense {sense} is out of range: the model has {k} senses, 0..{k - 1}")
        chosen_by = "given"
    factors = sorted({float(f) for f in factors})
    if not factors or min(factors) < 0:
        raise ValueError("factors must be numbers >= 0")

    train = _PromptSessions(model, tokenizer, career_prompts(tokenizer, train_templates, kept),
                            he_id, she_id, progress)
    fit = [{"factor": f, "bias_ratio": bias_ratio(train.gaps(sense, f))}
           for f in progress_bar(factors, "fitting the factor", enabled=progress)]
    best = min(fit, key=lambda r: (r["bias_ratio"], abs(r["factor"] - 1.0)))
    factor = best["factor"]
    train_before = bias_ratio(train.gaps())

    heldout_prompts = career_prompts(tokenizer, heldout_templates, kept)
    heldout = _PromptSessions(model, tokenizer, heldout_prompts, he_id, she_id, progress)
    gaps_before, gaps_after = heldout.gaps(), heldout.gaps(sense, factor)
    all_career_ids = {i for ids in career_ids for i in ids}
    projected = project_out_embedding(model, all_career_ids, direction)
    report = {"before": bias_ratio(gaps_before), "after": bias_ratio(gaps_after),
              "projection_baseline": bias_ratio(
                  last_position_gaps(projected, heldout_prompts, he_id, she_id))}
    del projected
    if twin is not None:
        twin_dir = gender_direction(twin, tokenizer, *pronouns)[0]
        report["twin_before"] = bias_ratio(last_position_gaps(twin, heldout_prompts, he_id, she_id))
        twin_projected = project_out_embedding(twin, all_career_ids, twin_dir)
        report["twin_projection_baseline"] = bias_ratio(
            last_position_gaps(twin_projected, heldout_prompts, he_id, she_id))

    career_part = heldout.career_contributions()  # (prompts, k)
    gap = {"mean": float(gaps_before.mean()), "career": float(career_part.sum(1).mean()),
           "career_by_sense": career_part.mean(0).tolist()}
    per_career = []
    for career in kept:
        rows = [i for i, p in enumerate(heldout_prompts) if p.career == career]
        per_career.append({"career": career,
                           "tokens": [token_text(tokenizer, i) for i in heldout_prompts[rows[0]].career_ids],
                           "gap_before": float(gaps_before[rows].mean()),
                           "gap_after": float(gaps_after[rows].mean()),
                           "bias_ratio_before": bias_ratio(gaps_before[rows]),
                           "bias_ratio_after": bias_ratio(gaps_after[rows])})
    return GenderBiasResult(
        sense=sense, sense_scores=scores.tolist(), sense_chosen_by=chosen_by, factor=factor,
        fit=fit, train={"before": train_before, "after": best["bias_ratio"]}, heldout=report, gap=gap,
        careers=kept, skipped_careers=skipped,
        prompts={"train": len(train.prompts), "heldout": len(heldout_prompts)},
        per_career=per_career)


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
    from .session import ContextSession

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
        from .generation import generate

        for prompt in progress_bar(prompts, "generating", enabled=progress):
            kwargs = dict(max_new_tokens=generate_tokens, do_sample=sample, seed=seed)
            generations.append({"prompt": prompt,
                                "before": generate(model, tokenizer, prompt, None, **kwargs),
                                "after": generate(model, tokenizer, prompt, intervention, **kwargs)})
    return KnowledgeEditResult(edits, shifts, generations)


def single_token_candidates(tokenizer: Tokenizer, candidates: Iterable[dict[str, Any]],
                            vocab_size: int | None = None,
                            keys: tuple[str, ...] = ("word", "remove", "add")
                            ) -> list[dict[str, Any]]:
    """The candidate edits ({"word", "remove", "add", ...}) whose words are all one token."""
    def single(word: Any) -> bool:
        return word is None or resolve_word(tokenizer, word, vocab_size).is_single

    return [c for c in candidates if all(single(c.get(key)) for key in keys)]


__all__ = ["CareerPrompt", "DEFAULT_FACTORS", "GenderBiasResult", "KnowledgeEditResult",
           "TopicControlResult", "TopicSample", "TopicSense", "TopicSenses", "WordList", "bias_ratio",
           "career_prompts", "continuation_nll", "downweight_edits", "gender_bias", "held_out_sense",
           "gender_direction", "knowledge_edit", "last_position_gaps", "mentions",
           "project_out_embedding", "sense_separation", "set_threads", "single_token_candidates",
           "single_token_words", "topic_control", "topic_direction", "topic_senses"]



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
