"""Sense edits as data: JSON-serialisable specs, validated, compiled into an `Intervention`.

An edit set is a JSON object with a schema version and a list of edits applied in order:

    {"version": 1, "name": "MacBook -> HP",
     "edits": [{"kind": "knowledge_edit", "word": " MacBook", "remove": " Apple", "add": " HP"}]}

Kinds (fields in docs/API.md; every edit also takes an optional free-text "note"):

- `ablate_sense`: zero sense(s) of a word, everywhere or at given positions;
- `scale_sense`: multiply sense vector(s) of a word by a factor;
- `replace_sense`: replace sense vector(s) of a word by a given vector or another word's sense;
- `add_sense`: add a given delta to sense vector(s) of a word (what `edit.finetune` learns);
- `scale_contextualization`: multiply alpha[l, i, j] for source positions j holding the word
  (the paper's topic-control / gender-debiasing edit); rows are not renormalised unless
  `renormalize` is true;
- `knowledge_edit`: in a word's senses, remove the output-embedding direction of one word and
  add another's, rescaled as in the paper (see `KnowledgeEdit`);
- `replace_contextualization`: set contextualization weights (a value, or a query x source
  matrix) for chosen senses / query positions / source positions (causal entries only).

Words are texts that must be one token (" bank", with its leading space, is the in-text form)
or token ids. An edit naming a word applies to every occurrence of its token id (senses are
context-free), or only at the text positions listed in `positions`.

Applying edits never touches the model's weights: `compile` returns a `CompiledEdits`
(an `Intervention`) whose methods build new tensors from the ones they are handed, so one model
object can serve several callers with different edit sets at once, also from several threads.

Every problem with a spec raises `EditError` (a ValueError) with a message naming the edit,
the field and what is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from backpack_core.common.files import parse_json, read_prefix
from backpack_core.common.limits import (
    MAX_EDIT_SET_BYTES,
    LimitError,
    check_edit_count,
    check_edit_number,
    check_edit_set_bytes,
)
from backpack_core.model.backpack import Intervention
from backpack_core.model.vocab import WordError, single_token_id

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.backpack import Backpack
    from backpack_core.model.config import ModelConfig
    from backpack_core.model.tokenizer import Tokenizer

SCHEMA_VERSION = 1


class EditError(ValueError):
    """An edit spec is malformed or does not fit the model; the message says what and where."""


class EditLimitError(EditError, LimitError):
    """An edit set larger than a limit of backpack_core.common.limits (edits per set, bytes)."""


# ----------------------------------------------------------------------------------------------
# Field checks (structural: no model needed)
# ----------------------------------------------------------------------------------------------

def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: Any, name: str, minimum: int = 0) -> int:
    if not _is_int(value):
        raise EditError(f"'{name}' must be an integer, got {_show(value)}")
    if value < minimum:
        raise EditError(f"'{name}' must be >= {minimum}, got {value}")
    return value


def _check_number(value: Any, name: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EditError(f"'{name}' must be a finite number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise EditError(f"'{name}' is too large to be a number: {_show(value)}") from None
    if not math.isfinite(number):
        raise EditError(f"'{name}' must be a finite number, got {number} (NaN and infinity are "
                        "refused)")
    if minimum is not None and number < minimum:
        raise EditError(f"'{name}' must be >= {minimum}, got {number}")
    check_edit_number(number, name, EditError)
    return number


def _check_word(value: Any, name: str) -> str | int:
    if _is_int(value):
        return _check_int(value, name)
    if not isinstance(value, str):
        raise EditError(f"'{name}' must be a word (text, one token, e.g. \" bank\") or a token id, "
                        f"got {_show(value)}")
    if value == "":
        raise EditError(f"'{name}' is empty; give a word such as \" bank\" or a token id")
    return value


def _check_senses(value: Any, name: str) -> tuple[int, ...] | None:
    """A sense index, a list of them, or "all" / null (None: every sense)."""
    if value is None or value == "all":
        return None
    if _is_int(value):
        return (_check_int(value, name),)
    if isinstance(value, (list, tuple)):
        if not value:
            raise EditError(f"'{name}' is an empty list; give sense indices or \"all\"")
        senses = tuple(_check_int(v, f"{name}[{i}]") for i, v in enumerate(value))
        return tuple(sorted(set(senses)))
    raise EditError(f"'{name}' must be a sense index, a list of them, or \"all\"; got {_show(value)}")


def _check_positions(value: Any, name: str) -> tuple[int, ...] | None:
    """Text positions (token indices from 0), or null for every position."""
    if value is None:
        return None
    if _is_int(value):
        return (_check_int(value, name),)
    if not isinstance(value, (list, tuple)):
        raise EditError(f"'{name}' must be a list of token positions (integers >= 0) or null, "
                        f"got {_show(value)}")
    if not value:
        raise EditError(f"'{name}' is an empty list; leave it out (or null) to apply everywhere")
    return tuple(sorted({_check_int(v, f"{name}[{i}]") for i, v in enumerate(value)}))


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise EditError(f"'{name}' must be true or false, got {_show(value)}")
    return value


def _check_note(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise EditError(f"'{name}' must be a string, got {_show(value)}")
    return value


def _check_vector(value: Any, name: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise EditError(f"'{name}' must be a non-empty list of numbers (length d), got {_show(value)}")
    return tuple(_check_number(v, f"{name}[{i}]") for i, v in enumerate(value))


def _check_matrix(value: Any, name: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise EditError(f"'{name}' must be a non-empty list of rows (query x source), got "
                        f"{_show(value)}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or not row:
            raise EditError(f"'{name}[{i}]' must be a non-empty list of numbers, got {_show(row)}")
        rows.append(tuple(_check_number(v, f"{name}[{i}][{j}]", minimum=0.0)
                          for j, v in enumerate(row)))
    if len({len(r) for r in rows}) != 1:
        raise EditError(f"'{name}' rows have different lengths; the matrix must be rectangular")
    return tuple(rows)


def _json_senses(senses: tuple[int, ...] | None) -> int | list[int] | str:
    if senses is None:
        return "all"
    return senses[0] if len(senses) == 1 else list(senses)


# ----------------------------------------------------------------------------------------------
# Edit kinds
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SenseRef:
    """Sense `sense` of word `word` (used as a replacement vector)."""

    word: str | int
    sense: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "word", _check_word(self.word, "source.word"))
        object.__setattr__(self, "sense", _check_int(self.sense, "source.sense"))

    @classmethod
    def from_value(cls, value: Any) -> SenseRef:
        if isinstance(value, SenseRef):
            return value
        if not isinstance(value, dict):
            raise EditError(f"'source' must be an object {{\"word\": ..., \"sense\": ...}}, got "
                            f"{_show(value)}")
        unknown = [k for k in value if k not in ("word", "sense")]
        if unknown:
            raise EditError(f"'source' has unknown field {_show(unknown[0])}; accepted: word, sense")
        missing = [k for k in ("word", "sense") if k not in value]
        if missing:
            raise EditError(f"'source' lacks '{missing[0]}'; it needs word and sense")
        return cls(value["word"], value["sense"])

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "sense": self.sense}


class _Context:
    """What model-dependent checks and compilation need."""

    def __init__(self, tokenizer: Tokenizer | None, config: ModelConfig,
                 model: Backpack | None = None):
        self.tokenizer, self.config, self.model = tokenizer, config, model

    def token(self, value: str | int, name: str) -> int:
        try:
            return single_token_id(self.tokenizer, value, self.config.vocab_size, role=name)
        except WordError as err:
            raise EditError(f"'{name}': {err}") from None

    def senses(self, senses: tuple[int, ...] | None, name: str = "sense") -> tuple[int, ...] | None:
        k = self.config.num_senses
        for s in senses or ():
            if s >= k:
                raise EditError(f"'{name}' {s} is out of range: the model has {k} senses, "
                                f"0..{k - 1}")
        return senses

    def positions(self, positions: tuple[int, ...] | None, name: str) -> tuple[int, ...] | None:
        limit = self.config.n_positions
        for p in positions or ():
            if p >= limit:
                raise EditError(f"'{name}' {p} is out of range: the model reads at most {limit} "
                                f"tokens, positions 0..{limit - 1}")
        return positions


@dataclass(frozen=True)
class Edit:
    """Base of the edit kinds: a frozen dataclass whose fields are the JSON fields."""

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._normalise()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _normalise(self) -> None:  # structural checks, overridden per kind
        if "note" in {f.name for f in dataclasses.fields(self)}:
            self._set("note", _check_note(self.note, "note"))

    def _normalise_target(self) -> None:
        """The fields most kinds share: which word, which of its senses, at which positions."""
        self._set("word", _check_word(self.word, "word"))
        self._set("sense", _check_senses(self.sense, "sense"))
        self._set("positions", _check_positions(self.positions, "positions"))

    def _target(self, ctx: _Context) -> dict[str, Any]:
        """Those fields resolved against the model: token id, sense indices, positions."""
        return {"token_id": ctx.token(self.word, "word"), "senses": ctx.senses(self.sense),
                "positions": ctx.positions(self.positions, "positions")}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "sense" or f.name == "senses":
                out[f.name] = _json_senses(value)
            elif value is None or value is False:
                continue
            elif isinstance(value, SenseRef):
                out[f.name] = value.to_dict()
            elif isinstance(value, tuple):
                out[f.name] = [list(v) if isinstance(v, tuple) else v for v in value]
            else:
                out[f.name] = value
        return out

    def describe(self) -> str:
        return json.dumps(self.to_dict())

    # model-dependent: check ids / ranges, then build the operation
    def check(self, ctx: _Context) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, ctx: _Context, resolved: dict[str, Any]) -> _Op:
        raise NotImplementedError


def _word_label(word: str | int) -> str:
    return f"token {word}" if isinstance(word, int) else repr(word)


def _where_label(positions: tuple[int, ...] | None) -> str:
    return "everywhere" if positions is None else f"at positions {list(positions)}"


def _senses_label(senses: tuple[int, ...] | None) -> str:
    if senses is None:
        return "all senses"
    return f"sense {senses[0]}" if len(senses) == 1 else f"senses {list(senses)}"


@dataclass(frozen=True)
class AblateSense(Edit):
    """Set sense vector(s) of `word` to zero (removing exactly their attribution terms)."""

    kind: ClassVar[str] = "ablate_sense"
    word: str | int
    sense: Any  # int, list of ints, or "all"
    positions: Any = None
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._normalise_target()

    def describe(self) -> str:
        return (f"ablate {_senses_label(self.sense)} of {_word_label(self.word)} "
                f"{_where_label(self.positions)}")

    def check(self, ctx):
        return self._target(ctx)

    def build(self, ctx, r):
        return _SenseOp(r["token_id"], r["senses"], r["positions"], lambda s: torch.zeros_like(s))


@dataclass(frozen=True)
class ScaleSense(Edit):
    """Multiply sense vector(s) of `word` by `factor`."""

    kind: ClassVar[str] = "scale_sense"
    word: str | int
    sense: Any
    factor: float
    positions: Any = None
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._normalise_target()
        self._set("factor", _check_number(self.factor, "factor"))

    def describe(self) -> str:
        return (f"scale {_senses_label(self.sense)} of {_word_label(self.word)} by {self.factor:g} "
                f"{_where_label(self.positions)}")

    def check(self, ctx):
        return self._target(ctx)

    def build(self, ctx, r):
        factor = self.factor
        return _SenseOp(r["token_id"], r["senses"], r["positions"], lambda s: s * factor)


@dataclass(frozen=True)
class ReplaceSense(Edit):
    """Replace sense vector(s) of `word` by `vector` (length d) or by another word's sense
    (`source`: {"word": ..., "sense": ...}). Exactly one of the two."""

    kind: ClassVar[str] = "replace_sense"
    word: str | int
    sense: Any
    vector: Any = None
    source: Any = None
    positions: Any = None
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._normalise_target()
        if (self.vector is None) == (self.source is None):
            raise EditError("give exactly one of 'vector' (a list of d numbers) or 'source' "
                            "({\"word\": ..., \"sense\": ...})")
        if self.vector is not None:
            self._set("vector", _check_vector(self.vector, "vector"))
        else:
            self._set("source", SenseRef.from_value(self.source))

    def describe(self) -> str:
        what = (f"sense {self.source.sense} of {_word_label(self.source.word)}" if self.source
                else "a given vector")
        return (f"replace {_senses_label(self.sense)} of {_word_label(self.word)} by {what} "
                f"{_where_label(self.positions)}")

    def check(self, ctx):
        r = self._target(ctx)
        if self.vector is not None and len(self.vector) != ctx.config.n_embd:
            raise EditError(f"'vector' has {len(self.vector)} numbers; the model's sense vectors "
                            f"have d = {ctx.config.n_embd}")
        if self.source is not None:
            r["source_id"] = ctx.token(self.source.word, "source.word")
            ctx.senses((self.source.sense,), "source.sense")
        return r

    def build(self, ctx, r):
        model = ctx.model
        if self.vector is not None:
            vector = torch.tensor(self.vector, dtype=torch.float32, device=model.wte.weight.device)
        else:
            ids = torch.tensor([r["source_id"]], device=model.wte.weight.device)
            with torch.no_grad():
                vector = model.sense_vectors(ids)[0, self.source.sense].float().clone()
        return _SenseOp(r["token_id"], r["senses"], r["positions"],
                        lambda s: vector.to(s.dtype).expand_as(s))


def _check_sense_list(value: Any, name: str) -> tuple[int, ...]:
    """An explicit sense index or list of distinct ones, order kept (rows of a delta follow it)."""
    if _is_int(value):
        return (_check_int(value, name),)
    if not isinstance(value, (list, tuple)) or not value:
        raise EditError(f"'{name}' must be a non-empty list of sense indices (one per row of "
                        f"'delta'), got {_show(value)}")
    senses = tuple(_check_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    if len(set(senses)) != len(senses):
        raise EditError(f"'{name}' lists a sense twice: {list(senses)}; list each sense once")
    return senses


@dataclass(frozen=True)
class AddSense(Edit):
    """Add `delta[r]` (length d) to sense `senses[r]` of `word`: C'(x)_l = C(x)_l + delta_l.

    The additive form a learned edit takes (`edit.finetune`): at strength s it is exactly
    x + s delta. `senses` is an explicit list (order kept, no repeats), one row of `delta` each.
    """

    kind: ClassVar[str] = "add_sense"
    word: str | int
    senses: Any
    delta: Any
    positions: Any = None
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._set("word", _check_word(self.word, "word"))
        self._set("senses", _check_sense_list(self.senses, "senses"))
        self._set("positions", _check_positions(self.positions, "positions"))
        if not isinstance(self.delta, (list, tuple)) or not self.delta:
            raise EditError(f"'delta' must be a list of rows (one list of d numbers per listed "
                            f"sense), got {_show(self.delta)}")
        rows = tuple(_check_vector(row, f"delta[{i}]") for i, row in enumerate(self.delta))
        if len(rows) != len(self.senses):
            raise EditError(f"'delta' has {len(rows)} rows but 'senses' lists {len(self.senses)}; "
                            "give one row per listed sense")
        if len({len(r) for r in rows}) != 1:
            raise EditError("'delta' rows have different lengths; each must have d numbers")
        self._set("delta", rows)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["senses"] = list(self.senses)  # always a list: rows of delta follow its order
        return out

    def describe(self) -> str:
        norms = ", ".join(f"{math.sqrt(sum(v * v for v in row)):.3g}" for row in self.delta)
        return (f"add a learned delta to {_senses_label(self.senses)} of {_word_label(self.word)} "
                f"(norms {norms}) {_where_label(self.positions)}")

    def check(self, ctx):
        r = {"token_id": ctx.token(self.word, "word"), "senses": ctx.senses(self.senses, "senses"),
             "positions": ctx.positions(self.positions, "positions")}
        if len(self.delta[0]) != ctx.config.n_embd:
            raise EditError(f"'delta' rows have {len(self.delta[0])} numbers; the model's sense "
                            f"vectors have d = {ctx.config.n_embd}")
        return r

    def build(self, ctx, r):
        full = torch.zeros(ctx.config.num_senses, ctx.config.n_embd, dtype=torch.float32,
                           device=ctx.model.wte.weight.device)  # (k, d): zero rows add nothing
        full[list(r["senses"])] = torch.tensor(self.delta, dtype=torch.float32, device=full.device)
        return _SenseOp(r["token_id"], None, r["positions"],
                        lambda s: s + full.to(s.device, s.dtype))


@dataclass(frozen=True)
class ScaleContextualization(Edit):
    """Multiply alpha[l, i, j] by `factor` for the senses l listed and every source position j
    holding `word` (or only the listed `positions`), at every query position i.

    Rows are NOT renormalised by default (the paper's edit): the weights of a row then no longer
    sum to one. With `renormalize: true` each row of the listed senses is divided by its new sum.
    """

    kind: ClassVar[str] = "scale_contextualization"
    word: str | int
    sense: Any
    factor: float
    positions: Any = None
    renormalize: bool = False
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._normalise_target()
        self._set("factor", _check_number(self.factor, "factor", minimum=0.0))
        self._set("renormalize", _check_flag(self.renormalize, "renormalize"))

    def describe(self) -> str:
        return (f"scale the contextualization weight of {_senses_label(self.sense)} on "
                f"{_word_label(self.word)} by {self.factor:g} {_where_label(self.positions)}"
                + (" (rows renormalised)" if self.renormalize else ""))

    def check(self, ctx):
        return self._target(ctx)

    def build(self, ctx, r):
        return _ScaleContextualizationOp(r["token_id"], r["senses"], r["positions"], self.factor,
                                         self.renormalize)


@dataclass(frozen=True)
class KnowledgeEdit(Edit):
    """The paper's knowledge edit: in the senses of `word`, move the logit of `remove` to `add`.

    For each edited sense vector s, with a = E[remove], h = E[add], c = (s . a) / |a|^2:

        s' = s - c a + c (|a|^2 / |h|^2) h

    The first step removes s's component along a (its contribution s . a to the `remove` logit);
    the added term contributes exactly c |a|^2 = s . a to the `add` logit. Since h is not
    orthogonal to a in general, s' . a = (s . a)(h . a) / |h|^2 is small but not zero. With
    `orthogonalize: true` the added direction is h minus its component along a, rescaled so
    it still adds exactly s . a to the `add` logit; then s' . a = 0 exactly.
    Without `add`, the edit only projects the `remove` direction out.
    """

    kind: ClassVar[str] = "knowledge_edit"
    word: str | int
    remove: str | int
    add: str | int | None = None
    sense: Any = None  # default: all senses
    positions: Any = None
    orthogonalize: bool = False
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._normalise_target()
        self._set("remove", _check_word(self.remove, "remove"))
        if self.add is not None:
            self._set("add", _check_word(self.add, "add"))
        self._set("orthogonalize", _check_flag(self.orthogonalize, "orthogonalize"))

    def describe(self) -> str:
        what = f"remove {_word_label(self.remove)}"
        if self.add is not None:
            what += f" and add {_word_label(self.add)}"
        return (f"{what} in {_senses_label(self.sense)} of {_word_label(self.word)} "
                f"{_where_label(self.positions)}")

    def check(self, ctx):
        r = {**self._target(ctx), "remove_id": ctx.token(self.remove, "remove")}
        if self.add is not None:
            r["add_id"] = ctx.token(self.add, "add")
        return r

    def build(self, ctx, r):
        E = ctx.model.wte.weight.detach()
        a = E[r["remove_id"]].float().clone()
        a2 = float(a @ a)
        if not a2 > 0:
            raise EditError("'remove' has a zero output embedding; there is no direction to remove")
        added = None
        if self.add is not None:
            h = E[r["add_id"]].float().clone()
            if self.orthogonalize:
                h = h - (h @ a) / a2 * a
            if not float(h @ h) > 0:
                raise EditError("'add' has a zero output embedding (or, with orthogonalize, one "
                                "parallel to 'remove'): there is no direction to add")
            denom = float(E[r["add_id"]].float() @ h)  # E[add] . added direction
            added = h * (a2 / denom)  # adds c * |a|^2 = s . a to the `add` logit

        def transform(s: torch.Tensor) -> torch.Tensor:
            s32 = s.float()
            c = (s32 @ a.to(s.device)).unsqueeze(-1) / a2  # (..., 1)
            out = s32 - c * a.to(s.device)
            if added is not None:
                out = out + c * added.to(s.device)
            return out.to(s.dtype)

        return _SenseOp(r["token_id"], r["senses"], r["positions"], transform)


@dataclass(frozen=True)
class ReplaceContextualization(Edit):
    """Set contextualization weights alpha[l, i, j] of the listed senses to `value`, or to
    `weights[i][j]` (a query x source matrix over text positions; entries outside it are left
    as they are), for the query positions i and source positions j listed (default: all),
    optionally only for sources holding `word`. Only causal entries (j <= i) are ever set.
    With `renormalize: true`, each row of the listed senses is divided by its new sum.
    """

    kind: ClassVar[str] = "replace_contextualization"
    sense: Any = None
    value: float | None = None
    weights: Any = None
    query_positions: Any = None
    source_positions: Any = None
    word: str | int | None = None
    renormalize: bool = False
    note: str | None = None

    def _normalise(self) -> None:
        super()._normalise()
        self._set("sense", _check_senses(self.sense, "sense"))
        if (self.value is None) == (self.weights is None):
            raise EditError("give exactly one of 'value' (a number >= 0) or 'weights' "
                            "(a query x source matrix)")
        if self.value is not None:
            self._set("value", _check_number(self.value, "value", minimum=0.0))
        else:
            self._set("weights", _check_matrix(self.weights, "weights"))
        self._set("query_positions", _check_positions(self.query_positions, "query_positions"))
        self._set("source_positions", _check_positions(self.source_positions, "source_positions"))
        if self.word is not None:
            self._set("word", _check_word(self.word, "word"))
        self._set("renormalize", _check_flag(self.renormalize, "renormalize"))

    def describe(self) -> str:
        what = f"{self.value:g}" if self.value is not None else "a given matrix"
        where = []
        if self.query_positions is not None:
            where.append(f"queries {list(self.query_positions)}")
        if self.source_positions is not None:
            where.append(f"sources {list(self.source_positions)}")
        if self.word is not None:
            where.append(f"sources holding {_word_label(self.word)}")
        return (f"set the contextualization weights of {_senses_label(self.sense)} to {what}"
                + (f" ({', '.join(where)})" if where else ""))

    def check(self, ctx):
        r = {"senses": ctx.senses(self.sense),
             "query_positions": ctx.positions(self.query_positions, "query_positions"),
             "source_positions": ctx.positions(self.source_positions, "source_positions")}
        r["token_id"] = ctx.token(self.word, "word") if self.word is not None else None
        return r

    def build(self, ctx, r):
        weights = None
        if self.weights is not None:
            weights = torch.tensor(self.weights, dtype=torch.float32)
        return _ReplaceContextualizationOp(r["senses"], self.value, weights, r["query_positions"],
                                           r["source_positions"], r["token_id"], self.renormalize)


EDIT_KINDS: dict[str, type[Edit]] = {cls.kind: cls for cls in (
    AblateSense, ScaleSense, ReplaceSense, ScaleContextualization, KnowledgeEdit,
    ReplaceContextualization, AddSense)}


def fields_of_kind(cls: type[Edit]) -> tuple[list[str], list[str]]:
    """(required, optional) JSON field names of an edit kind."""
    required, optional = [], []
    for f in dataclasses.fields(cls):
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        (required if no_default else optional).append(f.name)
    return required, optional


def edit_from_dict(data: Any) -> Edit:
    """One edit from its JSON object (raises EditError)."""
    if isinstance(data, Edit):
        return data
    if not isinstance(data, dict):
        raise EditError(f"an edit must be an object with a \"kind\", got {_show(data)}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in EDIT_KINDS:
        raise EditError(f"unknown edit kind {_show(kind)}; accepted kinds: {', '.join(EDIT_KINDS)}")
    cls = EDIT_KINDS[kind]
    required, optional = fields_of_kind(cls)
    unknown = [k for k in data if k != "kind" and k not in required and k not in optional]
    if unknown:
        raise EditError(f"unknown field {_show(unknown[0])} in a {kind} edit; accepted fields: "
                        f"{', '.join(required + optional)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise EditError(f"a {kind} edit needs '{missing[0]}' (required fields: {', '.join(required)})")
    return cls(**{k: v for k, v in data.items() if k != "kind"})


# ----------------------------------------------------------------------------------------------
# Compiled edits: the Intervention
# ----------------------------------------------------------------------------------------------

def _select(ids: torch.Tensor, positions: torch.Tensor, token_id: int | None,
            only: tuple[int, ...] | None) -> torch.Tensor:
    """(b, s) bool: tokens equal to token_id (None: any) at positions in `only` (None: any)."""
    mask = torch.ones_like(ids, dtype=torch.bool) if token_id is None else ids == token_id
    if only is not None:
        mask = mask & torch.isin(positions, torch.tensor(only, device=positions.device))
    return mask


def _sense_mask(senses: tuple[int, ...] | None, k: int, device) -> torch.Tensor:
    """(k,) bool."""
    mask = torch.zeros(k, dtype=torch.bool, device=device)
    if senses is None:
        return mask.fill_(True)
    return mask.index_fill_(0, torch.tensor(senses, device=device), True)


def _renormalise(contextualization: torch.Tensor, sense_mask: torch.Tensor) -> torch.Tensor:
    """Divide each (sense, query) row of the selected senses by its sum (rows summing to 0 stay 0)."""
    total = contextualization.sum(-1, keepdim=True)
    tiny = torch.finfo(contextualization.dtype).tiny
    renormed = contextualization / total.clamp_min(tiny)
    return torch.where(sense_mask[None, :, None, None], renormed, contextualization)


class _Op:
    stage: ClassVar[str] = ""


class _SenseOp(_Op):
    """senses of a token (all of them, or at some positions) -> transform(senses)."""

    stage = "senses"

    def __init__(self, token_id, senses, positions, transform):
        self.token_id, self.senses, self.positions, self.transform = token_id, senses, positions, transform

    def __call__(self, senses, token_ids, positions):
        """senses (b, k, s, d), token_ids and positions (b, s) -> new senses (b, k, s, d).

        Only the occurrences are transformed; the rest is one copy of the input."""
        hit = _select(token_ids, positions, self.token_id, self.positions)  # (b, s)
        batch_index, seq_index = hit.nonzero(as_tuple=True)  # h occurrences
        if batch_index.numel() == 0:
            return senses
        old = senses[batch_index, :, seq_index]  # (h, k, d)
        new = self.transform(old)
        if self.senses is not None:
            keep = ~_sense_mask(self.senses, senses.shape[1], senses.device)
            new = torch.where(keep[None, :, None], old, new)
        out = senses.clone(memory_format=torch.contiguous_format)
        out[batch_index, :, seq_index] = new.to(senses.dtype)
        return out


class _ScaleContextualizationOp(_Op):
    stage = "contextualization"

    def __init__(self, token_id, senses, positions, factor, renormalize):
        self.token_id, self.senses, self.positions = token_id, senses, positions
        self.factor, self.renormalize = factor, renormalize

    def __call__(self, contextualization, source_ids, source_positions, query_positions):
        """contextualization (b, k, s, t); source ids / positions (b, t) -> (b, k, s, t)."""
        hit = _select(source_ids, source_positions, self.token_id, self.positions)  # (b, t)
        if not bool(hit.any()):
            return contextualization
        sense_mask = _sense_mask(self.senses, contextualization.shape[1], contextualization.device)
        where = hit[:, None, None, :] & sense_mask[None, :, None, None]
        out = torch.where(where, contextualization * self.factor, contextualization)
        return _renormalise(out, sense_mask) if self.renormalize else out


class _ReplaceContextualizationOp(_Op):
    stage = "contextualization"

    def __init__(self, senses, value, weights, query_positions, source_positions, token_id,
                 renormalize):
        self.senses, self.value, self.weights = senses, value, weights
        self.query_positions, self.source_positions = query_positions, source_positions
        self.token_id, self.renormalize = token_id, renormalize

    def __call__(self, contextualization, source_ids, source_positions, query_positions):
        # causal entries between real tokens only: padding (position -1) never gets weight
        causal = ((source_positions[:, None, :] <= query_positions[:, :, None])
                  & (source_positions >= 0)[:, None, :])  # (b, s, t)
        queries = _select(query_positions, query_positions, None, self.query_positions)  # (b, s)
        sources = _select(source_ids, source_positions, self.token_id, self.source_positions)
        where = causal & queries[:, :, None] & sources[:, None, :]
        if self.weights is not None:
            n_q, n_s = self.weights.shape
            where = where & (query_positions < n_q)[:, :, None] & (source_positions < n_s)[:, None, :]
            w = self.weights.to(contextualization.device, contextualization.dtype)
            new = w[query_positions.clamp(max=n_q - 1)[:, :, None],
                    source_positions.clamp(max=n_s - 1)[:, None, :]][:, None]  # (b, 1, s, t)
        else:
            new = torch.tensor(self.value, dtype=contextualization.dtype,
                               device=contextualization.device)
        sense_mask = _sense_mask(self.senses, contextualization.shape[1], contextualization.device)
        out = torch.where(where[:, None] & sense_mask[None, :, None, None], new, contextualization)
        return _renormalise(out, sense_mask) if self.renormalize else out


class CompiledEdits(Intervention):
    """An edit set bound to one model: applies its edits, in order, to the senses and the
    contextualization it is handed, always returning new tensors. Holds no mutable state, so
    it is safe to share across threads."""

    def __init__(self, edit_set: EditSet, ops: list[_Op]):
        self.edit_set = edit_set
        self.ops = ops
        self.sense_ops = [op for op in ops if op.stage == "senses"]
        self.contextualization_ops = [op for op in ops if op.stage == "contextualization"]

    def on_senses(self, senses, token_ids, positions):
        for op in self.sense_ops:
            senses = op(senses, token_ids, positions)
        return senses

    def sense_sites(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(b, s) bool: the tokens whose senses `on_senses` may change (the union of the sense
        edits' selections). Every sense edit is pointwise (it looks only at a token's own id and
        position), so `on_senses` applied to just these tokens gives the same vectors;
        `ContextSession` uses this to update the weighted sum without copying all senses."""
        sites = torch.zeros_like(token_ids, dtype=torch.bool)
        for op in self.sense_ops:
            sites |= _select(token_ids, positions, op.token_id, op.positions)
        return sites

    def on_contextualization(self, contextualization, source_ids, source_positions,
                             query_positions):
        for op in self.contextualization_ops:
            contextualization = op(contextualization, source_ids, source_positions, query_positions)
        return contextualization

    def __repr__(self) -> str:
        return f"CompiledEdits({len(self.ops)} edits)"


# ----------------------------------------------------------------------------------------------
# Edit sets
# ----------------------------------------------------------------------------------------------

_SET_FIELDS = ("version", "edits", "name", "description", "provenance")


def _check_provenance(value: Any) -> dict[str, Any] | None:
    """Where a learned edit set came from (`edit.finetune`): a JSON object of finite values."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise EditError(f"'provenance' must be a JSON object (string keys), got {_show(value)}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise EditError(f"'provenance' must hold only JSON values (finite numbers): {err}") from None
    return value


@dataclass
class EditSet:
    """Edits applied in order; JSON: {"version": 1, "edits": [...], "name"?, "description"?,
    "provenance"?} (provenance: a JSON object saying where a learned edit set came from)."""

    edits: list[Edit] = field(default_factory=list)
    version: int = SCHEMA_VERSION
    name: str | None = None
    description: str | None = None
    provenance: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.version) or self.version != SCHEMA_VERSION:
            raise EditError(f"edit-spec version {_show(self.version)} is not supported; this "
                            f"workbench reads version {SCHEMA_VERSION}")
        self.edits = list(self.edits)
        check_edit_count(len(self.edits), EditLimitError)
        for i, edit in enumerate(self.edits):
            if not isinstance(edit, Edit):
                raise EditError(f"edit {i} is a {type(edit).__name__}, not an edit "
                                "(use EditSet.from_dict for JSON objects)")
        self.name = _check_note(self.name, "name")
        self.description = _check_note(self.description, "description")
        self.provenance = _check_provenance(self.provenance)

    def __len__(self) -> int:
        return len(self.edits)

    def __iter__(self) -> Iterator[Edit]:
        return iter(self.edits)

    def __add__(self, other: EditSet) -> EditSet:
        return EditSet(self.edits + list(other.edits), name=self.name, description=self.description,
                       provenance=self.provenance)

    # -- JSON --

    @classmethod
    def from_dict(cls, data: Any) -> EditSet:
        if not isinstance(data, dict):
            raise EditError(f"an edit set must be a JSON object like {{\"version\": {SCHEMA_VERSION}, "
                            f"\"edits\": [...]}}, got {_show(data)}")
        unknown = [k for k in data if k not in _SET_FIELDS]
        if unknown:
            raise EditError(f"unknown field {_show(unknown[0])} in the edit set; accepted fields: "
                            f"{', '.join(_SET_FIELDS)}")
        if "version" not in data:
            raise EditError(f"the edit set lacks \"version\" (this workbench reads version "
                            f"{SCHEMA_VERSION})")
        if "edits" not in data:
            raise EditError("the edit set lacks \"edits\" (a list of edits)")
        version = data["version"]
        if not _is_int(version) or version != SCHEMA_VERSION:
            raise EditError(f"edit-spec version {_show(version)} is not supported; this workbench "
                            f"reads version {SCHEMA_VERSION}")
        raw = data["edits"]
        if not isinstance(raw, list):
            raise EditError(f"\"edits\" must be a list of edits, got {_show(raw)}")
        check_edit_count(len(raw), EditLimitError)  # before parsing any: 700k edits would take minutes
        edits = []
        for i, item in enumerate(raw):
            try:
                edits.append(edit_from_dict(item))
            except EditError as err:
                kind = item.get("kind") if isinstance(item, dict) else None
                label = f"edit {i} ({kind})" if isinstance(kind, str) and kind in EDIT_KINDS else f"edit {i}"
                raise EditError(f"{label}: {err}") from None
        try:
            return cls(edits, version, data.get("name"), data.get("description"),
                       data.get("provenance"))
        except EditError as err:
            raise EditError(f"edit set: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.name is not None:
            out["name"] = self.name
        if self.description is not None:
            out["description"] = self.description
        if self.provenance is not None:
            out["provenance"] = self.provenance
        out["edits"] = [e.to_dict() for e in self.edits]
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> EditSet:
        if isinstance(text, (str, bytes)):
            size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "replace"))
            check_edit_set_bytes(size, EditLimitError)
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise EditError(f"the edit set is not UTF-8 text: {err}") from None
        if not isinstance(text, str):
            raise EditError(f"expected JSON text, got {type(text).__name__}")
        try:
            data = parse_json(text)
        except json.JSONDecodeError as err:
            raise EditError(f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        except RecursionError:
            raise EditError("malformed JSON: nested too deeply") from None
        return cls.from_dict(data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EditSet:
        try:
            check_edit_set_bytes(Path(path).stat().st_size, EditLimitError)  # before reading it
            text = read_prefix(path, MAX_EDIT_SET_BYTES)  # a device (/dev/zero) has no size
        except OSError as err:
            raise EditError(f"cannot read the edits file {str(path)!r}: {err.strerror or err}") from None
        try:
            return cls.from_json(text)
        except EditError as err:
            raise EditError(f"{path}: {err}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    # -- against a model --

    def _checked(self, ctx: _Context) -> list[dict[str, Any]]:
        resolved = []
        for i, edit in enumerate(self.edits):
            try:
                resolved.append(edit.check(ctx))
            except EditError as err:
                raise EditError(f"edit {i} ({edit.kind}): {err}") from None
        return resolved

    def validate(self, tokenizer: Tokenizer | None, config: ModelConfig) -> None:
        """Check words (one token each, in the vocabulary), sense indices (< k), positions
        (< n_positions) and vector lengths (d) against a model; raise EditError if any fails."""
        self._checked(_Context(tokenizer, config))

    def compile(self, model: Backpack, tokenizer: Tokenizer | None) -> CompiledEdits:
        """Validate against `model` and bind: the returned Intervention applies the edits."""
        if not model.config.is_backpack:
            raise EditError("this model is a Transformer twin: it has no senses to edit")
        ctx = _Context(tokenizer, model.config, model)
        ops = []
        for i, (edit, r) in enumerate(zip(self.edits, self._checked(ctx))):
            try:
                ops.append(edit.build(ctx, r))
            except EditError as err:
                raise EditError(f"edit {i} ({edit.kind}): {err}") from None
        return CompiledEdits(self, ops)

    def describe(self) -> list[str]:
        return [e.describe() for e in self.edits]


def as_edit_set(edits: Any) -> EditSet:
    """EditSet | dict | JSON text | path | Edit | list of edits / edit dicts -> EditSet."""
    if isinstance(edits, EditSet):
        return edits
    if isinstance(edits, Edit):
        return EditSet([edits])
    if isinstance(edits, dict):
        return EditSet.from_dict(edits)
    if isinstance(edits, (str, bytes)):
        return EditSet.from_json(edits)
    if isinstance(edits, os.PathLike):
        return EditSet.load(edits)
    if isinstance(edits, Iterable):
        return EditSet.from_dict({"version": SCHEMA_VERSION,
                                  "edits": [e.to_dict() if isinstance(e, Edit) else e for e in edits]})
    raise EditError(f"cannot read edits from a {type(edits).__name__}")


def to_intervention(edits: Any, model: Backpack, tokenizer: Tokenizer | None
                    ) -> Intervention | None:
    """None -> None; an Intervention as is; anything `as_edit_set` reads -> compiled for `model`."""
    if edits is None:
        return None
    if isinstance(edits, Intervention):
        return edits
    return as_edit_set(edits).compile(model, tokenizer)


def check_edited_logits(logits: torch.Tensor) -> torch.Tensor:
    """`logits` under edits, or EditError when they hold NaN or infinity: each number of an edit
    is bounded (limits.MAX_EDIT_NUMBER), but edits compound (several scalings of one word
    multiply), and a NaN must never be shown as a result."""
    if not bool(torch.isfinite(logits).all()):
        raise EditError("the edits make the model's numbers overflow (NaN or infinite logits): "
                        "their factors compound, several edits of one word multiplying; use "
                        "smaller factors or fewer edits of the same word")
    return logits


__all__ = ["SCHEMA_VERSION", "AblateSense", "AddSense", "CompiledEdits", "EDIT_KINDS", "Edit", "EditError",
           "EditSet", "KnowledgeEdit", "ReplaceContextualization", "ReplaceSense",
           "ScaleContextualization", "ScaleSense", "SenseRef", "as_edit_set",
           "check_edited_logits", "edit_from_dict", "fields_of_kind", "to_intervention"]
