"""The sense atlas: how every (word, sense) is used over a corpus, from one streaming pass.

A Backpack's output at position i is o_i = sum_j sum_l alpha[l, i, j] C(x_j)_l, so how much
sense l of the word at position j is used is exactly the contextualization weight alpha[l, i, j]
it receives from later positions i >= j. The atlas reads a corpus once, in non-overlapping
windows of `seq_len` tokens (`Corpus.windows`; each window is an independent context, as in
`model.evaluation.perplexity`, so the atlas is a function of the corpus AND seq_len), and keeps, per
(token id x, sense l):

- `counts[x]`: occurrences of x;
- `total[x, l]`: the weight the sense receives, summed over the occurrences j of x:
      weight(j, l) = sum over queries i >= j in j's window, at window position >= 1, of alpha[l, i, j]
  i.e. from every later prediction in the window, the one at j itself included. The first
  position of a window is left out as a query: its only source is itself, so alpha = 1 for
  every sense whatever the model does. `total / counts` is the mean weight per occurrence.
  For each sense index l and each query the weights over sources sum to 1, so
  sum_x total[x, l] = the number of queries (positions read less one per window) for every l,
  and the mean weight of sense l over all positions is about 1: a word's mean weight above 1
  means that sense of it is used more than the average token's;
- `peak[x, l]`: the largest single weight alpha[l, i, j] over x's occurrences and queries;
- the top-N contexts: the N occurrences with the largest weight(j, l), each with its corpus
  offset, weight(j, l), and the query position it supported most (argmax_i alpha[l, i, j])
  with that single weight. Ties go to the earlier offset.
- dead senses: a (word, sense) whose weight(j, l) stayed below `DEAD_THRESHOLD` at every
  occurrence (its largest weight, the first top context, is below it): that sense of the word
  never carried, summed over all later predictions, more than 5% of one prediction's sense-l
  mixture. Diffuse senses (that spread their weight thinly over many sources) are not dead
  by this measure even though no single alpha is large, which is why it sums over queries.

Per sense index l (the model's table, `sense_usage_table`): total weight (the number of
queries, by the identity above: a check, not information), the share of the output's
magnitude, sum alpha[l, i, j] ||C(x_j)_l|| over all i, j, the share of weight a position puts on
itself (alpha[l, i, i]), the mean distance i - j the weight travels, and how many (word, l)
pairs are dead.

Memory is bounded: dense (vocab, k) accumulators and (vocab, k, N) top-N tables, merged per
batch by a vectorised sort (no per-position tensors kept), plus one batch's (b, k, s, s) weights.
Time is linear in the corpus length. Which predictions a context supported (the model's top
predictions at the supported position, ranked by this sense's logit contribution
alpha[l, i, j] E_w . C(x_j)_l) is computed on query, by re-running only the windows shown.

    atlas = SenseAtlas.for_corpus(model, tokenizer, read_corpus("ptb", tokenizer))  # cached
    atlas.word_report(" science", sense=3).to_dict()
    atlas.sense_usage_table(); atlas.dead_senses()

Cached on disk (safetensors, the metadata as JSON inside it) under `sense_bank.cache_dir()`,
keyed by the full model fingerprint (config and every weight), the corpus sha256, seq_len and N.
A cache file is checked on load (`check_tables`: the sha256 of its tables and metadata written
beside them, dtypes, finite numbers, counts summing to the corpus's tokens, every top context's
offset and query inside the corpus and its window) and rebuilt, with one line on stderr, when
anything is off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from backpack_core.common.limits import check_atlas_top_n, check_batch_windows
from backpack_core.model.backpack import causal_allowed
from backpack_core.model.fingerprint import weights_fingerprint
from backpack_core.model.vocab import WordError, single_token_id, token_text

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.common.corpus import Corpus
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

ATLAS_FORMAT = 1
DEFAULT_TOP = 10
DEFAULT_BATCH = 8
DEAD_THRESHOLD = 0.05  # never more than 0.05 weight at any occurrence, summed over queries: dead
TENSORS = ("token_ids", "counts", "total", "peak", "top_weight", "top_offset", "top_query",
           "top_query_weight", "sense_weight", "sense_norm_weight", "sense_self_weight",
           "sense_distance")


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------

def model_key(model: Backpack) -> str:
    """sha256 over the config and every parameter's bytes (contextualization depends on all
    weights, unlike the sense bank's key); memoised as the sense bank's key is, on a crc32 of
    the bytes, so edits through `.data` are seen (`model.fingerprint.weights_fingerprint`)."""
    return weights_fingerprint(model, list(model.state_dict().items()),
                               f"atlas-model-{ATLAS_FORMAT}")


def _unwrap(model):
    """The plain `Backpack` of a transformers `BackpackLM` (or the model itself)."""
    return getattr(model, "backpack", model)


# ----------------------------------------------------------------------------------------------
# Building: one streaming pass
# ----------------------------------------------------------------------------------------------

def contextualization_and_senses(model: Backpack, input_ids: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 2 of `Backpack.forward` on unpadded windows, without step 3's output
    projection: input_ids (b, s) -> contextualization (b, k, s, s), senses (b, k, s, d). The
    atlas never needs the (b, s, vocab) logits, the largest tensor of a forward pass."""
    b, s = input_ids.shape
    device = input_ids.device
    token_embeddings = model.wte(input_ids)  # (b, s, d)
    positions = torch.arange(s, device=device).expand(b, s)
    hidden_states = model.contextualizer(token_embeddings, positions, None)
    queries, keys = model.sense_weight_network.project(hidden_states)
    allowed = causal_allowed(0, s, None, device)
    contextualization = model.sense_weight_network(queries, keys, allowed)
    senses = rearrange(model.sense_network(token_embeddings), "b s k d -> b k s d")
    if model.edit_overrides is not None:  # an exported edited model: the edits it carries
        senses = model.edit_overrides.on_senses(senses, input_ids, positions)
        contextualization = model.edit_overrides.on_contextualization(
            contextualization, input_ids, positions, positions)
    return contextualization, senses


