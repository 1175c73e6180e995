"""The dashboard's view model: what its pages show, as plain data: tables (lists of row
dicts) and matrices with labels.

The Streamlit pages in `app/app_pages/` parse their widgets, call one function here (or in the
core modules), and render the result; nothing in this module imports Streamlit or Plotly, so every
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

from backpack_core.common.files import parse_json, read_prefix
from backpack_core.common.limits import MAX_DATA_FILE_BYTES
from backpack_core.edit.export import ExportResult, check_pack, export_edited_model, make_pack
from backpack_core.edit.specs import EDIT_KINDS, EditError, EditSet, as_edit_set, edit_from_dict
from backpack_core.interpret.compare import (
    Comparison,
    PositionChanges,
    compare_logits,
    position_changes,
)
from backpack_core.interpret.compare import edit_effects as compare_edit_effects
from backpack_core.interpret.readouts import SenseReadout, sense_readout
from backpack_core.model.tokenizer import readable_token, show_token
from backpack_core.model.vocab import (
    WordError,
    parse_word,
    resolve_word,
    single_token_id,
    token_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.interpret.session import ContextSession
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.tokenizer import Tokenizer

# every word box of the app reads what it is given with vocab.parse_word, and says so
WORD_HELP = ("a word: bank (read as inside a text, ' bank', when that is one token), an exact "
             "form in quotes ('bank', ' bank'), or a token id (#123)")

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
    zmin: float | None = None  # bottom of the colour scale (with zmax)
    colorbar: str = ""  # the colour bar's title (says when the scale is clipped)
    note: str = ""  # a second title line (how the colour scale was cut)


def _labels(tokens: list[str]) -> list[str]:
    """Unique axis labels for readable tokens (a plot axis merges equal categories): '3 ␣bank'."""
    return [f"{i} {t}" for i, t in enumerate(tokens)]


def position_label(session: ContextSession, i: int) -> str:
    """'3: ␣bank', for the position selectors."""
    return f"{i}: {readable_token(session.tokenizer, session.token_ids[i])}"


def text_tokens(session: ContextSession) -> list[str]:
    """The text's tokens as people read them (`readable_token`: bytes as <0xE2>)."""
    return [readable_token(session.tokenizer, i) for i in session.token_ids]


# ----------------------------------------------------------------------------------------------
# Text from users, shown as text
# ----------------------------------------------------------------------------------------------

WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)://|www\.|@\w")  # the joiner goes before the last character
_MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!$~|:&=\"'/@%^?;,")


def plain(text: Any) -> str:
    """`text` made safe to show inside Streamlit's Markdown (st.markdown, st.caption, st.error,
    ...) as the characters it holds: every Markdown-active ASCII punctuation character is
    backslash-escaped, so a link `[x](https://...)`, an image `![x](...)` (which the browser
    would fetch), an autolink, HTML, emphasis or `$math$` in an edit set's name, a word or an
    error message that quotes them reads as typed and never renders. Newlines become spaces.

    Escapes do not stop GitHub-style autolinks (`https://...`, `www.`, `a@b.c` become links after
    parsing), so an invisible word joiner (U+2060) breaks those three patterns."""
    flat = " ".join(str(text).split())
    flat = _AUTOLINK.sub(lambda m: m.group(0)[:-1] + WORD_JOINER + m.group(0)[-1], flat)
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in flat)


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


def typed_word(text: str | int | None, tokenizer: Tokenizer | None = None,
               vocab_size: int | None = None) -> str | int | None:
    """A word box's text -> the word or token id (`vocab.parse_word`); None for an empty box."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        return parse_word(text, tokenizer, vocab_size)
    except WordError as err:
        raise EditError(str(err)) from None


def edit_spec(kind: str, *, word: str | int, senses: str | int | None = "all",
              factor: float | None = None, positions: str | None = "",
              source_word: str | int | None = None, source_sense: int | None = None,
              remove: str | int | None = None, add: str | int | None = None,
              renormalize: bool = False, tokenizer: Tokenizer | None = None,
              vocab_size: int | None = None) -> dict[str, Any]:
    """One edit's JSON object from the Steer page's controls, structurally checked (EditError).

    kind: one of STEER_KINDS; senses / positions as typed ('all', '1, 2'; '' = everywhere).
    Typed words (`source_word`, `remove`, `add`, and `word` when it is typed) are read with
    `vocab.parse_word` when a tokenizer is given: `bank`, `' bank'` and `#123` all work."""
    if tokenizer is not None:
        source_word = typed_word(source_word, tokenizer, vocab_size)
        remove = typed_word(remove, tokenizer, vocab_size)
        add = typed_word(add, tokenizer, vocab_size)
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
        edits = check_pack(edits, model, tokenizer).edit_set  # a pack made elsewhere: refused
        edits.validate(tokenizer, model.config)
    return _session_edits(edits)


# knowledge-edit examples, the first whose three words are single tokens of the model is the default
KNOWLEDGE_EXAMPLES = ((" United", " States", " Nations"), (" MacBook", " Apple", " HP"),
                      (" Paris", " France", " Italy"), (" Microsoft", " Windows", " Linux"),
                      (" Germany", " Berlin", " Paris"))
FUNCTION_WORDS = frozenset("the a an and or but of to in on at by for with from as is are was were be "
                           "been has have had it its this that these those he she they we you i his "
                           "her their our not no so if then than there here who which what".split())


def is_single_token(tokenizer: Tokenizer | None, word: str, vocab_size: int | None = None) -> bool:
    try:
        return resolve_word(tokenizer, word, vocab_size).is_single
    except WordError:
        return False


def knowledge_defaults(tokenizer: Tokenizer | None, vocab_size: int | None = None,
                       text_tokens: list[str] = ()) -> tuple[str, str, str] | None:
    """(word, remove, add) for the knowledge edit's controls, valid for this model: the first
    example whose three words are single tokens of its vocabulary (one whose word is in the
    text first). None when none fits."""
    fitting = [e for e in KNOWLEDGE_EXAMPLES if all(is_single_token(tokenizer, w, vocab_size) for w in e)]
    in_text = [e for e in fitting if e[0] in text_tokens]
    return (in_text or fitting or [None])[0]


def is_content_word(token: str) -> bool:
    """A token worth editing by default: letters, three or more, not a function word."""
    word = token.strip()
    return len(word) >= 3 and word.isalpha() and word.lower() not in FUNCTION_WORDS


def default_position(tokens: list[str]) -> int:
    """The last content word of a text (not its final '.'), else its last token."""
    return next((i for i in range(len(tokens) - 1, -1, -1) if is_content_word(tokens[i])),
                len(tokens) - 1)


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
    first (the case as typed first, the in-text form with a leading space before the bare one),
    then prefixes, then substrings; shorter tokens first."""
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
    typed = query.strip()
    out: list[str] = []
    for group in groups:  # in each: the typed case first ('river' before ' River'), then in-text
        out.extend(sorted(group, key=lambda t: (typed not in t, not t.startswith(" "), len(t), t)))
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


