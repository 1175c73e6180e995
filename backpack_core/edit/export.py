"""Ship an edited model, and share edit sets as packs.

Exporting bakes an edit set into a new model directory. Every edit that is a property of the
model, not of one text, becomes a table over token ids that the model then carries
(`backpack_core.model.backpack.EditOverrides`, sized by `config.json`'s `edit_overrides`, stored
in model.safetensors as `edit_overrides.*`):

- sense edits (ablate, scale, replace, knowledge edit, add_sense: any kind that compiles to a
  per-token change of senses) -> the edited tokens' sense rows, computed by applying the
  compiled edit set to those tokens' senses: (n, k, d) rows and an (n, k) mask of the rows that
  changed;
- contextualization edits that scale the weight on a word's senses (scale_contextualization,
  or a replace_contextualization setting a word's weights to 0) -> per-token factors (m, k).

Which kind does what is not listed here: each edit is compiled on its own and probed (which
tokens its sense edit touches; its contextualization change on a row of ones and of twos, at
the first and the last position), so a new kind that compiles to an `Intervention` is exported
when it is per-token, and refused when it is not. Refused, naming the edit and why: edits
restricted to text positions, edits that renormalise rows (the new weights depend on the whole
text), edits that set weights to a value other than 0 (not a scaling).

The exported directory is a model directory like any other (config.json, model.safetensors,
tokenizer files), plus `edit_pack.json` (the edits, as a pack made on the base model) and
`README.md` (a model card: the edits, their provenance, the base model's fingerprint). The base
model's files are only read. Its logits equal the in-session edited model's (float32, 1e-5).

A pack is an edit set (JSON) with a "pack" object recording what it was made on:

    {"version": 1, "name": "<title>", "description": "...",
     "pack": {"format": 1, "base_model": "<weights_fingerprint>", "base_model_name": "...",
              "tokenizer": "<tokenizer_identity>", "created": "2026-12-02T15:00:00Z"},
     "edits": [...]}

`check_pack` refuses a pack made on another model unless the tokenizer is the same and the
caller asks to apply it anyway; then every word is re-resolved and the edits that no longer fit
are listed and left out. Edit sets without "pack" (every file made before packs) load as before.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from backpack_core.common.corpus import tokenizer_identity
from backpack_core.common.files import write_text_atomic
from backpack_core.edit.specs import EditError, EditSet, as_edit_set
from backpack_core.model.backpack import Backpack
from backpack_core.model.fingerprint import weights_fingerprint
from backpack_core.model.loading import save_backpack

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.tokenizer import Tokenizer

PACK_FORMAT = 1
PACK_FILE = "edit_pack.json"
CARD_FILE = "README.md"
OVERRIDES_PREFIX = "edit_overrides."


class ExportError(EditError):
    """An edit set cannot become part of a model, or the export cannot be written."""


class PackError(EditError):
    """An edit pack does not fit this model (another model or tokenizer); says what to do."""


# ----------------------------------------------------------------------------------------------
# Packs
# ----------------------------------------------------------------------------------------------

def _unwrap(model) -> Backpack:
    """The plain `Backpack` of a transformers `BackpackLM` (or the model itself)."""
    return getattr(model, "backpack", model)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_pack(edits: Any, model: Backpack, tokenizer: Tokenizer, title: str | None = None,
              description: str | None = None, base_model_name: str | None = None) -> EditSet:
    """The edit set as a pack made on `model`: its edits, a title (the edit set's `name`), a
    description, and the fingerprint of `model` and of its tokenizer."""
    model = _unwrap(model)
    edit_set = as_edit_set(edits)
    pack = {"format": PACK_FORMAT, "base_model": weights_fingerprint(model),
            "tokenizer": tokenizer_identity(tokenizer), "created": _now()}
    if base_model_name:
        pack["base_model_name"] = base_model_name
    earlier = (edit_set.pack or {}).get("base_model")
    if earlier and earlier != pack["base_model"]:  # a pack made elsewhere, applied anyway
        pack["adapted_from"] = earlier
    return EditSet(list(edit_set.edits), name=title if title is not None else edit_set.name,
                   description=description if description is not None else edit_set.description,
                   provenance=edit_set.provenance, pack=pack)


def _pack_fields(pack: dict[str, Any]) -> tuple[str, str]:
    """(base model fingerprint, tokenizer identity) of a pack's "pack" object, checked."""
    if pack.get("format") != PACK_FORMAT:
        raise PackError(f"edit pack format {pack.get('format')!r} is not supported; this "
                        f"workbench reads format {PACK_FORMAT}")
    values = []
    for name in ("base_model", "tokenizer"):
        value = pack.get(name)
        if not (isinstance(value, str) and len(value) == 64
                and all(c in "0123456789abcdef" for c in value)):
            raise PackError(f"the edit pack's '{name}' must be a sha256 (64 hex digits), got "
                            f"{value!r}")
        values.append(value)
    return values[0], values[1]


@dataclass
class PackCheck:
    """What `check_pack` decided: the edits to apply, and those left out (apply-anyway only)."""

    edit_set: EditSet
    same_model: bool  # made on this very model (or a plain edit set, which records nothing)
    unresolved: list[dict[str, Any]] = field(default_factory=list)  # {"index", "edit", "reason"}

    def to_dict(self) -> dict[str, Any]:
        return {"same_model": self.same_model, "edits": len(self.edit_set),
                "unresolved": self.unresolved}


def check_pack(edits: Any, model: Backpack, tokenizer: Tokenizer, apply_anyway: bool = False
               ) -> PackCheck:
    """An edit set or pack, checked against the model it is about to be applied to.

    A plain edit set (no "pack") and a pack made on this model pass as they are. A pack made on
    another model is refused (PackError) when its tokenizer differs, and otherwise unless
    `apply_anyway`: then each edit is compiled on its own against this model (every word
    re-resolved with this tokenizer, sense indices and vector lengths checked) and those that
    fail are listed in `unresolved` and left out."""
    model = _unwrap(model)
    edit_set = as_edit_set(edits)
    if edit_set.pack is None:
        return PackCheck(edit_set, same_model=True)
    base, tokens = _pack_fields(edit_set.pack)
    title = repr(edit_set.name) if edit_set.name else "(untitled)"
    if base == weights_fingerprint(model):
        return PackCheck(edit_set, same_model=True)
    made_on = edit_set.pack.get("base_model_name")
    made_on = f"{made_on!r}, fingerprint {base[:12]}" if made_on else f"fingerprint {base[:12]}"
    if tokens != tokenizer_identity(tokenizer):
        raise PackError(f"the edit pack {title} was made on another model ({made_on}) with another "
                        f"tokenizer ({tokens[:12]}; this model's is "
                        f"{tokenizer_identity(tokenizer)[:12]}): its words would name other "
                        "tokens here, so it is refused")
    if not apply_anyway:
        raise PackError(f"the edit pack {title} was made on another model ({made_on}; this one is "
                        f"{weights_fingerprint(model)[:12]}). The tokenizer is the same: ask to "
                        "apply it anyway (--apply-anyway; 'Apply anyway' in the app) to re-resolve "
                        "every word and leave out the edits that do not fit")
    kept, unresolved = [], []
    for i, edit in enumerate(edit_set.edits):
        try:
            EditSet([edit]).compile(model, tokenizer)
        except EditError as err:  # named as edit 0 of its one-edit set: the reason alone
            reason = str(err).removeprefix(f"edit 0 ({edit.kind}): ")
            unresolved.append({"index": i, "edit": edit.describe(), "reason": reason})
        else:
            kept.append(edit)
    return PackCheck(EditSet(kept, name=edit_set.name, description=edit_set.description,
                             provenance=edit_set.provenance, pack=edit_set.pack),
                     same_model=False, unresolved=unresolved)


# ----------------------------------------------------------------------------------------------
# Edits -> override tables
# ----------------------------------------------------------------------------------------------

@dataclass
class OverrideTables:
    """The tables of `EditOverrides` (float32, on CPU): n tokens with sense rows, m with scales.

    sense_token_ids (n,) sorted, senses (n, k, d), sense_mask (n, k) bool,
    scale_token_ids (m,) sorted, scales (m, k)."""

    sense_token_ids: torch.Tensor
    senses: torch.Tensor
    sense_mask: torch.Tensor
    scale_token_ids: torch.Tensor
    scales: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {"sense_tokens": int(self.sense_token_ids.numel()),
                "contextualization_tokens": int(self.scale_token_ids.numel())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {OVERRIDES_PREFIX + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


def _label(i: int, edit) -> str:
    return f"edit {i} ({edit.kind}: {edit.describe()})"


def _field_refusal(edit) -> str | None:
    """Why an edit's fields make it a property of a text rather than of the model (or None)."""
    for name in ("positions", "query_positions", "source_positions"):
        value = getattr(edit, name, None)
        if value is not None:
            return (f"its '{name}' restricts it to text positions {list(value)}; an exported "
                    "model applies an edit to every occurrence of a word. Leave out the "
                    "positions to export it")
    if getattr(edit, "weights", None) is not None:
        return ("its 'weights' are a matrix over text positions; an exported model can only "
                "scale the weight on a word")
    if getattr(edit, "renormalize", False):
        return ("it renormalises rows, so each new weight depends on the whole text's row sum, "
                "which a per-word table cannot reproduce exactly; export it without "
                "'renormalize'")
    return None


def _sense_sites(compiled, model: Backpack) -> torch.Tensor:
    """(vocab,) bool: the tokens whose senses the compiled edits change; ValueError unless
    they, and their new senses, are the same at the first and at the last text position."""
    last = model.config.n_positions - 1
    ids = torch.arange(model.config.vocab_size, device=model.wte.weight.device)[None]  # (1, V)
    sites = compiled.sense_sites(ids, torch.zeros_like(ids))[0]
    if not torch.equal(compiled.sense_sites(ids, torch.full_like(ids, last))[0], sites):
        raise ValueError("which tokens it changes depends on the text position")
    touched = ids[:, sites]  # (1, n)
    senses = rearrange(model.sense_vectors(touched), "1 n k d -> 1 k n d")
    first = compiled.on_senses(senses, touched, torch.zeros_like(touched))
    if not torch.equal(compiled.on_senses(senses, touched, torch.full_like(touched, last)), first):
        raise ValueError("the senses it gives depend on the text position")
    return sites


def _scale_factors(compiled, model: Backpack) -> torch.Tensor:
    """(vocab, k): the factor the compiled edits multiply alpha[l, i, j] by, per token of j and
    sense l; ValueError if their change is not such a per-token scaling. Probed on one query
    row over every token as a source: ones and twos (linear?), at the first position and at the
    last (position-free?)."""
    k, vocab, last = model.config.num_senses, model.config.vocab_size, model.config.n_positions - 1
    device, dtype = model.wte.weight.device, model.wte.weight.dtype
    ids = torch.arange(vocab, device=device)[None]  # (1, V)
    ones = torch.ones(1, k, 1, vocab, device=device, dtype=dtype)

    def probe(value: float, source_at: int, query_at: int) -> torch.Tensor:
        sources = torch.full_like(ids, source_at)
        query = torch.full((1, 1), query_at, device=device, dtype=torch.long)
        out = compiled.on_contextualization(ones * value, ids, sources, query)
        return rearrange(out, "1 k 1 v -> v k")

    factors = probe(1.0, 0, 0)
    if not torch.allclose(probe(2.0, 0, 0), 2 * factors, rtol=1e-6, atol=0):
        raise ValueError("it sets contextualization weights (to a value other than 0) rather "
                         "than scaling them; a model carries only per-word scalings")
    if not (torch.equal(probe(1.0, last, last), factors)
            and torch.equal(probe(1.0, 0, last), factors)):
        raise ValueError("its change depends on the text positions")
    return factors.float()


def override_tables(model: Backpack, tokenizer: Tokenizer, edits: Any) -> OverrideTables:
    """The tables that make `model` carry `edits` (on top of what it already carries).

    Each edit is checked on its own (fields, then probes; ExportError naming it); then the
    sense rows are the whole edit set, applied in order, to the touched tokens' senses, and
    the scales the product of the edits' factors."""
    model = _unwrap(model)
    edit_set = as_edit_set(edits)
    compiled = edit_set.compile(model, tokenizer)  # validation: EditError per edit
    vocab, device = model.config.vocab_size, model.wte.weight.device
    touched = torch.zeros(vocab, dtype=torch.bool, device=device)
    factors = torch.ones(vocab, model.config.num_senses, device=device)
    carried = model.edit_overrides
    if carried is not None and carried.scale_token_ids.numel():
        factors[carried.scale_token_ids] = carried.scales.float()
    if carried is not None:
        touched[carried.sense_token_ids] = True
    with torch.no_grad():
        for i, edit in enumerate(edit_set.edits):
            reason = _field_refusal(edit)
            if reason is None:
                one = EditSet([edit]).compile(model, tokenizer)
                try:
                    touched |= _sense_sites(one, model)
                    factors *= _scale_factors(one, model)
                except ValueError as err:
                    reason = str(err)
            if reason is not None:
                raise ExportError(f"{_label(i, edit)} cannot be exported: {reason}")

        ids = touched.nonzero().flatten()  # sorted
        raw = model.sense_network(model.wte(ids))  # (n, k, d): the network alone
        current = model.sense_vectors(ids)  # with the rows the model already carries
        edited = compiled.on_senses(rearrange(current, "n k d -> 1 k n d"), ids[None],
                                    torch.zeros_like(ids)[None])
        edited = rearrange(edited, "1 k n d -> n k d")
        mask = (edited != raw).any(-1)  # (n, k): rows that differ from the network's
        keep = mask.any(-1)
        scaled = (factors != 1).any(-1).nonzero().flatten()
    if not (bool(torch.isfinite(edited[keep]).all()) and bool(torch.isfinite(factors).all())):
        raise ExportError("the edits make the model's numbers overflow (infinite sense vectors or "
                          "scales): their factors compound, several edits of one word "
                          "multiplying; use smaller factors or fewer edits of the same word")
    return OverrideTables(sense_token_ids=ids[keep].cpu(), senses=edited[keep].float().cpu(),
                          sense_mask=mask[keep].cpu(), scale_token_ids=scaled.cpu(),
                          scales=factors[scaled].cpu())


def edited_model(model: Backpack, tables: OverrideTables) -> Backpack:
    """A Backpack with `model`'s weights (shared, not copied) carrying `tables` instead of
    whatever `model` carried. `model` itself is not changed."""
    config = dataclasses.replace(model.config, edit_overrides=tables.sizes())
    device = model.wte.weight.device
    state = {name: t for name, t in model.state_dict().items()
             if not name.startswith(OVERRIDES_PREFIX)}
    state.update({name: t.to(device) for name, t in tables.state_dict().items()})
    with torch.device("meta"):
        edited = Backpack(config)
    edited.load_state_dict(state, strict=True, assign=True)
    edited.dedup_senses = model.dedup_senses
    return edited.train(model.training)


# ----------------------------------------------------------------------------------------------
# The exported directory
# ----------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    """What `export_edited_model` wrote."""

    directory: Path
    files: dict[str, int]  # name -> bytes
    sizes: dict[str, int]  # sense_tokens, contextualization_tokens
    table_bytes: int  # of the override tables alone
    base_fingerprint: str
    fingerprint: str  # of the exported model
    edits: list[str]  # descriptions, in order
    unresolved: list[dict[str, Any]]  # left out (a pack applied anyway)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "files": self.files,
                "total_bytes": self.total_bytes, "table_bytes": self.table_bytes,
                "edit_overrides": self.sizes, "base_fingerprint": self.base_fingerprint,
                "fingerprint": self.fingerprint, "edits": self.edits,
                "unresolved": self.unresolved}


def _check_out(out: Path) -> None:
    if out.is_file() or out.is_symlink():
        raise ExportError(f"{str(out)!r} exists and is not a directory; choose a new directory")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{str(out)!r} already holds files; export into a new (or empty) "
                          "directory: nothing is overwritten")
    if out.parent.exists() and not out.parent.is_dir():
        raise ExportError(f"the parent of {str(out)!r} is a file, not a directory")


def model_card(pack: EditSet, tables: OverrideTables, base_name: str, fingerprint: str,
               unresolved: list[dict[str, Any]], tokenizer) -> str:
    """README.md of an exported model: the edits and where they come from, the base model."""
    info = pack.pack or {}
    lines = [f"# {pack.name or 'An edited Backpack model'}", ""]
    if pack.description:
        lines += [pack.description, ""]
    lines += [
        f"A Backpack language model with {len(pack)} edit(s) built in, exported by Backpack "
        "Workbench (`python -m analyses.export_edited`). Its forward pass applies the edits "
        "to every occurrence of the edited words; the weights of the base model are unchanged.",
        "", "## Base model", "",
        f"- source: `{base_name}`",
        f"- fingerprint (sha256 of config and weights): `{info.get('base_model', '')}`",
        f"- tokenizer (sha256 of its definition): `{tokenizer_identity(tokenizer)}`",
        f"- this model's fingerprint: `{fingerprint}`",
        "", "## Edits (applied in order)", ""]
    for i, edit in enumerate(pack.edits):
        note = getattr(edit, "note", None)
        lines.append(f"{i + 1}. {edit.describe()}" + (f" — {note}" if note else ""))
        lines.append(f"   `{json.dumps(edit.to_dict(), ensure_ascii=False)}`")
    if not pack.edits:
        lines.append("(none: this model computes exactly what the base model computes)")
    if unresolved:
        lines += ["", "Left out (the pack was made on another model and applied anyway; these "
                  "did not fit this one):", ""]
        lines += [f"- edit {u['index']}: {u['edit']}: {u['reason']}" for u in unresolved]
    lines += ["", "## Provenance", ""]
    if pack.provenance:  # where a learned edit set came from (edit.finetune)
        lines.append("- the edit set's own record of where it came from: "
                     f"`{json.dumps(pack.provenance, ensure_ascii=False)}`")
    if info.get("adapted_from"):
        lines.append(f"- the edit pack was made on another model (fingerprint "
                     f"`{info['adapted_from']}`) with the same tokenizer, and applied to the base "
                     "model anyway: its words were re-resolved here")
    lines += [
        f"- exported {info.get('created', '')} from the edit set "
        + (repr(pack.name) if pack.name else "(untitled)")
        + f"; `{PACK_FILE}` holds it as a pack made on the base model (to apply the same edits to the "
        f"base model in a session: `python -m analyses.steer --model <base> --edits {PACK_FILE} "
        "--text ...`)",
        f"- `config.json` `edit_overrides`: {tables.sizes()['sense_tokens']} token(s) with "
        f"replaced sense rows ({int(tables.sense_mask.sum())} rows), "
        f"{tables.sizes()['contextualization_tokens']} token(s) with scaled contextualization "
        f"weights; the tables are `edit_overrides.*` in `model.safetensors` "
        f"({tables.nbytes()} bytes)",
        "", "## Use", "", "```python",
        "import backpack_core  # registers the model with transformers' Auto classes",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(DIR)",
        "tokenizer = AutoTokenizer.from_pretrained(DIR)",
        "# or: model, tokenizer = backpack_core.load_backpack(DIR)", "```", ""]
    return "\n".join(lines)


def export_edited_model(model: Backpack, tokenizer: Tokenizer, edits: Any,
                        out: str | os.PathLike, base_name: str = "the loaded model",
                        title: str | None = None, description: str | None = None,
                        apply_anyway: bool = False) -> ExportResult:
    """Write a model directory at `out` (new or empty; parents are made) whose forward pass
    applies `edits`.

    `edits`: anything `as_edit_set` reads; a pack is checked first (`check_pack`). The model
    must be in float32 (its weights are written as loaded). Files: config.json (with
    `edit_overrides`), model.safetensors (the base weights and the tables), tokenizer files,
    edit_pack.json, README.md. Written to a temporary directory beside `out`, then renamed."""
    model = _unwrap(model)
    out = Path(out).expanduser()
    _check_out(out)
    if model.wte.weight.dtype != torch.float32:
        raise ExportError(f"the model is loaded in {str(model.wte.weight.dtype).removeprefix('torch.')};"
                          " load it in float32 to export it (its weights are written as loaded)")
    checked = check_pack(edits, model, tokenizer, apply_anyway=apply_anyway)
    tables = override_tables(model, tokenizer, checked.edit_set)
    edited = edited_model(model, tables)
    source = checked.edit_set
    pack = make_pack(source, model, tokenizer,
                     title=title if title is not None else source.name,
                     description=description if description is not None else source.description,
                     base_model_name=base_name)
    fingerprint = weights_fingerprint(edited)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_backpack(edited, tokenizer, tmp, extra_config={
            "edited_from": {"base_model": pack.pack["base_model"], "base_model_name": base_name,
                            "edits": len(pack)}})
        write_text_atomic(tmp / PACK_FILE, pack.to_json() + "\n")
        write_text_atomic(tmp / CARD_FILE, model_card(pack, tables, base_name, fingerprint,
                                                      checked.unresolved, tokenizer))
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except OSError as err:
        raise ExportError(f"cannot write the exported model to {str(out)!r}: "
                          f"{err.strerror or err}") from None
    finally:  # whatever failed, no half-written directory is left behind
        shutil.rmtree(tmp, ignore_errors=True)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return ExportResult(out, files, tables.sizes(), tables.nbytes(), pack.pack["base_model"],
                        fingerprint, pack.describe(), checked.unresolved)


__all__ = ["CARD_FILE", "PACK_FILE", "PACK_FORMAT", "ExportError", "ExportResult",
           "OverrideTables", "PackCheck", "PackError", "check_pack", "edited_model",
           "export_edited_model", "make_pack", "model_card", "override_tables"]