def _merge_top(tables: list[torch.Tensor], token_ids: torch.Tensor, candidates: list[torch.Tensor],
               top_n: int) -> None:
    """Merge one batch into the top-N tables, in place.

    tables: [weight (V, k, N), *payload (V, k, N)] sorted by weight, descending (-inf: empty).
    token_ids (M,), candidates: [weight (M, k), *payload (M, k)] in corpus order. For each
    (token, sense) the N largest weights among old and new entries survive; ties keep the older
    entry (stable sorts), so the result does not depend on how the corpus was batched."""
    uniq, inverse = torch.unique(token_ids, return_inverse=True)  # (U,), (M,)
    u = len(uniq)
    device = token_ids.device
    group = torch.cat([torch.arange(u, device=device).repeat_interleave(top_n), inverse])  # (R,)
    rows = [torch.cat([rearrange(t[uniq], "u k n -> (u n) k"), c]) for t, c in zip(tables, candidates)]
    order = rows[0].argsort(dim=0, descending=True, stable=True)  # (R, k) by weight
    order = order.gather(0, group[order].argsort(dim=0, stable=True))  # then grouped by token
    sizes = torch.bincount(group, minlength=u)
    starts = sizes.cumsum(0) - sizes
    take = order[(starts[:, None] + torch.arange(top_n, device=device)).flatten()]  # (U*N, k)
    for t, r in zip(tables, rows):
        t[uniq] = rearrange(r.gather(0, take), "(u n) k -> u k n", n=top_n)