def _piece_view(piece, n_top: int, tokenizer: Tokenizer) -> PieceView:
    rows, z_top, t_top, z_bot, t_bot = [], [], [], [], []
    for r in piece.readouts:
        rows.append({"sense": r.sense,
                     "top words": " ".join(readable_token(tokenizer, t.token_id) for t in r.top),
                     "bottom words": " ".join(readable_token(tokenizer, t.token_id) for t in r.bottom)})
        z_top.append([t.score for t in r.top])
        t_top.append([readable_token(tokenizer, t.token_id) for t in r.top])
        z_bot.append([t.score for t in r.bottom])
        t_bot.append([readable_token(tokenizer, t.token_id) for t in r.bottom])
    y = [f"sense {r.sense}" for r in piece.readouts]
    x = [str(i + 1) for i in range(n_top)]
    label = readable_token(tokenizer, piece.token_id)
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
                     [_piece_view(p, n_top, tokenizer) for p in readout.pieces])


def card_words(words: list[tuple[str, int, float]], tokenizer: Tokenizer) -> str:
    """A card's top or bottom words as one line: '␣river 3.1 · ␣deposit 2.9 ...'."""
    return " · ".join(f"{readable_token(tokenizer, i)} {v:.1f}" for _, i, v in words)


def similarity_heatmap(model: Backpack, tokenizer: Tokenizer, word_a: str | int,
                       word_b: str | int) -> Heatmap:
    """Two one-token words' senses, cosine by cosine (`sense_cards.sense_similarity`): rows are
    the senses of `word_a`, columns those of `word_b`. WordError when one is not one token."""
    from backpack_core.interpret.sense_cards import sense_similarity

    sim = sense_similarity(model, tokenizer, word_a, word_b)  # (k, k)
    a = readable_token(tokenizer, single_token_id(tokenizer, word_a, model.config.vocab_size))
    b = readable_token(tokenizer, single_token_id(tokenizer, word_b, model.config.vocab_size))
    k = sim.shape[0]
    return Heatmap(sim.tolist(), [f"{b} {j}" for j in range(k)], [f"{a} {i}" for i in range(k)],
                   [[f"{v:.2f}" for v in row] for row in sim.tolist()],
                   f"cosine of the sense vectors: {a} (rows) by {b} (columns)",
                   f"senses of {b}", f"senses of {a}", zmin=-1.0, zmax=1.0, colorbar="cosine")


def word_options(matches: list[str], query: str) -> list[str]:
    """The Senses page's choices for a typed word: the matching tokens and, when the word is not
    one of them, the word itself in its in-text form (' MacBook', with the leading space, as it
    appears inside a text and so split the way a text splits it), then as typed."""
    typed = query.strip()
    if not typed:
        return list(matches)
    extra = [] if typed in {m.strip() for m in matches} else [" " + typed, typed]
    return list(dict.fromkeys(matches + extra))


def describe_word(tokenizer: Tokenizer, word: str | int, vocab_size: int | None = None) -> str:
    """How a word tokenizes, one line (or why it cannot be read)."""
    try:
        return resolve_word(tokenizer, word, vocab_size).describe()
    except WordError as err:
        return str(err)


def sense_search_rows(search, tokenizer: Tokenizer | None = None) -> list[dict[str, Any]]:
    """sense_bank.SenseSearch -> rows: rank, word, token id, sense, score."""
    return [{"rank": r + 1, "word": readable_token(tokenizer, h.token_id) if tokenizer is not None
             else show_token(h.token), "token_id": h.token_id, "sense": h.sense,
             "score": h.score} for r, h in enumerate(search.hits)]


# ----------------------------------------------------------------------------------------------
# Context page
# ----------------------------------------------------------------------------------------------

