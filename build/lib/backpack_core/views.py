"""What the dashboard shows, as plain data: tables (lists of row dicts) and matrices with labels.

The Streamlit pages in `app/` parse their widgets, call one function here (or in the other core
modules), and render the result; nothing in this module imports Streamlit or Plotly, so every
number a page shows is testable without a browser. Names follow the workbench:

- `senses`: a word's k sense vectors; their `sense_logits` (k, vocab) give the top / bottom words;
- `contextualization` (k, query, source): alpha[l, i, j];
- `contributions` (k, i + 1): alpha[l, i, j] * (E_w . C(x_j)_l) for one prediction.

The Steer page's fast path is `steer_view(session, edits, ...)`: edits -> compiled intervention
-> the session's cached contextualization and senses re-mixed -> before / after tables. It is
what `bench/bench_app.py` times.
"""

from __future__ import annotations

import json
import math
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .compare import Comparison, compare_logits
from .edits import EDIT_KINDS, EditError, EditSet, as_edit_set, edit_from_dict
from .inspect import (
    SenseReadout,
    WordError,
    resolve_word,
    sense_readout,
    single_token_id,
    token_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from .model import Backpack
    from .session import ContextSession
    from .tokenizer import Tokenizer

# the edit kinds the Steer page builds with controls (any kind can be uploaded as JSON)
STEER_KINDS = ("ablate_sense", "scale_sense", "replace_sense", "knowledge_edit",
               "scale_contextualization")


@dataclass
class Heatmap:
    """A matrix to draw: z[row][col] (rows = y labels, cols = x labels), optional cell text."""

    z: list[list[float]]
    x: list[str]
    y: list[str]
    text: list[list[str]] | None = None
    title: str = ""
    x_title: str = ""
    y_title: str = ""
    zmax: float | None = None  # top of the colour scale, if not the largest value


def _labels(tokens: list[str]) -> list[str]:
    """Unique axis labels for tokens (a plot axis merges equal categories): '3 ␣bank'."""
    return [f"{i} {show_token(t)}" for i, t in enumerate(tokens)]


def show_token(token: str) -> str:
    """A token as people read it in a table: leading space as '␣', newlines as '\\n'."""
    text = token.replace("\n", "\\n").replace("\t", "\\t")
    return "␣" + text[1:] if text.startswith(" ") else text


# ----------------------------------------------------------------------------------------------
# Input parsing (widget text -> values the core takes)
# ----------------------------------------------------------------------------------------------

def parse_words(text: str, in_text_form: bool = True) -> list[str | int]:
    """'science, physics' -> [' science', ' physics'] (leading space: the in-text form) or,
    with in_text_form=False, ['science', 'physics']. '#123' is token id 123."""
    words: list[str | int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if re.fullmatch(r"#\d+", item):
            words.append(int(item[1:]))
        else:
            words.append(" " + item if in_text_form else item)
    return words


def parse_senses(text: str | int | None) -> int | list[int] | str:
    """'all' or '' -> 'all'; '3' -> 3; '1, 2' -> [1, 2]. Raises EditError."""
    if isinstance(text, int):
        return text
    text = (text or "").strip().lower()
    if text in ("", "all", "*"):
        return "all"
    try:
        values = [int(v) for v in re.split(r"[,\s]+", text) if v]
    except ValueError:
        raise EditError(f"senses must be 'all', an index like 3, or a list like 1, 2; got {text!r}"
                        ) from None
    return values[0] if len(values) == 1 else values


def parse_positions(text: str | None) -> list[int] | None:
    """'' -> None (everywhere); '3, 5' -> [3, 5]. Raises EditError."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return [int(v) for v in re.split(r"[,\s]+", text) if v]
    except ValueError:
        raise EditError(f"positions must be integers like 3, 5 (or blank for every occurrence); "
                        f"got {text!r}") from None


def edit_spec(kind: str, *, word: str | int, senses: str | int | None = "all",
              factor: float | None = None, positions: str | None = "",
              source_word: str | int | None = None, source_sense: int | None = None,
              remove: str | int | None = None, add: str | int | None = None,
              renormalize: bool = False) -> dict[str, Any]:
    """One edit's JSON object from the Steer page's controls, structurally checked (EditError).

    kind: one of STEER_KINDS; senses / positions as typed ('all', '1, 2'; '' = everywhere)."""
    if kind not in EDIT_KINDS:
        raise EditError(f"unknown edit kind {kind!r}; accepted kinds: {', '.join(EDIT_KINDS)}")
    if word is None or word == "":
        raise EditError("choose the word to edit")
    spec: dict[str, Any] = {"kind": kind, "word": word}
    sense = parse_senses(senses)
    where = parse_positions(positions)
    if kind == "knowledge_edit":
        if not remove:
            raise EditError("a knowledge edit needs the word to remove (e.g. ' Apple')")
        spec["remove"] = remove
        if add:
            spec["add"] = add
        if sense != "all":
            spec["sense"] = sense
    else:
        spec["sense"] = sense
    if kind in ("scale_sense", "scale_contextualization"):
        spec["factor"] = factor
    if kind == "scale_contextualization" and renormalize:
        spec["renormalize"] = True
    if kind == "replace_sense":
        if source_word is None or source_word == "":
            raise EditError("replace_sense needs the word whose sense replaces it")
        spec["source"] = {"word": source_word, "sense": source_sense}
    if where is not None:
        spec["positions"] = where
    edit_from_dict(spec)  # structural checks: raises EditError with the field named
    return spec


def add_edit(edit_set: dict[str, Any] | None, spec: dict[str, Any], model: Backpack,
             tokenizer: Tokenizer | None) -> dict[str, Any]:
    """A new edit-set dict with `spec` appended, validated against the model (EditError)."""
    current = as_edit_set(edit_set) if edit_set else EditSet()
    new = EditSet.from_dict({**current.to_dict(), "edits": current.to_dict()["edits"] + [spec]})
    new.validate(tokenizer, model.config)
    return new.to_dict()


def remove_edit(edit_set: dict[str, Any], index: int) -> dict[str, Any]:
    """The edit-set dict without edit `index`."""
    data = dict(edit_set)
    data["edits"] = [e for i, e in enumerate(edit_set.get("edits", [])) if i != index]
    return data


def read_edit_set(data: str | bytes | dict[str, Any], model: Backpack | None = None,
                  tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """Uploaded / pasted / URL edit set -> its normalised dict; EditError names what is wrong
    (malformed JSON, unknown kind or field, words or senses the model does not have)."""
    edits = EditSet.from_dict(data) if isinstance(data, dict) else EditSet.from_json(data)
    if model is not None:
        edits.validate(tokenizer, model.config)
    return edits.to_dict()


def edit_rows(edit_set: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per edit: index, kind, what it does (EditSet.describe)."""
    if not edit_set or not edit_set.get("edits"):
        return []
    edits = as_edit_set(edit_set)
    return [{"#": i, "kind": e.kind, "edit": e.describe()} for i, e in enumerate(edits)]


# ----------------------------------------------------------------------------------------------
# Senses page
# ----------------------------------------------------------------------------------------------

_VOCAB: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vocabulary(tokenizer: Tokenizer, size: int) -> list[str]:
    """Every token's text, decoded once per tokenizer."""
    cached = _VOCAB.get(tokenizer)
    if cached is None or len(cached) != size:
        cached = [token_text(tokenizer, i) for i in range(size)]
        _VOCAB[tokenizer] = cached
    return cached


def vocab_matches(tokenizer: Tokenizer, query: str, limit: int = 30,
                  vocab_size: int | None = None) -> list[str]:
    """Vocabulary tokens matching `query` (case-insensitive, spaces ignored): exact matches
    first (the in-text form with a leading space before the bare one), then prefixes, then
    substrings; shorter tokens first."""
    q = query.strip().lower()
    if not q:
        return []
    size = min(len(tokenizer), vocab_size) if vocab_size else len(tokenizer)
    groups: tuple[list[str], list[str], list[str]] = ([], [], [])
    for token in _vocabulary(tokenizer, size):
        s = token.strip().lower()
        if not s or "\ufffd" in token:
            continue
        if s == q:
            groups[0].append(token)
        elif s.startswith(q):
            groups[1].append(token)
        elif q in s:
            groups[2].append(token)
    out: list[str] = []
    for group in groups:
        out.extend(sorted(group, key=lambda t: (not t.startswith(" "), len(t), t)))
    return out[:limit]


@dataclass
class PieceView:
    """One token's senses: a table (one row per sense) and heatmaps of its top / bottom words."""

    token: str
    token_id: int
    rows: list[dict[str, Any]]
    top: Heatmap
    bottom: Heatmap


@dataclass
class SenseView:
    word: str | int
    description: str  # how the word tokenizes
    notes: list[str]
    pieces: list[PieceView]

    @property
    def multi_token(self) -> bool:
        return len(self.pieces) > 1


def _piece_view(piece, n_top: int) -> PieceView:
    rows, z_top, t_top, z_bot, t_bot = [], [], [], [], []
    for r in piece.readouts:
        rows.append({"sense": r.sense,
                     "top words": " ".join(show_token(t.token) for t in r.top),
                     "bottom words": " ".join(show_token(t.token) for t in r.bottom)})
        z_top.append([t.score for t in r.top])
        t_top.append([show_token(t.token) for t in r.top])
        z_bot.append([t.score for t in r.bottom])
        t_bot.append([show_token(t.token) for t in r.bottom])
    y = [f"sense {r.sense}" for r in piece.readouts]
    x = [str(i + 1) for i in range(n_top)]
    label = show_token(piece.token)
    return PieceView(
        piece.token, piece.token_id, rows,
        Heatmap(z_top, x, y, t_top, f"{label}: top words of each sense (sense_logits)", "rank", ""),
        Heatmap(z_bot, x, y, t_bot, f"{label}: bottom words of each sense (sense_logits)", "rank",
                ""))


def sense_view(model: Backpack, tokenizer: Tokenizer, word: str | int, top: int = 10) -> SenseView:
    """A word's senses: per token piece, the `top` highest and lowest scoring words of each
    sense (E . C(word)_l) as a table and as heatmaps. WordError for an empty / unknown word."""
    readout: SenseReadout = sense_readout(model, tokenizer, word, top=top)
    n_top = len(readout.pieces[0].readouts[0].top) if readout.pieces else 0
    return SenseView(word, readout.word.describe(), readout.notes,
                     [_piece_view(p, n_top) for p in readout.pieces])


def describe_word(tokenizer: Tokenizer, word: str | int, vocab_size: int | None = None) -> str:
    """How a word tokenizes, one line (or why it cannot be read)."""
    try:
        return resolve_word(tokenizer, word, vocab_size).describe()
    except WordError as err:
        return str(err)


def sense_search_rows(search) -> list[dict[str, Any]]:
    """sense_bank.SenseSearch -> rows: rank, word, token id, sense, score."""
    return [{"rank": r + 1, "word": show_token(h.token), "token_id": h.token_id, "sense": h.sense,
             "score": h.score} for r, h in enumerate(search.hits)]


# ----------------------------------------------------------------------------------------------
# Context page
# ----------------------------------------------------------------------------------------------

def prediction_rows(session: ContextSession, top: int = 5) -> list[dict[str, Any]]:
    """One row per position: the token, the `top` most probable next tokens, and the token that
    actually follows with its probability."""
    readout = session.readout(top=top)
    rows = []
    for p in readout.predictions:
        rows.append({
            "position": p.position, "token": show_token(p.token),
            "top predictions": ", ".join(f"{show_token(t.token)} {t.prob:.2f}" for t in p.top),
            "next token": show_token(p.next_token) if p.next_token is not None else "",
            "p(next token)": p.next_prob,
        })
    return rows


def contextualization_heatmap(session: ContextSession, sense: int | None = None) -> Heatmap:
    """The contextualization weights alpha[l, query, source] of one sense, or summed over all
    senses (sense=None: each row then sums to k). Rows: query positions; columns: sources."""
    k = session.contextualization.shape[0]
    if sense is None:
        matrix = session.contextualization.float().sum(0)
        title = f"contextualization, summed over the {k} senses (each row sums to {k})"
    else:
        if not 0 <= sense < k:
            raise ValueError(f"sense {sense} is out of range: the model has {k} senses, 0..{k - 1}")
        matrix = session.contextualization[sense].float()
        title = f"contextualization of sense {sense} (each row sums to 1)"
    labels = _labels(session.tokens)
    # The first rows share their weight among few sources and would wash out the colours:
    # the scale tops out at the 98th percentile of the causal weights of rows 3 onwards.
    causal = matrix[min(3, session.n - 1):][
        torch.ones_like(matrix, dtype=torch.bool).tril()[min(3, session.n - 1):]]
    zmax = float(causal.quantile(0.98)) if causal.numel() > 1 else None
    return Heatmap(matrix.cpu().tolist(), labels, labels, None, title, "source position j",
                   "query position i", zmax=zmax)


def target_options(session: ContextSession, position: int, top: int = 5) -> list[str]:
    """Targets worth attributing at a position: its `top` predictions, then the actual next token."""
    i = session.position(position)
    readout_top = session.base_logits[i].float()[: session.n_real].topk(top).indices.tolist()
    options = [token_text(session.tokenizer, t) if session.tokenizer is not None else f"#{t}"
               for t in readout_top]
    if i + 1 < session.n and session.tokens[i + 1] not in options:
        options.append(session.tokens[i + 1])
    return options


@dataclass
class AttributionView:
    position: int
    token: str  # the token at `position` (the prediction is for the next one)
    target: str
    target_id: int
    logit: float
    total: float  # sum of the contributions (== logit up to rounding)
    heatmap: Heatmap  # contributions, senses x source positions
    by_position: list[dict[str, Any]]
    by_sense: list[dict[str, Any]]
    top: list[dict[str, Any]]


def attribution_view(session: ContextSession, target: str | int, position: int = -1,
                     edits: Any = None, n_top: int = 20) -> AttributionView:
    """The exact attribution of `target`'s logit at `position`: contributions[l, j] =
    alpha[l, i, j] * (E_target . C(x_j)_l), by (sense, source), by source, by sense."""
    a = session.attribution(target, position=position, edits=edits)
    tokens = a.tokens[: a.position + 1]
    c = a.contributions.float()  # (k, i + 1)
    by_position = [{"position": j, "token": show_token(t), "contribution": float(v)}
                   for j, (t, v) in enumerate(zip(tokens, c.sum(0).tolist()))]
    by_sense = [{"sense": l, "contribution": float(v)} for l, v in enumerate(c.sum(1).tolist())]
    top = [{"position": t.position, "token": show_token(t.token), "sense": t.sense,
            "contribution": t.value} for t in a.top(n_top)]
    heatmap = Heatmap(c.tolist(), _labels(tokens), [f"sense {l}" for l in range(c.shape[0])],
                      None, f"contributions to the logit of {show_token(a.target_token)} after "
                            f"position {a.position} ({show_token(a.tokens[a.position])})",
                      "source position j", "sense l")
    return AttributionView(a.position, a.tokens[a.position], a.target_token, a.target_id,
                           a.logit, a.total, heatmap, by_position, by_sense, top)


# ----------------------------------------------------------------------------------------------
# Steer page: the fast path
# ----------------------------------------------------------------------------------------------

@dataclass
class _BaseStats:
    """Per text, computed once: the unedited next-token distributions (probabilities over the
    whole output vocabulary, as the model gives them; most probable among the real tokens)."""

    probs: torch.Tensor  # (n, vocab) float32
    lse: torch.Tensor  # (n,) logsumexp of the logits
    top_ids: list[int]  # most probable next token at each position
    top_probs: list[float]


_BASE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _base_stats(session: ContextSession) -> _BaseStats:
    stats = _BASE.get(session)
    if stats is None:
        with torch.inference_mode():
            logits = session.base_logits.float()
            lse = logits.logsumexp(-1)
            best, ids = logits[:, : session.n_real].max(-1)
            stats = _BaseStats((logits - lse[:, None]).exp(), lse, ids.tolist(),
                               (best - lse).exp().tolist())
        _BASE[session] = stats
    return stats


@dataclass
class SteerView:
    """Predictions before and after an edit set, for every position of a text and in detail
    at one position."""

    rows: list[dict[str, Any]]  # per position: token, top-1 before / after, changed, KL
    position: int
    comparison: Comparison  # top-k before / after at `position`
    detail: list[dict[str, Any]]  # rank, before, p before, after, p after (entered / left marked)
    kl: list[float]  # KL(before || after) per position
    n_changed: int  # positions whose most probable next token changed
    edits: list[str] = field(default_factory=list)  # one line per edit

    @property
    def changed_positions(self) -> list[int]:
        return [r["position"] for r in self.rows if r["changed"]]


def steer_view(session: ContextSession, edits: Any, position: int = -1, top: int = 10,
               words: list[str | int] | tuple = ()) -> SteerView:
    """Apply `edits` (an edit-set dict, JSON, EditSet, ...) to the cached text and tabulate
    the predictions before and after: the edit is compiled once, then one re-mix of the cached
    contextualization and senses gives every position's logits (no forward pass).

    EditError if the edits do not fit the model; ValueError for a position outside the text."""
    i = session.position(position)
    edit_set = as_edit_set(edits) if edits is not None else EditSet()
    intervention = session.intervention(edit_set) if len(edit_set) else None
    base = _base_stats(session)
    n_real = session.n_real
    with torch.inference_mode():
        before = session.base_logits
        if intervention is None:
            after, lse_after = before, base.lse
        else:
            after = session.logits(intervention).float()  # (n, vocab): a re-mix, no forward pass
            lse_after = after.logsumexp(-1)
        best_after, id_after = after[:, :n_real].float().max(-1)
        p_after = (best_after - lse_after).exp()
        # KL(before || after) per position = sum_w p_b (b - a) - lse_b + lse_a, in float32 from
        # the cached p_b and lse_b (exactly 0 where the logits did not change); the chosen
        # position's KL (in the comparison) is computed in float64 by compare_logits.
        if intervention is None:
            kl = [0.0] * session.n
        else:
            diff = before.float() - after
            kl = ((base.probs * diff).sum(-1) - base.lse + lse_after).clamp_min(0.0).tolist()

    def text(token_id: int) -> str:
        return (token_text(session.tokenizer, token_id) if session.tokenizer is not None
                else f"<{token_id}>")

    ids_b, ids_a = base.top_ids, id_after.tolist()
    probs_b, probs_a = base.top_probs, p_after.tolist()
    rows = []
    for j in range(session.n):
        rows.append({"position": j, "token": show_token(session.tokens[j]),
                     "before": show_token(text(ids_b[j])), "p before": probs_b[j],
                     "after": show_token(text(ids_a[j])), "p after": probs_a[j],
                     "changed": ids_b[j] != ids_a[j], "KL": kl[j]})
    vocab = session.model.config.vocab_size
    word_ids = [(w, single_token_id(session.tokenizer, w, vocab, role="word")) for w in words]
    comparison = compare_logits(session.tokenizer, before[i], after[i], text=session.text,
                                position=i, token=session.tokens[i], top=top, words=word_ids,
                                n_real=n_real, edits=edit_set.to_dict())
    entered = {t.token_id for t in comparison.after} - {t.token_id for t in comparison.before}
    left = {t.token_id for t in comparison.before} - {t.token_id for t in comparison.after}
    detail = []
    for rank, (b, a) in enumerate(zip(comparison.before, comparison.after)):
        detail.append({"rank": rank + 1,
                       "before": show_token(b.token), "p before": b.prob,
                       "left": b.token_id in left,
                       "after": show_token(a.token), "p after": a.prob,
                       "entered": a.token_id in entered})
    return SteerView(rows, i, comparison, detail, kl, sum(r["changed"] for r in rows),
                     edit_set.describe())


# ----------------------------------------------------------------------------------------------
# Models page
# ----------------------------------------------------------------------------------------------

def model_rows(model: Backpack, tokenizer: Tokenizer | None) -> list[dict[str, Any]]:
    """The model's config and parameter counts as (name, value) rows."""
    from .model import count_parameters

    p = next(model.parameters())
    rows = [{"name": "device", "value": str(p.device)},
            {"name": "dtype", "value": str(p.dtype).removeprefix("torch.")}]
    rows += [{"name": f"parameters: {k}", "value": f"{v:,}"}
             for k, v in count_parameters(model).items()]
    if tokenizer is not None:
        rows.append({"name": "tokenizer size", "value": f"{len(tokenizer):,}"})
    rows += [{"name": k, "value": str(v)} for k, v in model.config.to_dict().items()]
    return rows


def flatten_numbers(obj: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Nested JSON -> rows {"metric": "a.b.c", "value": x} for its numbers (and short strings)."""
    rows: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            rows += flatten_numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list):
        if obj and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj) \
                and len(obj) <= 8:
            rows.append({"metric": prefix, "value": ", ".join(f"{v:g}" for v in obj)})
        else:
            for i, value in enumerate(obj[:50]):
                rows += flatten_numbers(value, f"{prefix}[{i}]")
    elif isinstance(obj, bool) or obj is None:
        rows.append({"metric": prefix, "value": str(obj)})
    elif isinstance(obj, (int, float)):
        rows.append({"metric": prefix, "value": f"{obj:.6g}" if isinstance(obj, float) else f"{obj:,}"})
    elif isinstance(obj, str) and len(obj) <= 200:
        rows.append({"metric": prefix, "value": obj})
    return rows


@dataclass
class ModelCard:
    directory: str | None
    readme: str | None  # README.md (the model card), markdown
    numbers: list[dict[str, Any]]  # eval.json flattened (sense readouts left out: words)
    notes: list[str]
    headline: list[dict[str, Any]] = field(default_factory=list)  # the few numbers to show first


HEADLINE = re.compile(r"^(\w+_(val|ptb|test)\.perplexity|parameters\.total|training\.(steps|tokens)|"
                      r"best_sense_held_out\.\w+\.spearman)$")


def headline_numbers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of eval.json worth a tile: perplexities, losses, size, training length."""
    return [r for r in rows if HEADLINE.match(r["metric"])]


def model_directory(source: str | None) -> Path | None:
    """The local directory of a model source: the shipped model, a directory, or a hub id
    already in the local hub cache (never downloads). None when there is none."""
    from .loading import DEFAULT_MODEL_DIR

    if source is None:
        return DEFAULT_MODEL_DIR if DEFAULT_MODEL_DIR.is_dir() else None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception:  # not a hub id, or not cached: no card to show
        return None


def model_card(source: str | None) -> ModelCard:
    """The model card (README.md) and the numbers of eval.json in the model's directory."""
    directory = model_directory(source)
    if directory is None:
        return ModelCard(None, None, [], [f"no local directory for {source!r}"])
    notes, readme, numbers = [], None, []
    card = directory / "README.md"
    if card.is_file():
        readme = card.read_text(encoding="utf-8", errors="replace")
    else:
        notes.append(f"{directory} has no README.md (model card)")
    evals = directory / "eval.json"
    if evals.is_file():
        try:
            data = json.loads(evals.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k != "senses"}  # words, not numbers
            numbers = flatten_numbers(data)
        except json.JSONDecodeError as err:
            notes.append(f"{evals} is not valid JSON: {err}")
    else:
        notes.append(f"{directory} has no eval.json")
    return ModelCard(str(directory), readme, numbers, notes, headline_numbers(numbers))


@dataclass
class Curves:
    """A run's metrics.jsonl: training records and evaluation records, as columns."""

    path: str
    train: dict[str, list[float]]  # step, loss, lr, tokens, tokens_per_s, ...
    val: dict[str, list[float]]  # step, val_loss, val_ppl
    skipped: int  # lines that were not JSON objects (a line cut short by a crash)


def _columns(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    keys: list[str] = []
    for r in records:
        keys += [k for k, v in r.items() if k not in keys and isinstance(v, (int, float))
                 and not isinstance(v, bool)]
    out = {}
    for k in keys:
        values = [r.get(k) for r in records]
        out[k] = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
                  for v in values]
    return out


def training_curves(path: str | Path) -> Curves:
    """Read a run's metrics.jsonl (a directory holding one, or the file). OSError if missing."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (a run directory holds metrics.jsonl)")
    train, val, skipped = [], [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict) or "step" not in record:
            skipped += 1
        elif "val_loss" in record:
            val.append(record)
        elif "loss" in record:
            train.append(record)
    return Curves(str(path), _columns(train), _columns(val), skipped)


def find_metrics(*roots: str | Path) -> list[str]:
    """metrics.jsonl files directly in the roots or one level below (run directories)."""
    found: list[str] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for candidate in [root / "metrics.jsonl", *sorted(root.glob("*/metrics.jsonl"))]:
            if candidate.is_file() and str(candidate) not in found:
                found.append(str(candidate))
    return found
