"""Export an edited model: a new model directory whose forward pass applies an edit set.

    python -m analyses.export_edited --edits edits.json --out DIR [--model M]
        [--title T] [--description D] [--apply-anyway] [--json]

DIR (new or empty) gets config.json (with "edit_overrides"), model.safetensors (the base
weights, unchanged, and the edits as tables over token ids), the tokenizer files,
edit_pack.json (the edits as a pack made on the base model) and README.md (a model card: the
edits, their provenance, the base model's fingerprint). It loads wherever a model directory
does: --model DIR in every command, load_backpack(DIR), and transformers'
AutoModelForCausalLM.from_pretrained(DIR) after `import backpack_core`.

Edits that are properties of a text rather than of the model (restricted to positions,
renormalising rows, setting weights to a value) are refused, naming the edit and why. A pack
made on another model is refused unless its tokenizer is the same and --apply-anyway is given
(then edits that do not fit are listed and left out). JSON output: {"directory", "files"
(name -> bytes), "total_bytes", "table_bytes", "edit_overrides", "base_fingerprint",
"fingerprint", "edits", "unresolved"}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses import _cli


def build_parser():
    p = _cli.parser("python -m analyses.export_edited", __doc__.strip().splitlines()[0])
    p.add_argument("--edits", required=True,
                   help="edit set or pack: a JSON file (see docs/API.md), or inline JSON starting "
                        "with '{'")
    p.add_argument("--out", required=True, help="the directory to write (new, or empty)")
    p.add_argument("--title", default=None, help="title of the edited model (default: the edit "
                   "set's name)")
    p.add_argument("--description", default=None,
                   help="description for the model card (default: the edit set's)")
    p.add_argument("--apply-anyway", action="store_true",
                   help="apply a pack made on another model with the same tokenizer")
    return p


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(result: dict) -> str:
    sizes = result["edit_overrides"]
    lines = [f"exported to {result['directory']}",
             f"  {sizes['sense_tokens']} token(s) with replaced sense rows, "
             f"{sizes['contextualization_tokens']} with scaled contextualization weights "
             f"({result['table_bytes']} bytes of tables)",
             f"  base model {result['base_fingerprint'][:16]}, exported model "
             f"{result['fingerprint'][:16]}", "", f"edits ({len(result['edits'])}):"]
    lines += [f"  {i}. {d}" for i, d in enumerate(result["edits"])]
    if result["unresolved"]:
        lines += ["", "left out (the pack did not fit this model):"]
        lines += [f"  edit {u['index']}: {u['edit']}: {u['reason']}" for u in result["unresolved"]]
    lines += ["", "files:"]
    lines += [f"  {name:<24} {_size(n):>10}" for name, n in result["files"].items()]
    lines.append(f"  {'total':<24} {_size(result['total_bytes']):>10}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from backpack_core.edit.specs import EditSet

    # read the edits before loading the model: a bad file fails fast
    edits = (EditSet.from_json(args.edits) if args.edits.lstrip().startswith("{")
             else EditSet.load(args.edits))
    model, tokenizer = _cli.load(args)
    from backpack_core.edit.export import export_edited_model

    result = export_edited_model(
        model, tokenizer, edits, args.out,
        base_name=args.model or "data/backpack-mini (the shipped model)",
        title=args.title, description=args.description, apply_anyway=args.apply_anyway)
    return _cli.emit(args, result.to_dict(), render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="export_edited"))