def prediction_rows(session: ContextSession, top: int = 5) -> list[dict[str, Any]]:
    """One row per position: the token, the `top` most probable next tokens (the one that
    actually follows marked ✓), and that actual next token with its probability,
    log-probability and rank among the model's predictions."""
    readout = session.readout(top=top)
    tokenizer = session.tokenizer
    with torch.inference_mode():
        logits = session.base_logits.float()[:, : session.n_real]  # (n, real vocab)
        logprobs = logits.log_softmax(-1)
    rows = []
    for p in readout.predictions:
        i = p.position
        nxt = session.token_ids[i + 1] if i + 1 < session.n else None
        rank = int((logits[i] > logits[i, nxt]).sum()) + 1 if nxt is not None else None
        rows.append({
            "position": i, "token": readable_token(tokenizer, session.token_ids[i]),
            "top predictions": ", ".join(
                f"{readable_token(tokenizer, t.token_id)} {t.prob:.2f}{' ✓' if t.token_id == nxt else ''}"
                for t in p.top),
            "next token": readable_token(tokenizer, nxt) if nxt is not None else "",
            "p(next token)": p.next_prob,
            "log p(next token)": float(logprobs[i, nxt]) if nxt is not None else None,
            "rank of next token": rank,
        })
    return rows


def contextualization_heatmap(session: ContextSession, sense: int | None = None, *,
                              log_scale: bool = False, hide_diagonal: bool = False,
                              clip_percentile: float = 98.0) -> Heatmap:
    """The contextualization weights alpha[l, query, source] of one sense, or summed over all
    senses (sense=None: each row then sums to k). Rows: query positions; columns: sources.

    The first rows share their weight among few sources and would wash out the colours, so the
    scale tops out at the `clip_percentile` of the causal weights of rows 3 onwards; the title
    and colour bar say so when that cuts anything. hide_diagonal leaves out alpha[l, i, i] (a
    token's own senses, often the largest weight); log_scale shows log10(alpha)."""
    k = session.contextualization.shape[0]
    if sense is None:
        matrix = session.contextualization.float().sum(0)
        title = f"contextualization, summed over the {k} senses (each row sums to {k})"
    else:
        if not 0 <= sense < k:
            raise ValueError(f"sense {sense} is out of range: the model has {k} senses, 0..{k - 1}")
        matrix = session.contextualization[sense].float()
        title = f"contextualization of sense {sense} (each row sums to 1)"
    n = session.n
    shown = torch.ones(n, n, dtype=torch.bool, device=matrix.device).tril()  # causal cells
    if hide_diagonal:
        shown &= ~torch.eye(n, dtype=torch.bool, device=matrix.device)
        title += ", diagonal hidden"
    colorbar = "alpha"
    values = matrix.clone()
    if log_scale:
        values = values.clamp_min(1e-6).log10()
        colorbar = "log10 alpha"
    values[~shown] = float("nan")  # blank cells: the future, and the diagonal when hidden
    first = min(3, n - 1)
    pool = values[first:][shown[first:]]
    pool = pool[pool.isfinite()]
    zmin = zmax = None
    note = ""
    if pool.numel() > 1:
        zmax = float(pool.quantile(clip_percentile / 100))
        zmin = float(pool.min()) if log_scale else 0.0
        largest = float(values[shown].max())
        if zmax < largest:
            note = (f"colour scale clipped at the {clip_percentile:g}th percentile, {zmax:.3g} "
                    f"(largest {largest:.3g}): brighter cells are all shown alike")
            colorbar += f" (clipped at {zmax:.3g})"
        else:
            zmax = None
    labels = _labels(text_tokens(session))
    z = [[None if v != v else v for v in row] for row in values.cpu().tolist()]  # NaN -> blank
    return Heatmap(z, labels, labels, None, title, "source position j", "query position i",
                   zmax=zmax, zmin=zmin, colorbar=colorbar, note=note)


def token_weights_html(session: ContextSession, position: int, sense: int | None = None) -> str:
    """The text as tokens coloured by the contextualization weight each one's senses receive in
    the prediction after `position` (alpha[l, position, j], summed over senses or one sense),
    for texts too long for a readable heatmap. Hovering a token shows where that weight comes
    from, sense by sense (largest first). Tokens after `position` are grey (the future). Escaped
    HTML: the text is the user's."""
    import html

    i = session.position(position)
    alpha = session.contextualization[:, i, : i + 1].float()  # (k, i + 1)
    weight = alpha.sum(0) if sense is None else alpha[sense]  # (i + 1,)
    top = float(weight.max()) or 1.0
    parts = []
    for j, token in enumerate(text_tokens(session)):
        shown = html.escape(token.replace("\n", "⏎"), quote=False)
        if j > i:
            parts.append(f'<span style="color:#aaa">{shown}</span>')
            continue
        per_sense = sorted(enumerate(alpha[:, j].tolist()), key=lambda t: -t[1])
        tip = (f"{j} {token}: weight {float(weight[j]):.3f} in the prediction after {i}; by sense: "
               + ", ".join(f"{l}: {w:.3f}" for l, w in per_sense[:6]))
        edge = ";outline:2px solid #e8590c" if j == i else ""
        parts.append(f'<span title="{html.escape(tip)}" style="background:rgba(31,119,180,'
                     f'{float(weight[j]) / top:.2f});border-radius:3px;padding:0 1px{edge}">{shown}</span>')
    return ('<div style="line-height:1.9;font-family:monospace;white-space:pre-wrap">'
            + "".join(parts) + "</div>")