@torch.inference_mode()
def build_atlas(model: Backpack, tokenizer: Tokenizer, corpus: Corpus, top_n: int = DEFAULT_TOP,
                seq_len: int | None = None, batch_size: int = DEFAULT_BATCH,
                progress: bool | Callable | None = True) -> SenseAtlas:
    """One pass over `corpus` in windows of `seq_len` (default: the model's context).

    progress: True/None (a tqdm bar on stderr, also when it is not a terminal), False, or a callable
    `progress(done_batches, total_batches)` (the app's progress bar)."""
    model = _unwrap(model)
    cfg = model.config
    if not cfg.is_backpack:
        raise ValueError("a Transformer twin has no senses: the atlas needs a Backpack")
    if model.training and max(cfg.embd_pdrop, cfg.resid_pdrop, cfg.attn_pdrop) > 0:
        raise ValueError("the model is in training mode (dropout on): call model.eval() first")
    seq_len = cfg.n_positions if seq_len is None else seq_len
    if not 1 <= seq_len <= cfg.n_positions:
        raise ValueError(f"seq_len must be in 1..{cfg.n_positions} (the model's context), got {seq_len}")
    if top_n < 1 or batch_size < 1:
        raise ValueError(f"top_n and batch_size must be >= 1, got {top_n} and {batch_size}")
    check_atlas_top_n(top_n)  # the tables take 24 bytes x vocab x k x top_n
    check_batch_windows(batch_size)
    device = model.wte.weight.device
    vocab, k = cfg.vocab_size, cfg.num_senses
    counts = torch.zeros(vocab, dtype=torch.long, device=device)
    total = torch.zeros(vocab, k, dtype=torch.float64, device=device)
    peak = torch.zeros(vocab, k, dtype=torch.float32, device=device)
    tops = [torch.full((vocab, k, top_n), float("-inf"), device=device),  # weight
            torch.full((vocab, k, top_n), -1, dtype=torch.long, device=device),  # offset
            torch.full((vocab, k, top_n), -1, dtype=torch.long, device=device),  # query offset
            torch.zeros(vocab, k, top_n, device=device)]  # weight at the query
    sense_stats = torch.zeros(4, k, dtype=torch.float64, device=device)

    from backpack_core.common.progress import track

    batches = track(corpus.windows(seq_len, batch_size), "sense atlas",
                    corpus.n_batches(seq_len, batch_size), progress)
    for batch, starts in batches:
        batch, starts = batch.to(device), starts.to(device)
        b, s = batch.shape
        contextualization, senses = contextualization_and_senses(model, batch)
        # queries with a choice: window position i >= 1 (at i = 0 alpha is 1 for every sense)
        alpha = contextualization.float()[:, :, 1:, :]  # (b, k, i - 1, j), zero for i < j
        weight = alpha.sum(2)  # (b, k, j): weight each source sense receives
        if s > 1:
            peak_w, peak_i = alpha.max(2)  # (b, k, j)
            peak_i = torch.maximum(peak_i + 1, torch.arange(s, device=device))
        else:
            peak_w = torch.zeros_like(weight)
            peak_i = torch.zeros(b, k, s, dtype=torch.long, device=device)
        ids = batch.flatten()  # (M,) with M = b * s, row r * s + j
        offsets = (starts[:, None] + torch.arange(s, device=device)).flatten()
        weight_m = rearrange(weight, "b k s -> (b s) k")
        peak_m = rearrange(peak_w, "b k s -> (b s) k")
        query_m = rearrange(peak_i + starts[:, None, None], "b k s -> (b s) k")
        counts.index_add_(0, ids, torch.ones_like(ids))
        total.index_add_(0, ids, weight_m.double())
        peak.scatter_reduce_(0, ids[:, None].expand(-1, k), peak_m, "amax")
        _merge_top(tops, ids, [weight_m, offsets[:, None].expand(-1, k), query_m, peak_m], top_n)
        # per sense index: weight, norm-weighted weight, weight on itself, weight * distance
        # per sense index: weight, norm-weighted weight, weight on itself, and weight times the
        # distance i - j, summed: sum_ij alpha (i - j) = sum_i i - sum_j j weight_j, as every query
        # row of alpha sums to 1 (no extra pass over the (b, k, s, s) weights)
        norms = senses.float().norm(dim=-1)  # (b, k, s)
        position = torch.arange(s, device=device, dtype=torch.float64)
        sense_stats[0] += weight.sum((0, 2)).double()
        sense_stats[1] += (weight * norms).sum((0, 2)).double()
        sense_stats[2] += alpha.diagonal(offset=1, dim1=2, dim2=3).sum((0, 2)).double()
        sense_stats[3] += b * position.sum() - (weight.double() * position).sum((0, 2))

    seen = counts.nonzero().flatten()
    cpu = {
        "token_ids": seen, "counts": counts[seen], "total": total[seen], "peak": peak[seen],
        "top_weight": tops[0][seen], "top_offset": tops[1][seen], "top_query": tops[2][seen],
        "top_query_weight": tops[3][seen], "sense_weight": sense_stats[0],
        "sense_norm_weight": sense_stats[1], "sense_self_weight": sense_stats[2],
        "sense_distance": sense_stats[3]}
    meta = {"format": ATLAS_FORMAT, "model_key": model_key(model), "corpus_sha256": corpus.sha256,
            "corpus": corpus.name, "tokens": len(corpus), "seq_len": seq_len, "top_n": top_n,
            "vocab_size": vocab, "num_senses": k}
    return SenseAtlas({n: t.to("cpu") for n, t in cpu.items()}, meta, model, tokenizer, corpus)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------

