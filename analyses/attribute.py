"""Exact attribution of one prediction to (source position, sense) terms.

    python -m analyses.attribute --text "The MacBook is made by" --target " Apple" [--position -1]
        [--edits edits.json] [--top 20] [--json] [--model DIR]   (or --target-id ID)

The logit of the target word w predicted at position i (the token after x_i) is the sum over
source positions j <= i and senses l of alpha[l, i, j] * (E_w . C(x_j)_l). JSON output:
{"logit": float, "contributions": [{"position", "token", "sense", "value"}, ...], ...}, the
values summing to "logit" (up to float rounding), plus "by_position" and "by_sense" totals.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses import _cli


def build_parser():
    p = _cli.parser("python -m analyses.attribute", __doc__.strip().splitlines()[0])
    p.add_argument("--text", required=True, help="the text to read")
    _cli.add_long_text(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", help='the predicted word, one token (e.g. " Apple", with its '
                                          "leading space)")
    target.add_argument("--target-id", type=int, help="the predicted token, by id")
    p.add_argument("--position", type=int, default=-1,
                   help="query position i (the prediction after token i); negative counts from "
                        "the end (default -1: the next word after the text)")
    p.add_argument("--edits", default=None,
                   help="attribute under an edit set: a JSON file, or inline JSON starting with '{'")
    p.add_argument("--top", type=int, default=20, help="rows of the table (default 20)")
    _cli.add_apply_anyway(p)
    return p


def render(attribution, top: int) -> str:
    a = attribution
    terms = a.contributions.numel()
    lines = [f"text: {len(a.tokens)} tokens; prediction after position {a.position} "
             f"({a.tokens[a.position]!r})",
             f"target {a.target_token!r} (id {a.target_id}): logit {a.logit:.6g} "
             f"= sum of {terms} terms ({a.total:.6g})", "",
             f"largest {min(top, terms)} contributions  alpha[l,i,j] * (E_w . C(x_j)_l)",
             f"{'pos':>5}  {'token':<16} {'sense':>5}  {'value':>11}"]
    for c in a.top(top):
        lines.append(f"{c.position:>5}  {c.token!r:<16} {c.sense:>5}  {c.value:>+11.5f}")
    lines += ["", "by source position"]
    for j, v in enumerate(a.by_position().tolist()):
        lines.append(f"{j:>5}  {a.tokens[j]!r:<16} {v:>+11.5f}")
    lines += ["", "by sense"]
    lines.append("  ".join(f"{l}: {v:+.4f}" for l, v in enumerate(a.by_sense().tolist())))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    target: str | int = args.target if args.target is not None else args.target_id
    edits = None
    if args.edits is not None:
        from backpack_core.edit.specs import EditSet

        edits = (EditSet.from_json(args.edits) if args.edits.lstrip().startswith("{")
                 else EditSet.load(args.edits))
    model, tokenizer = _cli.load(args)
    if edits is not None:
        edits = _cli.checked_edits(edits, model, tokenizer, args)
    from backpack_core.interpret.session import attribute

    window = _cli.read_window(args, model, tokenizer, "attribute")
    attribution = attribute(model, tokenizer, window.token_ids, target, args.position, edits=edits)
    if args.json:
        _cli.print_json(attribution.to_dict())
    else:
        print(render(attribution, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="attribute"))