def position_from_label(label: Any) -> int | None:
    """An axis label '3 ␣bank' (or a bare index) -> 3; None if it is not one."""
    head = str(label).split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def picked_cell(selection: Any) -> tuple[int, int] | None:
    """The (row, column) positions of the cell clicked in a heatmap with position labels, from
    st.plotly_chart's selection event ({"selection": {"points": [{"x": ..., "y": ...}]}})."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError):
        points = getattr(getattr(selection, "selection", None), "points", None)
    if not points:
        return None
    row, col = position_from_label(points[0].get("y")), position_from_label(points[0].get("x"))
    return None if row is None or col is None else (row, col)


def target_options(session: ContextSession, position: int, top: int = 5) -> list[int]:
    """Token ids worth attributing at a position: its `top` predictions, then the actual next
    token (ids, not texts: a token holding part of a character has no text of its own)."""
    i = session.position(position)
    options = session.base_logits[i].float()[: session.n_real].topk(top).indices.tolist()
    if i + 1 < session.n and session.token_ids[i + 1] not in options:
        options.append(session.token_ids[i + 1])
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
    c = a.contributions.float()  # (k, i + 1)
    shown = [readable_token(session.tokenizer, i) for i in a.token_ids[: a.position + 1]]
    by_position = [{"position": j, "token": t, "contribution": float(v)}
                   for j, (t, v) in enumerate(zip(shown, c.sum(0).tolist()))]
    by_sense = [{"sense": l, "contribution": float(v)} for l, v in enumerate(c.sum(1).tolist())]
    top = [{"position": t.position, "token": shown[t.position], "sense": t.sense,
            "contribution": t.value} for t in a.top(n_top)]
    target = readable_token(session.tokenizer, a.target_id)
    heatmap = Heatmap(c.tolist(), _labels(shown), [f"sense {l}" for l in range(c.shape[0])],
                      None, f"contributions to the logit of {target} after "
                            f"position {a.position} ({shown[a.position]})",
                      "source position j", "sense l")
    return AttributionView(a.position, a.tokens[a.position], a.target_token, a.target_id,
                           a.logit, a.total, heatmap, by_position, by_sense, top)


# ----------------------------------------------------------------------------------------------
# Steer page: the fast path
# ----------------------------------------------------------------------------------------------

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
    changes: PositionChanges | None = None  # the core's per-position numbers

    @property
    def changed_positions(self) -> list[int]:
        return [r["position"] for r in self.rows if r["changed"]]


def steer_view(session: ContextSession, edits: Any, position: int = -1, top: int = 10,
               words: list[str | int] | tuple = ()) -> SteerView:
    """Apply `edits` (an edit-set dict, JSON, EditSet, ...) to the cached text and tabulate
    the predictions before and after: `compare.position_changes` (one re-mix of the cached
    contextualization and senses, no forward pass) for every position, and `compare_logits`
    (top-k, KL in float64) at the chosen one.

    EditError if the edits do not fit the model; ValueError for a position outside the text."""
    i = session.position(position)
    edit_set = as_edit_set(edits) if edits is not None else EditSet()
    changes = position_changes(session, edit_set if len(edit_set) else None)
    tokenizer = session.tokenizer
    rows = []
    for j in range(session.n):
        rows.append({"position": j, "token": readable_token(tokenizer, session.token_ids[j]),
                     "before": readable_token(tokenizer, changes.top_before[j]),
                     "p before": changes.p_before[j],
                     "after": readable_token(tokenizer, changes.top_after[j]),
                     "p after": changes.p_after[j],
                     "changed": changes.changed[j], "KL": changes.kl[j]})
    vocab = session.model.config.vocab_size
    word_ids = [(w, single_token_id(tokenizer, w, vocab, role="word")) for w in words]
    before = session.base_logits[i]
    after = before if changes.after_logits is None else changes.after_logits[i]
    comparison = compare_logits(tokenizer, before, after, text=session.text,
                                position=i, token=session.tokens[i], top=top, words=word_ids,
                                n_real=session.n_real, edits=edit_set.to_dict())
    entered = {t.token_id for t in comparison.after} - {t.token_id for t in comparison.before}
    left = {t.token_id for t in comparison.before} - {t.token_id for t in comparison.after}
    detail = []
    for rank, (b, a) in enumerate(zip(comparison.before, comparison.after)):
        detail.append({"rank": rank + 1,
                       "before": readable_token(tokenizer, b.token_id), "p before": b.prob,
                       "left": b.token_id in left,
                       "after": readable_token(tokenizer, a.token_id), "p after": a.prob,
                       "entered": a.token_id in entered})
    return SteerView(rows, i, comparison, detail, changes.kl, sum(changes.changed),
                     edit_set.describe(), changes)


ROW_ORDERS = {"position": "position", "KL": "KL, largest first",
              "p change": "largest change of p(top-1 before)"}


def position_rows(rows: list[dict[str, Any]], only_changed: bool = False,
                  order: str = "position") -> list[dict[str, Any]]:
    """The Steer page's every-position rows, filtered to the positions whose most probable next
    token changed (only_changed) and sorted (ROW_ORDERS: by position, by KL, or by how much the
    probability of the token that was most probable changed)."""
    if order not in ROW_ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ROW_ORDERS)}")
    out = [r for r in rows if r["changed"]] if only_changed else list(rows)
    if order == "KL":
        out.sort(key=lambda r: -r["KL"])
    elif order == "p change":
        out.sort(key=lambda r: -abs(r["p before"] - r["p after"]) if r["before"] == r["after"]
                 else -1.0 - abs(r["p before"] - r["p after"]))
    return out


@dataclass
class Divergence:
    """Where two generations from the same prompt part: `shared` is their common beginning,
    then `before` / `after` are the rest of each. tokens: how many tokens they share."""

    shared: str
    before: str
    after: str
    tokens: int

    @property
    def identical(self) -> bool:
        return not self.before and not self.after


def divergence(tokenizer: Tokenizer, before: str, after: str) -> Divergence:
    """The first token at which two continuations differ (token by token, so a shared piece of
    a word is not split)."""
    a, b = tokenizer.encode(before), tokenizer.encode(after)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    shared = tokenizer.decode(a[:n])
    return Divergence(shared, before[len(shared):], after[len(shared):], n)


def divergence_html(shared: str, rest: str) -> str:
    """One side of a divergence as escaped HTML: the shared beginning plain, the rest marked."""
    import html

    def esc(text: str) -> str:
        return html.escape(text, quote=False)

    marked = (f'<mark style="background:rgba(232,89,12,.25)">{esc(rest)}</mark>' if rest else "")
    return f'<div style="white-space:pre-wrap;font-family:monospace">{esc(shared)}{marked}</div>'


@dataclass
class EditEffect:
    """What one edit of an edit set does on its own: where the predictions moved, and how much."""

    index: int
    edit: str  # the edit, described
    factor: float | None  # the factor a live slider changes (scale edits), else None
    kind: str
    most_affected: int | None  # the position whose prediction changed most (None: nowhere)
    n_moved: int  # positions whose distribution changed at all
    n_changed: int  # positions whose most probable next token changed
    rows: list[dict[str, Any]]  # the most affected positions: position, token, KL, logit change


_EFFECTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # session -> {edit JSON: rows}


def edit_effects(session: ContextSession, edits: Any, top: int = 5) -> list[EditEffect]:
    """Per edit (applied alone, `compare.edit_effects`): the `top` most affected positions with
    KL(before || after) and the largest logit change, so that an edit acting only at its own
    word's positions is seen to work even when the chosen position did not move.

    One re-mix per edit; the result of each edit is kept per (cached) session, so that moving
    one edit's slider recomputes that edit only."""
    edit_set = as_edit_set(edits) if edits is not None else EditSet()
    known = _EFFECTS.setdefault(session, {})
    out = []
    for index, edit in enumerate(edit_set):
        key = json.dumps(edit.to_dict(), sort_keys=True)
        if key not in known:
            changes = compare_edit_effects(session, EditSet([edit]))[0]
            ranked = changes.ranked()
            rows = [{"position": j, "token": readable_token(session.tokenizer, session.token_ids[j]),
                     "KL": changes.kl[j], "largest logit change": changes.logit_change[j],
                     "top-1 changed": changes.changed[j]} for j in ranked[:top]]
            if len(known) >= 64:
                known.pop(next(iter(known)))
            known[key] = (changes.most_affected, len(ranked), sum(changes.changed), rows)
        most, n_moved, n_changed, rows = known[key]
        factor = getattr(edit, "factor", None)
        out.append(EditEffect(index, edit.describe(), float(factor) if factor is not None else None,
                              edit.kind, most, n_moved, n_changed, [dict(r) for r in rows]))
    return out