@dataclass
class Context:
    """One top context of a (word, sense): the occurrence at corpus `offset` received `weight`
    in all; its strongest single weight went to the prediction at `query` (predicting the token
    after it). `snippet` is [(text, role)] with role "text", "word", "query" or "gap"."""

    offset: int
    weight: float
    query: int
    query_weight: float
    snippet: list[tuple[str, str]] = field(default_factory=list)
    next_token: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "weight": self.weight, "query": self.query,
                "query_weight": self.query_weight,
                "snippet": [{"text": t, "role": r} for t, r in self.snippet],
                "next_token": self.next_token, "predictions": self.predictions}


@dataclass
class SenseUse:
    sense: int
    total_weight: float
    mean_weight: float
    share: float  # of the word's total weight over its senses
    max_weight: float  # the largest weight(j, l) over occurrences
    peak_weight: float  # the largest single alpha[l, i, j]
    dead: bool
    contexts: list[Context]

    def to_dict(self) -> dict[str, Any]:
        return {"sense": self.sense, "total_weight": self.total_weight,
                "mean_weight": self.mean_weight, "share": self.share,
                "max_weight": self.max_weight, "peak_weight": self.peak_weight,
                "dead": self.dead,
                "contexts": [c.to_dict() for c in self.contexts]}


@dataclass
class WordReport:
    word: str
    token: str
    token_id: int
    occurrences: int
    corpus: str
    tokens: int
    seq_len: int
    senses: list[SenseUse]

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "token": self.token, "token_id": self.token_id,
                "occurrences": self.occurrences, "corpus": self.corpus, "tokens": self.tokens,
                "seq_len": self.seq_len, "dead_threshold": DEAD_THRESHOLD,
                "senses": [s.to_dict() for s in self.senses]}


