"""Evaluations of the paper, at our scale: perplexity and lexical similarity.

- `perplexity`: token-level and word-level perplexity of a text (non-overlapping windows of the
  model's context; word-level divides the total NLL by whitespace words, so models with different
  tokenizers compare).
- `word_similarity`: Spearman correlation with human judgments (SimLex-999, WordSim-353 from
  gensim's bundled test data) for each single sense, sense-pair aggregates (min / max / mean
  cosine over all k x k sense pairs), the mean of the senses, and the model's embeddings.
  Pairs whose words are not single tokens (in their in-text form with a leading space) are
  skipped and counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backpack_core.common.datasets import load_benchmark
from backpack_core.model.backpack import Backpack

BENCHMARK_FILES = {"simlex999": "simlex999.txt", "wordsim353": "wordsim353.tsv"}


# ----------------------------------------------------------------------------------------------
# Perplexity
# ----------------------------------------------------------------------------------------------

@dataclass
class PerplexityResult:
    loss: float  # mean NLL per predicted token (nats)
    perplexity: float  # exp(loss)
    tokens: int  # predicted tokens
    words: int  # whitespace words in the text
    word_perplexity: float  # exp(total NLL / words)
    tokens_per_s: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def perplexity(model: Backpack, token_ids: Iterable[int] | torch.Tensor, words: int | None = None,
               seq_len: int | None = None, batch_size: int = 8,
               progress: Callable[[Iterable], Iterable] | None = None) -> PerplexityResult:
    """Perplexity of one long token stream, in independent non-overlapping windows of `seq_len`
    tokens (default: the model's context). Each window scores its tokens after the first.
    `words` (whitespace words of the text) enables the word-level figure."""
    ids = torch.as_tensor(list(token_ids) if not torch.is_tensor(token_ids) else token_ids,
                          dtype=torch.long).flatten()
    seq_len = min(seq_len or model.config.n_positions, model.config.n_positions)
    if ids.numel() < 2:
        raise ValueError("need at least 2 tokens to measure perplexity")
    device = next(model.parameters()).device
    windows = [ids[i:i + seq_len] for i in range(0, ids.numel() - 1, seq_len)]
    windows = [w for w in windows if w.numel() >= 2]
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    total_nll, total_tokens = 0.0, 0
    start = time.perf_counter()
    for batch in (progress(batches) if progress else batches):
        width = max(w.numel() for w in batch)
        x = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, w in enumerate(batch):
            x[row, :w.numel()], mask[row, :w.numel()] = w, 1
        x, mask = x.to(device), mask.to(device)
        logits = model(x, attention_mask=mask if not bool(mask.all()) else None).logits.float()
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        keep = mask[:, 1:].flatten().bool()
        total_nll += float(nll[keep].sum())
        total_tokens += int(keep.sum())
    elapsed = time.perf_counter() - start
    loss = total_nll / total_tokens
    n_words = words or 0
    return PerplexityResult(
        loss=loss, perplexity=math.exp(loss), tokens=total_tokens, words=n_words,
        word_perplexity=math.exp(total_nll / n_words) if n_words else float("nan"),
        tokens_per_s=total_tokens / elapsed if elapsed > 0 else float("inf"))


def text_perplexity(model: Backpack, tokenizer, text: str, **kwargs) -> PerplexityResult:
    """Perplexity of a text (documents separated by EOS are the caller's business)."""
    return perplexity(model, tokenizer.encode(text), words=len(text.split()), **kwargs)


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rho with average ranks for ties (no scipy needed)."""
    def ranks(values):
        values = np.asarray(list(values), dtype=np.float64)
        order = values.argsort(kind="mergesort")
        r = np.empty(len(values))
        r[order] = np.arange(len(values))
        for v in np.unique(values):  # average the ranks of ties
            tie = values == v
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def single_token(tokenizer, word: str) -> int | None:
    """Id of the word in its in-text form (" word"), or None if that is several tokens."""
    ids = tokenizer.encode(" " + word)
    return ids[0] if len(ids) == 1 else None


@dataclass
class SimilarityResult:
    benchmark: str
    pairs_total: int
    pairs_used: int
    spearman: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "pairs_total": self.pairs_total,
                "pairs_used": self.pairs_used, "pairs_skipped": self.pairs_total - self.pairs_used,
                "spearman": self.spearman}


@torch.no_grad()
def word_similarity(model: Backpack, tokenizer, benchmark: str,
                    extra: dict[str, Callable[[str, str], float | None]] | None = None
                    ) -> SimilarityResult:
    """Spearman per method. `extra` adds methods scored on the same pairs (e.g. word2vec):
    a function (w1, w2) -> similarity, or None when it cannot score the pair (then the pair is
    dropped for every method, so all methods are compared on the same pairs)."""
    pairs = load_benchmark(benchmark)
    used = []
    for w1, w2, human in pairs:
        a, b = single_token(tokenizer, w1), single_token(tokenizer, w2)
        if a is None or b is None:
            continue
        if extra and any(fn(w1, w2) is None for fn in extra.values()):
            continue
        used.append((w1, w2, a, b, human))
    if not used:
        raise ValueError(f"no pair of {benchmark} has both words as single tokens")
    ids_a = torch.tensor([u[2] for u in used], device=model.wte.weight.device)
    ids_b = torch.tensor([u[3] for u in used], device=model.wte.weight.device)
    human = [u[4] for u in used]
    scores: dict[str, list[float]] = {}
    emb = model.wte.weight.float()
    scores["embedding"] = F.cosine_similarity(emb[ids_a], emb[ids_b], dim=-1).tolist()
    if model.config.is_backpack:
        sa = model.sense_vectors(ids_a).float()  # (n, k, d)
        sb = model.sense_vectors(ids_b).float()
        per_sense = F.cosine_similarity(sa, sb, dim=-1)  # (n, k)
        for sense in range(model.config.num_senses):
            scores[f"sense_{sense}"] = per_sense[:, sense].tolist()
        pair_cos = F.cosine_similarity(sa[:, :, None], sb[:, None, :], dim=-1)  # (n, k, k)
        scores["sense_pairs_min"] = pair_cos.flatten(1).min(-1).values.tolist()
        scores["sense_pairs_max"] = pair_cos.flatten(1).max(-1).values.tolist()
        scores["sense_pairs_mean"] = pair_cos.flatten(1).mean(-1).tolist()
        scores["senses_mean"] = F.cosine_similarity(sa.mean(1), sb.mean(1), dim=-1).tolist()
    for name, fn in (extra or {}).items():
        scores[name] = [fn(u[0], u[1]) for u in used]
    return SimilarityResult(benchmark=benchmark, pairs_total=len(pairs), pairs_used=len(used),
                            spearman={m: spearman(s, human) for m, s in scores.items()})


# ----------------------------------------------------------------------------------------------
# Readable senses: does some sense of a noun point at words related to it?
# ----------------------------------------------------------------------------------------------

# Common nouns of the model card's readable-senses table (issue 22), fixed before the final run.
READABLE_NOUNS = (
    "science", "bank", "river", "play", "music", "war", "money", "water", "king", "church",
    "army", "city", "school", "law", "book", "family", "house", "government", "ship", "sea",
    "food", "court", "land", "fire", "tree", "trade", "company", "history", "horse", "market",
)
RELATED_TOPN = 50  # a noun's related words: its RELATED_TOPN nearest words in the word2vec
SENSE_TOP = 10  # top words of a sense that are looked at
MIN_RELATED = 3  # a sense reads as the noun's when this many of its top words are related


@dataclass
class ReadableSense:
    word: str
    sense: int | None  # the sense with the most related words in its top SENSE_TOP; None: no single token
    related_hits: list[str]  # those related words
    top: list[str]  # that sense's top words (stripped)

    @property
    def readable(self) -> bool:
        return len(self.related_hits) >= MIN_RELATED


def nameable_words(tokenizer) -> set[str]:
    """The words a sense's top list can show: every word-initial token (" word", " Word") that
    is letters only, lower-cased. Longer words are several tokens and never one top entry."""
    words = set()
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if text.startswith(" ") and text[1:].isalpha() and text[1:].isascii():
            words.add(text[1:].lower())
    return words


def related_words(wv, word: str, topn: int = RELATED_TOPN, among: set[str] | None = None) -> set[str]:
    """The rule of the readable-senses table: `word`'s `topn` nearest words (cosine) in gensim
    KeyedVectors trained on the same training split (the card's word2vec baseline); with `among`,
    the `topn` nearest of those words only (the card: `nameable_words` of the model)."""
    if word not in wv.key_to_index:
        return set()
    if among is None:
        return {w for w, _ in wv.most_similar(word, topn=topn)}
    cosines = wv.most_similar(word, topn=None)  # (n_words,), the word itself included
    out: set[str] = set()
    for i in np.argsort(-cosines, kind="stable"):
        candidate = wv.index_to_key[int(i)]
        if candidate != word and candidate in among:
            out.add(candidate)
            if len(out) == topn:
                break
    return out


def readable_report(model: Backpack, tokenizer, wv) -> dict:
    """The card's readable-senses figures (JSON-ready): READABLE_NOUNS, related words = the
    RELATED_TOPN nearest nameable words in the word2vec (the rule since 2026-12-02), and the
    share under the first rule (the RELATED_TOPN nearest of all words) beside it."""
    among = nameable_words(tokenizer)
    rows = readable_senses(model, tokenizer,
                           {w: related_words(wv, w, among=among) for w in READABLE_NOUNS})
    first = readable_senses(model, tokenizer, {w: related_words(wv, w) for w in READABLE_NOUNS})
    return {
        "rule": {"nouns": list(READABLE_NOUNS), "related_topn": RELATED_TOPN, "related_among":
                 "nameable", "nameable_words": len(among), "sense_top": SENSE_TOP,
                 "min_related": MIN_RELATED},
        "share": sum(r.readable for r in rows) / len(rows),
        "share_first_rule": sum(r.readable for r in first) / len(first),
        "words": [{"word": r.word, "sense": r.sense, "related_hits": r.related_hits,
                   "top": r.top, "readable": r.readable} for r in rows]}


@torch.no_grad()
def readable_senses(model: Backpack, tokenizer, related: dict[str, set[str]], top: int = SENSE_TOP
                    ) -> list[ReadableSense]:
    """Per noun: over its k senses, the one whose `top` words of E . C(word)_l hold the most of
    the noun's related words (tokens compared stripped and lower-cased; each counted once).
    A noun that is not a single token (" word") has no senses of its own: sense None, no hits."""
    n_real = min(len(tokenizer), model.config.vocab_size)
    out = []
    for word, rel in related.items():
        token = single_token(tokenizer, word)
        if token is None:
            out.append(ReadableSense(word, None, [], []))
            continue
        senses = model.sense_vectors(torch.tensor([token], device=model.wte.weight.device))[0]  # (k, d)
        logits = model.output_logits(senses)[:, :n_real]  # (k, vocab)
        best = None
        for sense, ids in enumerate(logits.topk(top, dim=-1).indices.tolist()):
            words = [tokenizer.decode([i]).strip() for i in ids]
            hits = list(dict.fromkeys(w for w in (x.lower() for x in words) if w in rel))
            if best is None or len(hits) > len(best.related_hits):
                best = ReadableSense(word, sense, hits, words)
        out.append(best)
    return out


# ----------------------------------------------------------------------------------------------
# word2vec baseline (gensim), trained on the same corpus
# ----------------------------------------------------------------------------------------------

def corpus_sentences(paths: Iterable[str | Path]) -> Iterable[list[str]]:
    """Lower-cased word lists, one per line of text, from .jsonl ({"text": ...}) or .txt files."""
    import json
    import re

    word = re.compile(r"[a-z]+(?:'[a-z]+)?")
    for path in paths:
        path = Path(path)
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"] if path.suffix == ".jsonl" else line
                for sentence in text.lower().splitlines():
                    words = word.findall(sentence)
                    if len(words) > 1:
                        yield words


def train_word2vec(paths: Iterable[str | Path], dim: int = 256, window: int = 5, epochs: int = 5,
                   min_count: int = 5, workers: int = 2, seed: int = 0):
    """Skip-gram word2vec on the corpus (the reference baseline). Returns gensim KeyedVectors."""
    try:
        from gensim.models import Word2Vec
    except ImportError as err:
        raise ImportError("the word2vec baseline needs gensim: pip install gensim") from err
    sentences = list(corpus_sentences(paths))
    model = Word2Vec(sentences=sentences, vector_size=dim, window=window, min_count=min_count,
                     sg=1, workers=workers, epochs=epochs, seed=seed)
    return model.wv


def keyed_vectors_similarity(wv) -> Callable[[str, str], float | None]:
    """(w1, w2) -> cosine, or None when either word is out of the vocabulary."""
    def similarity(w1: str, w2: str) -> float | None:
        if w1 not in wv.key_to_index or w2 not in wv.key_to_index:
            return None
        return float(wv.similarity(w1, w2))
    return similarity