TINY_KL = 1e-3  # an edit whose largest KL on the text is below this changes almost nothing


@dataclass
class EditPreview:
    """What an edit from the controls will touch on this text, before it is added."""

    edit: str  # the edit, described
    occurrences: list[int]  # positions of its word in the text
    n_moved: int  # positions whose prediction it changes at all
    n_changed: int  # positions whose most probable next token it changes
    max_kl: float  # the largest KL(before || after) over the text
    most_affected: int | None

    @property
    def tiny(self) -> bool:
        """It changes almost nothing here (largest KL below TINY_KL)."""
        return self.max_kl < TINY_KL


def edit_preview(session: ContextSession, spec: dict[str, Any]) -> EditPreview:
    """One edit (a spec from `edit_spec`) on the cached text, alone: where its word is and how
    much it moves the predictions (`compare.edit_effects`: one re-mix, no forward pass).
    EditError when it does not fit the model."""
    edit_set = EditSet.from_dict({"version": 1, "edits": [spec]})
    edit_set.validate(session.tokenizer, session.model.config)
    edit = edit_set.edits[0]
    try:
        word_id = single_token_id(session.tokenizer, edit.word, session.model.config.vocab_size)
        occurrences = [j for j, t in enumerate(session.token_ids) if t == word_id]
    except (WordError, AttributeError):
        occurrences = []
    changes = compare_edit_effects(session, edit_set)[0]
    return EditPreview(edit.describe(), occurrences, len(changes.ranked()), sum(changes.changed),
                       max(changes.kl, default=0.0), changes.most_affected)


def with_factor(edits: dict[str, Any], index: int, factor: float) -> dict[str, Any]:
    """The edit-set dict with edit `index`'s factor replaced (the live slider)."""
    data = as_edit_set(edits).to_dict()
    if not 0 <= index < len(data["edits"]) or "factor" not in data["edits"][index]:
        raise EditError(f"edit {index} has no factor to change")
    data["edits"][index] = {**data["edits"][index], "factor": float(factor)}
    return EditSet.from_dict(data).to_dict()


# ----------------------------------------------------------------------------------------------
# Steer page: learn an edit from examples (backpack_core.edit.finetune)
# ----------------------------------------------------------------------------------------------

LEARN_EXAMPLE = ('{"prefix": "The capital of France is", "suffix": " Paris"}\n'
                 '{"prefix": "The capital of Italy is", "suffix": " Rome"}\n')


@dataclass
class LearnedEdits:
    """Sense finetuning's result as the page shows it."""

    edit_set: dict[str, Any]  # the session's edit set with the learned edits joined
    learned: dict[str, Any]  # the learned edit set alone (add_sense edits, with provenance)
    strength: float
    general_increase: float
    budget: float
    background: str
    senses: list[dict[str, Any]]  # chosen (token, sense): score, top words of the sense