def tables_sha256(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over the metadata (as stored) and every table's name, dtype, shape and bytes."""
    digest = hashlib.sha256(meta_json.encode())
    for name in TENSORS:
        t = tensors[name].contiguous()
        digest.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def check_tables(tensors: dict[str, torch.Tensor], meta: dict[str, Any], corpus: Corpus | None = None
                 ) -> None:
    """ValueError unless the tables (with shapes already checked) are what `build_atlas` makes:
    integer ids and positions, finite weights (a top weight may be -inf: an empty slot), each
    word's counts summing to the corpus's tokens, every top context at an offset of its word
    (with `corpus`) inside the corpus and its query in the same window, at or after it."""
    ints = ("token_ids", "counts", "top_offset", "top_query")
    for name in TENSORS:
        if (tensors[name].dtype == torch.long) != (name in ints):
            raise ValueError(f"table {name} holds {tensors[name].dtype} numbers")
    for name in ("total", "peak", "top_query_weight", "sense_weight", "sense_norm_weight",
                 "sense_self_weight", "sense_distance"):
        if not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(f"table {name} holds NaN or infinite numbers")
    weight, offset, query = tensors["top_weight"], tensors["top_offset"], tensors["top_query"]
    empty = weight == float("-inf")
    if weight.isnan().any() or (weight == float("inf")).any():
        raise ValueError("table top_weight holds NaN or +inf")
    ids, counts, n = tensors["token_ids"], tensors["counts"], int(meta["tokens"])
    vocab, seq_len = int(meta["vocab_size"]), int(meta["seq_len"])
    if len(ids) and not (0 <= int(ids[0]) and int(ids[-1]) < vocab and bool((ids[1:] > ids[:-1]).all())):
        raise ValueError(f"token_ids are not increasing ids below {vocab}")
    if bool((counts < 1).any()) or int(counts.sum()) != n:
        raise ValueError(f"counts sum to {int(counts.sum()):,}, not the corpus's {n:,} tokens")
    window_end = torch.clamp(offset - offset % seq_len + seq_len, max=n)
    placed = (offset >= 0) & (offset < n) & (query >= offset) & (query < window_end)
    if not bool(torch.where(empty, (offset == -1) & (query == -1), placed).all()):
        raise ValueError("a top context lies outside the corpus or its window")
    if corpus is not None:
        if len(corpus) != n:
            raise ValueError(f"it read {n:,} tokens, the corpus has {len(corpus):,}")
        at = corpus.token_ids[offset.clamp(min=0)]
        if not bool(torch.where(empty, True, at == ids[:, None, None]).all()):
            raise ValueError("a top context is not at an occurrence of its word")


class SenseAtlas:
    """The atlas's tables (CPU tensors, rows = the token ids that occurred, `token_ids`) and
    `meta`; `model`, `tokenizer` and `corpus` are attached for snippets and predictions."""

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], model=None,
                 tokenizer=None, corpus: Corpus | None = None):
        missing = [n for n in TENSORS if n not in tensors]
        if missing:
            raise ValueError(f"atlas is missing tensors {missing}")
        w, k, n = len(tensors["token_ids"]), meta["num_senses"], meta["top_n"]
        shapes = {"counts": (w,), "total": (w, k), "peak": (w, k), "top_weight": (w, k, n),
                  "top_offset": (w, k, n), "top_query": (w, k, n), "top_query_weight": (w, k, n),
                  "sense_weight": (k,), "sense_norm_weight": (k,), "sense_self_weight": (k,),
                  "sense_distance": (k,)}
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"atlas tensor {name} has shape {tuple(tensors[name].shape)}, "
                                 f"expected {shape}")
        self.tensors, self.meta = tensors, meta
        self.model, self.tokenizer, self.corpus = (_unwrap(model) if model is not None else None,
                                                   tokenizer, corpus)
        self._row = {int(t): r for r, t in enumerate(tensors["token_ids"].tolist())}

    def __getattr__(self, name: str) -> torch.Tensor:
        tensors = self.__dict__.get("tensors")
        if tensors is not None and name in tensors:
            return tensors[name]
        raise AttributeError(name)

    @property
    def max_weight(self) -> torch.Tensor:
        """(W, k): the largest weight(j, l) over each word's occurrences (its first top context)."""
        return self.top_weight[:, :, 0].clamp(min=0)

    @property
    def num_senses(self) -> int:
        return self.meta["num_senses"]

    # -- caching --

    @staticmethod
    def path_for(model_key_: str, corpus_sha: str, seq_len: int, top_n: int,
                 directory: str | os.PathLike | None = None) -> Path:
        from backpack_core.interpret.sense_bank import cache_dir

        base = Path(directory).expanduser() if directory is not None else cache_dir()
        return base / "atlas" / f"atlas-{model_key_[:16]}-{corpus_sha[:16]}-s{seq_len}-n{top_n}.safetensors"

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors, written atomically; the metadata as JSON under the key "atlas", the
        sha256 of both (`tables_sha256`) under "sha256"."""
        from safetensors.torch import save_file

        from backpack_core.common.files import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {n: self.tensors[n].contiguous() for n in TENSORS}
        meta_json = json.dumps(self.meta, sort_keys=True)
        metadata = {"atlas": meta_json, "sha256": tables_sha256(tensors, meta_json)}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected: dict[str, Any] | None = None, model=None,
             tokenizer=None, corpus: Corpus | None = None) -> SenseAtlas:
        """Read an atlas; ValueError if its metadata differs from `expected` (model key, corpus
        hash, seq_len, ...), it does not match its sha256, or its tables are not an atlas's
        (`check_tables`)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            meta = json.loads(metadata.get("atlas", "null"))
            if not isinstance(meta, dict):
                raise ValueError(f"{path} is not a sense atlas")
            for key, value in (expected or {}).items():
                if meta.get(key) != value:
                    raise ValueError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}")
            if set(f.keys()) != set(TENSORS):
                raise ValueError(f"{path}: tensors {sorted(f.keys())}, expected {sorted(TENSORS)}")
            tensors = {n: f.get_tensor(n) for n in TENSORS}
        if "sha256" not in metadata:
            raise ValueError(f"{path} has no checksum (written by an older version)")
        if metadata["sha256"] != tables_sha256(tensors, metadata["atlas"]):
            raise ValueError(f"{path} does not match its checksum (altered or corrupt)")
        atlas = cls(tensors, meta, model, tokenizer, corpus)  # checks the shapes
        try:
            check_tables(tensors, meta, corpus)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return atlas

    @classmethod
    def for_corpus(cls, model: Backpack, tokenizer: Tokenizer, corpus: Corpus,
                   top_n: int = DEFAULT_TOP, seq_len: int | None = None,
                   batch_size: int = DEFAULT_BATCH, directory: str | os.PathLike | None = None,
                   progress: bool | Callable | None = True, rebuild: bool = False) -> SenseAtlas:
        """The atlas of (model, corpus, seq_len, top_n): from the disk cache if it is there and
        valid, else built (one pass) and cached. An unreadable or mismatched cache file is
        rebuilt; one that cannot be written only costs the rebuild next time."""
        model = _unwrap(model)
        seq_len = model.config.n_positions if seq_len is None else seq_len
        key = model_key(model)
        path = cls.path_for(key, corpus.sha256, seq_len, top_n, directory)
        expected = {"format": ATLAS_FORMAT, "model_key": key, "corpus_sha256": corpus.sha256,
                    "seq_len": seq_len, "top_n": top_n, "vocab_size": model.config.vocab_size,
                    "num_senses": model.config.num_senses}
        if not rebuild and path.is_file():
            try:
                return cls.load(path, expected, model, tokenizer, corpus)
            except Exception as err:  # corrupt, foreign or stale: rebuild it
                print(f"sense atlas: rebuilding {path} ({err})", file=sys.stderr)
        atlas = build_atlas(model, tokenizer, corpus, top_n=top_n, seq_len=seq_len,
                            batch_size=batch_size, progress=progress)
        try:
            atlas.save(path)
        except OSError as err:
            print(f"sense atlas: could not cache it at {path} ({err})", file=sys.stderr)
        return atlas

    # -- queries --

    def row(self, word: str | int) -> tuple[int, int | None]:
        """(token id, row in the tables or None if it never occurred) of a one-token word."""
        vocab = self.meta["vocab_size"]
        if isinstance(word, str) and self.tokenizer is None:
            raise WordError("looking a word up needs the tokenizer; give a token id")
        token_id = single_token_id(self.tokenizer, word, vocab)
        return token_id, self._row.get(token_id)

    def _text(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(f"<{t}>" for t in token_ids)
        return self.tokenizer.decode(token_ids)

    def _token(self, token_id: int) -> str:
        return token_text(self.tokenizer, token_id) if self.tokenizer is not None else f"<{token_id}>"

    def snippet(self, offset: int, query: int, before: int = 8, after: int = 4,
                max_between: int = 16) -> list[tuple[str, str]]:
        """[(text, role)] around the occurrence at `offset` ("word") and the supported position
        `query` ("query"); a long stretch between them is cut ("gap")."""
        if self.corpus is None:
            raise ValueError("snippets need the corpus: attach it (SenseAtlas.for_corpus does)")
        ids = self.corpus.token_ids
        n = len(ids)
        window_start = offset - offset % self.meta["seq_len"]
        lo = max(window_start, offset - before)
        hi = min(n, query + 1 + after)
        part = lambda a, b: ids[a:b].tolist()  # noqa: E731
        out = [(self._text(part(lo, offset)), "text"), (self._text(part(offset, offset + 1)), "word")]
        if query > offset:
            between = query - offset - 1
            if between > max_between:
                half = max_between // 2
                out += [(self._text(part(offset + 1, offset + 1 + half)), "text"),
                        (f" … {between - 2 * half} tokens … ", "gap"),
                        (self._text(part(query - half, query)), "text")]
            else:
                out.append((self._text(part(offset + 1, query)), "text"))
            out.append((self._text(part(query, query + 1)), "query"))
        out.append((self._text(part(query + 1, hi)), "text"))
        return [(t, r) for t, r in out if t or r != "text"]

    @torch.inference_mode()
    def _predictions(self, contexts: list[tuple[int, Context]], top: int, candidates: int = 10
                     ) -> None:
        """Fill `next_token` and `predictions` of (sense, context) pairs: re-run each window once;
        the contribution of sense l at j to the logit of w at i is alpha[l, i, j] E_w . C(x_j)_l.
        `predictions`: among the model's `candidates` most likely next tokens at i, the `top`
        this sense raised most."""
        model, ids = self.model, self.corpus.token_ids
        seq_len, n = self.meta["seq_len"], len(ids)
        device = model.wte.weight.device
        by_window: dict[int, list[tuple[int, Context]]] = {}
        for sense, ctx in contexts:
            by_window.setdefault(ctx.offset // seq_len, []).append((sense, ctx))
        for window, items in by_window.items():
            start = window * seq_len
            batch = ids[start:min(start + seq_len, n)].to(device)[None]
            out = model(batch, output_contextualization=True, output_senses=True)
            logits = out.logits[0].float()  # (s, vocab)
            for sense, ctx in items:
                j, i = ctx.offset - start, ctx.query - start
                sense_logits = model.output_logits(out.senses[0, sense, j]).float()  # (vocab,)
                a = float(out.contextualization[0, sense, i, j])
                probs = logits[i].softmax(-1)
                likely = probs.topk(min(candidates, len(probs))).indices
                contrib = a * sense_logits[likely]
                order = contrib.argsort(descending=True)[:top]
                ctx.predictions = [{"token": self._token(int(likely[o])), "token_id": int(likely[o]),
                                    "probability": float(probs[likely[o]]),
                                    "contribution": float(contrib[o])} for o in order]
                if ctx.query + 1 < n:
                    nxt = int(ids[ctx.query + 1])
                    ctx.next_token = {"token": self._token(nxt), "token_id": nxt,
                                      "probability": float(probs[nxt]),
                                      "contribution": a * float(sense_logits[nxt])}

    def word_report(self, word: str | int, sense: int | None = None, top: int | None = None,
                    predictions: int = 3) -> WordReport:
        """Usage of every sense (or one) of a one-token word: total/mean/peak weight, dead or
        not, and its top contexts as snippets with the predictions they supported (these need
        the model and corpus attached; without them, contexts come without snippets)."""
        token_id, r = self.row(word)
        k = self.num_senses
        if sense is not None and not 0 <= sense < k:
            raise ValueError(f"sense must be in 0..{k - 1} (the model has {k} senses), got {sense}")
        top = self.meta["top_n"] if top is None else top
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        top = min(top, self.meta["top_n"])
        count = int(self.counts[r]) if r is not None else 0
        uses, pending = [], []
        word_total = float(self.total[r].sum()) if r is not None else 0.0
        for l in range(k) if sense is None else [sense]:
            contexts = []
            if r is not None:
                for c in range(top):
                    w = float(self.top_weight[r, l, c])
                    if w == float("-inf"):
                        break
                    ctx = Context(int(self.top_offset[r, l, c]), w, int(self.top_query[r, l, c]),
                                  float(self.top_query_weight[r, l, c]))
                    if self.corpus is not None:
                        ctx.snippet = self.snippet(ctx.offset, ctx.query)
                    contexts.append(ctx)
                    pending.append((l, ctx))
            total = float(self.total[r, l]) if r is not None else 0.0
            peak = float(self.peak[r, l]) if r is not None else 0.0
            best = float(self.max_weight[r, l]) if r is not None else 0.0
            uses.append(SenseUse(l, total, total / count if count else 0.0,
                                 total / word_total if word_total else 0.0, best, peak,
                                 bool(count) and best < DEAD_THRESHOLD, contexts))
        if pending and predictions > 0 and self.model is not None and self.corpus is not None:
            self._predictions(pending, predictions)
        shown = word if isinstance(word, str) else self._token(token_id)
        return WordReport(shown, self._token(token_id), token_id, count, self.meta["corpus"],
                          self.meta["tokens"], self.meta["seq_len"], uses)

    def sense_usage_table(self, words: int = 5, min_count: int = 5) -> list[dict[str, Any]]:
        """One row per sense index l: weight (= positions read, the same for every l), share of
        the output's magnitude (sum alpha ||C||), share of weight on the position itself, mean
        distance i - j of the weight, dead (word, l) pairs, and the `words` words (with at
        least `min_count` occurrences) whose sense l gets the most weight per occurrence."""
        weight, norm_w = self.sense_weight, self.sense_norm_weight
        counts = self.counts
        frequent = counts >= min_count
        mean = self.total / counts.clamp(min=1)[:, None].double()  # (W, k)
        dead = self.max_weight < DEAD_THRESHOLD
        rows = []
        for l in range(self.num_senses):
            scores = mean[:, l].masked_fill(~frequent, float("-inf"))
            best = scores.argsort(descending=True)[:words]
            best = [int(b) for b in best if scores[b] > float("-inf")]
            rows.append({
                "sense": l, "weight": float(weight[l]),
                "weight_share": float(weight[l] / weight.sum()) if weight.sum() > 0 else 0.0,
                "norm_share": float(norm_w[l] / norm_w.sum()) if norm_w.sum() > 0 else 0.0,
                "self_share": float(self.sense_self_weight[l] / weight[l]) if weight[l] > 0 else 0.0,
                "mean_distance": float(self.sense_distance[l] / weight[l]) if weight[l] > 0 else 0.0,
                "dead_words": int(dead[:, l].sum()),
                "top_words": [{"token": self._token(int(self.token_ids[b])),
                               "mean_weight": float(mean[b, l]), "count": int(counts[b])}
                              for b in best]})
        return rows

    def dead_senses(self, threshold: float = DEAD_THRESHOLD, min_count: int = 1,
                    limit: int | None = None) -> list[dict[str, Any]]:
        """(word, sense) pairs of words seen at least `min_count` times whose weight stayed below
        `threshold` at every occurrence, the most frequent words first."""
        dead = (self.max_weight < threshold) & (self.counts >= min_count)[:, None]
        rows_, senses = dead.nonzero(as_tuple=True)
        order = sorted(range(len(rows_)), key=lambda i: (-int(self.counts[rows_[i]]),
                                                         int(self.token_ids[rows_[i]]), int(senses[i])))
        out = []
        for i in order[:limit]:
            r, l = int(rows_[i]), int(senses[i])
            out.append({"token": self._token(int(self.token_ids[r])), "token_id": int(self.token_ids[r]),
                        "sense": l, "count": int(self.counts[r]),
                        "max_weight": float(self.max_weight[r, l]), "peak_weight": float(self.peak[r, l]),
                        "mean_weight": float(self.total[r, l]) / int(self.counts[r])})
        return out

    def summary(self) -> dict[str, Any]:
        dead = self.max_weight < DEAD_THRESHOLD
        return {**{k: self.meta[k] for k in ("corpus", "tokens", "seq_len", "top_n", "num_senses")},
                "words_seen": len(self.token_ids), "dead_threshold": DEAD_THRESHOLD,
                "dead_pairs": int(dead.sum()), "pairs_seen": int(dead.numel())}
