"""Apply an edit set to a text and compare the next-word prediction before and after.

    python -m analyses.steer --text "The MacBook is made by" --edits edits.json [--top 10]
        [--position -1] [--words " Apple" " HP"] [--generate 30 [--sample --seed 0]] [--json]

JSON output: {"before": [{"token", "prob"}, ...], "after": [...] (most probable first),
"kl": KL(before || after) in nats, "entered"/"left": tokens entering / leaving the top list,
"words": log-probability changes of --words, "edits": the edit set, "position", "token"} and,
with --generate, "generation": {"prompt", "before", "after"} (same seed for both).
An invalid edits file ends with a one-paragraph message and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses import _cli


def build_parser():
    p = _cli.parser("python -m analyses.steer", __doc__.strip().splitlines()[0])
    p.add_argument("--text", required=True, help="the text (prompt) to read")
    _cli.add_long_text(p)
    p.add_argument("--edits", required=True,
                   help="edit set: a JSON file (see docs/API.md), or inline JSON starting with '{'")
    p.add_argument("--top", type=int, default=10, help="most probable words to list (default 10)")
    p.add_argument("--position", type=int, default=-1,
                   help="query position (default -1: the word after the text)")
    p.add_argument("--words", nargs="*", default=[],
                   help='words (one token each, e.g. " HP") whose log-probability change to report')
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also generate N tokens without and with the edits (imports transformers)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for both runs")
    _cli.add_apply_anyway(p)
    return p


def render(result: dict, describe: list[str]) -> str:
    lines = [f"edits ({len(describe)}):"] + [f"  {i}. {d}" for i, d in enumerate(describe)]
    lines += ["", f"prediction after position {result['position']} ({result['token']!r}); "
                  f"KL(before || after) = {result['kl']:.6g} nats", "",
              f"{'before':<30} {'after':<30}"]
    for b, a in zip(result["before"], result["after"]):
        lines.append(f"{b['token']!r:<20}{b['prob']:>9.4f}  {a['token']!r:<20}{a['prob']:>9.4f}")
    if result["entered"] or result["left"]:
        lines += ["", f"entered the top: {result['entered']}", f"left the top:    {result['left']}"]
    if result["words"]:
        lines += ["", f"{'word':<20} {'logp before':>12} {'logp after':>12} {'change':>10}"]
        for w in result["words"]:
            lines.append(f"{w['token']!r:<20} {w['logprob_before']:>12.4f} "
                         f"{w['logprob_after']:>12.4f} {w['delta']:>+10.4f}")
    if "generation" in result:
        g = result["generation"]
        lines += ["", f"generation before: {g['prompt']}{g['before']}",
                  f"generation after:  {g['prompt']}{g['after']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.generate < 0:
        raise ValueError(f"--generate must be >= 0, got {args.generate}")
    from backpack_core.edit.specs import EditSet

    # read the edits before loading the model: a bad file fails fast
    edits = (EditSet.from_json(args.edits) if args.edits.lstrip().startswith("{")
             else EditSet.load(args.edits))
    model, tokenizer = _cli.load(args)
    edits = _cli.checked_edits(edits, model, tokenizer, args)
    edits.validate(tokenizer, model.config)
    from backpack_core.interpret.session import ContextSession

    window = _cli.read_window(args, model, tokenizer, "steer")
    session = ContextSession(model, tokenizer, window.token_ids)
    result = session.compare(edits, position=args.position, top=args.top, words=args.words).to_dict()
    if args.generate:
        from backpack_core.edit.generation import generate_side_by_side

        result["generation"] = generate_side_by_side(
            model, tokenizer, args.text if window.whole else session.text, edits,
            max_new_tokens=args.generate,
            do_sample=args.sample, temperature=args.temperature, seed=args.seed)
    if args.json:
        _cli.print_json(result)
    else:
        print(render(result, edits.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="steer"))