def join_learned(current: dict[str, Any] | None, learned: EditSet) -> dict[str, Any]:
    """The learned edits appended to the session's edit set; an empty set becomes the learned
    one whole (name, description, provenance). Each learned edit's note names its examples."""
    if not current or not current.get("edits"):
        return learned.to_dict()
    return (as_edit_set(current) + learned).to_dict()


def learn_from_examples(model: Backpack, tokenizer: Tokenizer, current: dict[str, Any] | None,
                        examples_text: str, loss: str, *, senses_per_example: int = 10,
                        budget: float = 0.01, steps: int = 40, background: str = "ptb",
                        text: str = "", upload: tuple[str, bytes] | None = None,
                        windows: int = 16, progress=None) -> LearnedEdits:
    """The panel's form -> `sense_finetune` on background windows of the chosen corpus (half
    for the KL penalty, half held out for the budget). ValueError (ExampleError, CorpusError)
    says what is wrong."""
    from backpack_core.common.corpus import corpus_from_choice
    from backpack_core.edit.finetune import Background, TrainConfig, parse_examples, sense_finetune

    examples = parse_examples(examples_text, "the examples", loss)
    config = TrainConfig(steps=int(steps), senses_per_example=int(senses_per_example))
    config.check()
    seq_len = min(128, model.config.n_positions)
    corpus = corpus_from_choice(background, tokenizer, seq_len * 2 * windows, upload=upload,
                                text=text)
    seq_len = min(seq_len, max(2, corpus.token_ids.numel() // 2))
    split = Background.split(corpus.token_ids, seq_len, windows, windows, corpus.name)
    result = sense_finetune(model, tokenizer, examples, loss, split, float(budget), config,
                            progress=progress)
    senses = []
    for c in result.choices:
        readout = sense_readout(model, tokenizer, c.token_id, top=6).pieces[0].readouts[c.sense]
        senses.append({"token": show_token(c.token), "sense": c.sense, "score": round(c.score, 4),
                       "example": c.example, "top words": " ".join(show_token(w.token)
                                                                   for w in readout.top)})
    return LearnedEdits(join_learned(current, result.edit_set), result.edit_set.to_dict(),
                        result.result.strength, result.result.general_increase, float(budget),
                        split.name, senses)


# ----------------------------------------------------------------------------------------------
# Models page
# ----------------------------------------------------------------------------------------------

def model_rows(model: Backpack, tokenizer: Tokenizer | None) -> list[dict[str, Any]]:
    """The model's config and parameter counts as (name, value) rows."""
    from backpack_core.model.backpack import count_parameters

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
    """The rows of eval.json worth a tile: perplexities, losses, size, training length; each
    with a readable `label` (`metric_label`)."""
    return [{**r, "label": metric_label(r["metric"])} for r in rows if HEADLINE.match(r["metric"])]


_WHO = {"backpack": "Backpack", "twin": "Transformer twin"}
_SPLITS = {"val": "validation", "ptb": "PTB test", "test": "test"}


def metric_label(metric: str) -> str:
    """eval.json's dotted names as people read them: 'backpack_val.perplexity' -> 'Backpack
    perplexity, validation'; unknown names are returned as they are."""
    m = re.fullmatch(r"(\w+?)_(val|ptb|test)\.(\w+)", metric)
    if m and m.group(1) in _WHO:
        return f"{_WHO[m.group(1)]} {m.group(3).replace('_', ' ')}, {_SPLITS[m.group(2)]}"
    m = re.fullmatch(r"best_sense_held_out\.(\w+)\.spearman", metric)
    if m:
        return f"{m.group(1)} Spearman, held-out best sense"
    named = {"parameters.total": "parameters", "training.steps": "training steps",
             "training.tokens": "training tokens"}
    return named.get(metric, metric)


# The published Backpack (Hewitt et al. 2023; its training code's sizes) and the calibration run
# of /work/shared/docs/backpack-reference.md, beside the model's own configuration.
PUBLISHED_SIZES = {"micro": {"d": 384, "heads": 6, "layers": 6, "senses": 16},
                   "mini": {"d": 640, "heads": 8, "layers": 8, "senses": 16},
                   "small": {"d": 768, "heads": 12, "layers": 12, "senses": 16}}
PUBLISHED_CONTEXT, PUBLISHED_VOCAB = 512, 50_257
CALIBRATION = {"Backpack validation perplexity": "30.7 (20.6M parameters)",
               "Transformer twin validation perplexity": "30.8 (17.7M parameters)",
               "best sense, SimLex-999 / WordSim-353 (Spearman)": "0.286 / 0.579"}


def reference_rows(model: Backpack | None) -> list[dict[str, Any]]:
    """The model's shape beside the published Backpack sizes (micro, mini, small: OpenWebText,
    GPT-2 tokenizer, 512-token context, 100k steps of ~512k tokens)."""
    cfg = model.config if model is not None else None
    ours = ({"d": cfg.n_embd, "heads": cfg.n_head, "layers": cfg.n_layer, "senses": cfg.num_senses,
             "context": cfg.n_positions, "vocabulary": cfg.vocab_size} if cfg is not None else {})
    rows = []
    for name, label in (("d", "width (d)"), ("heads", "attention heads"), ("layers", "layers"),
                        ("senses", "senses per word (k)"), ("context", "context (tokens)"),
                        ("vocabulary", "vocabulary")):
        row = {"": label, "this model": f"{ours[name]:,}" if name in ours else "–"}
        for size, dims in PUBLISHED_SIZES.items():
            value = dims.get(name, PUBLISHED_CONTEXT if name == "context" else PUBLISHED_VOCAB)
            row[f"published {size}"] = f"{value:,}"
        rows.append(row)
    return rows


def model_directory(source: str | None) -> Path | None:
    """The local directory of a model source: the shipped model, a directory, or a hub id
    already in the local hub cache (never downloads). None when there is none."""
    from backpack_core.model.loading import DEFAULT_MODEL_DIR

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
    from backpack_core.model.access import display_source

    directory = model_directory(source)
    if directory is None:
        return ModelCard(None, None, [], [f"no local directory for {display_source(source)!r}"])
    shown = display_source(directory)  # relative to its allowed root: no server path
    notes, readme, numbers = [], None, []
    card = directory / "README.md"
    if card.is_file():
        readme = card.read_text(encoding="utf-8", errors="replace")
    else:
        notes.append(f"{shown} has no README.md (model card)")
    evals = directory / "eval.json"
    if evals.is_file():
        try:
            data = parse_json(read_prefix(evals, MAX_DATA_FILE_BYTES))  # bounded size and nesting
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k != "senses"}  # words, not numbers
            numbers = flatten_numbers(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            notes.append(f"{shown}/eval.json is not valid JSON: {err}")
    else:
        notes.append(f"{shown} has no eval.json")
    return ModelCard(shown, readme, numbers, notes, headline_numbers(numbers))


@dataclass
class Curves:
    """A run's metrics.jsonl: training records and evaluation records, as columns."""

    path: str  # relative to its allowed root (access.display_source): no server path
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
    from backpack_core.model.access import display_source

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {display_source(path)} (a run directory holds "
                                "metrics.jsonl)")
    train, val, skipped = [], [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict) or "step" not in record:
            skipped += 1
        elif "val_loss" in record:
            val.append(record)
        elif "loss" in record:
            train.append(record)
    return Curves(display_source(path), _columns(train), _columns(val), skipped)


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


# ----------------------------------------------------------------------------------------------
# Context page: patching a corrupted prompt, and the Transformer twin beside the Backpack
# ----------------------------------------------------------------------------------------------

@dataclass
class PatchingView:
    """Sense and contextualizer patching of the page's text (clean) into a corrupted prompt."""

    target: str
    foil: str
    logit_diff: dict[str, float]  # {"clean", "corrupted"}
    totals: dict[str, float]  # {"senses", "weights", "interaction"}: they sum to 1
    senses: Heatmap  # (k, n)
    weights: Heatmap
    interaction: Heatmap
    layers: Heatmap  # (n_layer + 1, n)
    top: list[dict[str, Any]]  # the largest (position, sense) cells
    data: dict[str, Any]  # the JSON of python -m analyses.patch


def _patch_labels(clean: list[str], corrupted: list[str]) -> list[str]:
    return [f"{j} {show_token(a)}" if a == b else f"{j} {show_token(a)}→{show_token(b)}"
            for j, (a, b) in enumerate(zip(clean, corrupted))]


def patching_view(model: Backpack, tokenizer: Tokenizer, clean: str, corrupted: str,
                  target: str | None = None, foil: str | None = None, top: int = 10) -> PatchingView:
    """`interpret.patching.patch_prompts` as heatmaps and a table (ValueError: prompts of
    different token lengths, a target or foil of several tokens, nothing to explain)."""
    from backpack_core.interpret.patching import patch_prompts

    result = patch_prompts(model, tokenizer, clean, corrupted, target or None, foil or None)
    x = _patch_labels(result.clean.tokens, result.corrupted.tokens)
    senses = [f"sense {l}" for l in range(result.senses.shape[0])]
    n_layer = result.layers.shape[0] - 1
    layers = [f"block {L} in" for L in range(n_layer)] + ["output"]
    vmax = max(1e-9, float(torch.stack([result.senses.abs().max(), result.weights.abs().max(),
                                        result.interaction.abs().max(), result.layers.abs().max()]).max()))

    def heat(matrix: torch.Tensor, y: list[str], title: str) -> Heatmap:
        return Heatmap(z=matrix.tolist(), x=x, y=y, title=title, x_title="source position j",
                       zmin=-vmax, zmax=vmax, colorbar="effect")

    cells = sorted(result.sense_rows(), key=lambda r: -max(abs(r["senses"]), abs(r["weights"])))
    return PatchingView(
        target=result.target, foil=result.foil,
        logit_diff={"clean": result.logit_diff_clean, "corrupted": result.logit_diff_corrupted},
        totals={"senses": float(result.senses.sum()), "weights": float(result.weights.sum()),
                "interaction": float(result.interaction.sum())},
        senses=heat(result.senses, senses, "clean sense vector in (weights kept)"),
        weights=heat(result.weights, senses, "clean weight alpha[l, i, j] in (senses kept)"),
        interaction=heat(result.interaction, senses, "interaction (both patched)"),
        layers=heat(result.layers, layers, "contextualizer: clean residual stream at (layer, position)"),
        top=[{"position": x[r["position"]], "sense": r["sense"], "senses": r["senses"],
              "weights": r["weights"], "interaction": r["interaction"]} for r in cells[:top]],
        data=result.to_dict())


def recorded_twin(source: str | None) -> str | None:
    """The Transformer twin recorded in the model's config.json ("twin"), as a path, or None.
    ValueError when the path recorded is not a directory."""
    from backpack_core.interpret.twin import twin_directory

    directory = model_directory(source)
    if directory is None:
        return None
    found = twin_directory(directory)
    return str(found) if found is not None else None


@dataclass
class TwinView:
    """The Backpack and its twin on the page's text."""

    mean_loss: dict[str, float]  # {"backpack", "twin"}
    positions: list[str]  # "i token" labels of the predictions 0..n-2 (those with a next token)
    loss: list[float]  # (n - 1,) the Backpack's loss of the next token
    twin_loss: list[float]
    divergence: list[float]  # (n,) Jensen-Shannon divergence, nats
    rows: list[dict[str, Any]]  # one per position
    disagreements: list[dict[str, Any]]  # the positions where they disagree most


def twin_view(model: Backpack, twin: Backpack, tokenizer: Tokenizer, text: str,
              twin_tokenizer: Tokenizer | None = None, top: int = 3,
              most: int = 5) -> TwinView:
    """`interpret.twin.compare_with_twin` as tables and series (ValueError: not a twin of this
    model, an empty or too long text)."""
    from backpack_core.interpret.twin import compare_with_twin

    c = compare_with_twin(model, twin, tokenizer, text, top=top, twin_tokenizer=twin_tokenizer)
    labels = [f"{i} {readable_token(tokenizer, t)}" for i, t in enumerate(c.token_ids)]
    words = lambda preds: ", ".join(f"{readable_token(tokenizer, p.token_id)} {p.prob:.2f}"  # noqa: E731
                                    for p in preds)
    rows = []
    for i in range(c.n):
        nxt = c.token_ids[i + 1] if i + 1 < c.n else None
        rows.append({"position": i, "token": readable_token(tokenizer, c.token_ids[i]),
                     "next token": readable_token(tokenizer, nxt) if nxt is not None else "",
                     "Backpack predicts": words(c.predictions[i]),
                     "twin predicts": words(c.twin_predictions[i]),
                     "Backpack loss": float(c.loss[i]) if nxt is not None else None,
                     "twin loss": float(c.twin_loss[i]) if nxt is not None else None,
                     "JS divergence": float(c.divergence[i])})
    backpack_loss, twin_loss = c.mean_loss()
    return TwinView(
        mean_loss={"backpack": backpack_loss, "twin": twin_loss}, positions=labels[:-1],
        loss=c.loss.tolist(), twin_loss=c.twin_loss.tolist(), divergence=c.divergence.tolist(),
        rows=rows, disagreements=[rows[i] for i in c.disagreements(most)])


# ----------------------------------------------------------------------------------------------
# Sharing an edit set (packs) and exporting the edited model (the Steer page's last section)
# ----------------------------------------------------------------------------------------------

def _session_edits(edits: EditSet) -> dict[str, Any]:
    """The session's edit-set dict: a pack's record of its model is dropped once it is accepted
    (the download makes a new one, for the model of this session)."""
    data = edits.to_dict()
    data.pop("pack", None)
    return data


def read_pack(data: str | bytes, model: Backpack, tokenizer: Tokenizer,
              apply_anyway: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An uploaded edit set or pack -> (the session's edit-set dict, the edits left out). A pack
    made on another model is refused (EditError) unless its tokenizer is this model's and
    `apply_anyway`; then the edits that no longer fit are left out and listed."""
    checked = check_pack(EditSet.from_json(data), model, tokenizer, apply_anyway=apply_anyway)
    checked.edit_set.validate(tokenizer, model.config)
    return _session_edits(checked.edit_set), checked.unresolved


def pack_json(edits: dict[str, Any], model: Backpack, tokenizer: Tokenizer, base_name: str) -> str:
    """The Steer page's download: the edit set as a pack made on this session's model."""
    return make_pack(edits, model, tokenizer, base_model_name=base_name).to_json() + "\n"


def with_title(edits: dict[str, Any], title: str, description: str) -> dict[str, Any]:
    """The edit-set dict with a title (its `name`) and description; blank ones are dropped."""
    data = {k: v for k, v in edits.items() if k not in ("name", "description")}
    named = {"name": title.strip() or None, "description": description.strip() or None}
    return EditSet.from_dict({**{k: v for k, v in named.items() if v}, **data}).to_dict()


def server_export_allowed() -> bool:
    """Whether this server lets visitors export to its disk (BACKPACK_SERVER_EXPORT)."""
    from backpack_core.model.access import server_export_allowed as allowed

    return allowed()


def export_to_directory(edits: dict[str, Any], model: Backpack, tokenizer: Tokenizer,
                        directory: str, base_name: str) -> ExportResult:
    """Export the edited model to a new directory on the server, which must lie under the model
    directories the server may open (BACKPACK_MODEL_ROOTS): then the Models page loads it."""
    from backpack_core.model.access import EXPORT_ENV, AccessError, allowed_path, server_export_allowed

    if not server_export_allowed():
        raise AccessError(f"exports to the server's disk are turned off on this server ({EXPORT_ENV}=0); "
                          "use the zip download instead")
    if not directory.strip():
        raise ValueError("give the directory to export to, e.g. runs/edited-model")
    target = allowed_path(directory.strip(), "this export directory")
    return export_edited_model(model, tokenizer, edits, target, base_name=base_name)


def export_zip(edits: dict[str, Any], model: Backpack, tokenizer: Tokenizer, base_name: str,
               folder: str = "edited-model") -> tuple[bytes, ExportResult]:
    """Export the edited model into a temporary directory and return it as zip bytes (the
    files under `folder/`), with what was written."""
    import io
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        result = export_edited_model(model, tokenizer, edits, Path(tmp) / folder,
                                     base_name=base_name)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in result.files:
                archive.write(result.directory / name, f"{folder}/{name}")
    return buffer.getvalue(), result


def export_rows(result: ExportResult) -> list[dict[str, Any]]:
    """The exported files and their sizes, for a table."""
    return [{"file": name, "bytes": size} for name, size in result.files.items()]
