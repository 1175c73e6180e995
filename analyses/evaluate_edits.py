"""Evaluate an edit set over a dataset: blast radius, loss change, target-prompt success, by strength.

    python -m analyses.evaluate_edits --edits E.json (--data FILE | --dataset ptb|validation)
        [--prompts P.jsonl] [--strengths 0,0.5,1,2] [--max-tokens N] [--seq-len L]
        [--batch-size B] [--positions] [--json] [--model DIR]

The model reads the corpus once, in non-overlapping windows of its context (--seq-len to
shorten), caching each window's contextualization weights and sense vectors; every strength is
then evaluated from that cache (backpack_core.interpret.edit_effects). Reported:
- the blast radius: the corpus positions whose prediction the edit set changes (a position i is
  in it when the edit changes a term alpha[l, i, j] C(x_j)_l of its weighted sum, j <= i in its
  window: in practice, positions after an occurrence of an edited word);
- the change of the mean next-token loss (nats) over all scored positions, inside the radius and
  outside it (outside it is exactly 0: no term of theirs changes);
- with --prompts (JSONL: {"prompt", "target", "foil"?} a line), the success rate before and after
  (success: the target's log-probability beats the foil's; without a foil, the target is the
  most probable next token) and each prompt's numbers;
- all of it for each strength s (each edit moves what it edits by s times its change: 0 is a
  no-op, 1 the edit set as given, always included; at most 1e6 in absolute value).
An example for the shipped model: --edits analyses/data/edits_last_week.json --prompts
analyses/data/prompts_last_week.jsonl --dataset ptb.
JSON output: {"edits", "descriptions", "corpus": {"name", "tokens", "sha256", "seq_len",
"windows"}, "strengths", "blast_radius": {"count", "fraction", "scored_inside", "positions"},
"scored", "loss_before", "loss_change": {"all", "inside", "outside"}, "success_before",
"success_after", "sweep": [{"strength", "radius", "scored_inside", "loss_after", "loss_change",
"success_rate"}], "prompts": [{"prompt", "target", "foil", "before", "by_strength"}], "timing",
"model"}; "positions" (corpus offsets) is null unless --positions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses import _cli

DATA = Path(__file__).resolve().parent / "data"


def build_parser():
    p = _cli.parser("python -m analyses.evaluate_edits", __doc__.strip().splitlines()[0])
    p.add_argument("--edits", required=True, metavar="E.json",
                   help="the edit set (JSON, schema version 1; see docs/API.md), e.g. "
                        "analyses/data/edits_last_week.json")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE", help="a UTF-8 text file to evaluate on")
    source.add_argument("--dataset", choices=["ptb", "validation"],
                        help="ptb: Penn Treebank test split; validation: the training corpus's "
                             "held-out split, if built (python -m data.build_corpus)")
    p.add_argument("--prompts", metavar="P.jsonl", default=None,
                   help='target prompts, one {"prompt", "target", "foil"?} JSON object a line')
    p.add_argument("--strengths", default="0,0.5,1,2",
                   help="strengths to sweep, comma-separated (default 0,0.5,1,2; 1 is always added)")
    p.add_argument("--max-tokens", type=int, default=None, help="read only the first N tokens")
    p.add_argument("--seq-len", type=int, default=None,
                   help="window length (default and maximum: the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--positions", action="store_true",
                   help="list every blast-radius position (corpus offset) in the JSON")
    _cli.add_threads(p, default=None)
    _cli.add_apply_anyway(p)
    return p


def _fmt(value, spec: str = "+.4f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(data: dict) -> str:
    corpus, radius = data["corpus"], data["blast_radius"]
    lines = [f"edit set: {'; '.join(data['descriptions']) or '(empty)'}",
             f"corpus: {corpus['name']} ({corpus['tokens']:,} tokens, {corpus['windows']} windows of "
             f"{corpus['seq_len']}; {data['scored']:,} scored positions)",
             f"blast radius: {radius['count']:,} positions ({radius['fraction']:.2%} of the corpus; "
             f"{radius['scored_inside']:,} scored)",
             f"loss before: {data['loss_before']:.4f} nats/token",
             "", f"{'strength':>8}{'radius':>9}{'Δloss all':>12}{'Δloss inside':>14}"
                 f"{'Δloss outside':>15}{'success':>9}"]
    for r in data["sweep"]:
        rate = "" if r["success_rate"] is None else f"{r['success_rate']:.0%}"
        lines.append(f"{r['strength']:>8g}{r['radius']:>9,}{_fmt(r['loss_change']['all']):>12}"
                     f"{_fmt(r['loss_change']['inside']):>14}{_fmt(r['loss_change']['outside']):>15}"
                     f"{rate:>9}")
    if data["prompts"]:
        lines += ["", f"target prompts: success {data['success_before']:.0%} before, "
                      f"{data['success_after']:.0%} after (strength 1)",
                  f"{'prompt':<38}{'target':<10}{'foil':<10}{'logp before':>12}{'logp after':>11}"
                  f"{'rank':>9}"]
        one = data["strengths"].index(1.0)
        for p in data["prompts"]:
            after = p["by_strength"][one]
            prompt = p["prompt"] if len(p["prompt"]) <= 36 else p["prompt"][:35] + "…"
            mark = "✓" if after["success"] else "✗"
            foil = "—" if p["foil"] is None else repr(p["foil"])
            lines.append(f"{prompt:<38}{p['target']!r:<10}{foil:<10}"
                         f"{p['before']['target_logprob']:>12.2f}{after['target_logprob']:>11.2f}"
                         f"{p['before']['target_rank']:>5}→{after['target_rank']:<3}{mark}")
    t = data["timing"]
    lines += ["", f"time: {t['forward_s']:.1f} s for the one pass of the model, "
                  f"{t['reevaluate_s']:.2f} s for the {len(data['strengths'])} strengths, "
                  f"{t['prompts_s']:.2f} s for the prompts"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.check_windows(args)
    # every input file is checked before the model loads
    from backpack_core.edit.specs import EditSet
    from backpack_core.interpret.edit_effects import parse_strengths, read_prompts

    edits = EditSet.load(args.edits)
    strengths = parse_strengths(args.strengths)
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    if args.data is not None:
        from backpack_core.common.corpus import read_text_file

        read_text_file(args.data, prefix_bytes=1 << 16)  # exists, is UTF-8 text: a cheap look
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    edits = _cli.checked_edits(edits, model, tokenizer, args)
    from backpack_core.common.corpus import read_corpus
    from backpack_core.interpret.edit_effects import evaluate_edits

    corpus = read_corpus(args.data if args.data is not None else args.dataset, tokenizer,
                         max_tokens=args.max_tokens)
    result = evaluate_edits(model, tokenizer, edits, corpus, prompts=prompts, strengths=strengths,
                            seq_len=args.seq_len, batch_size=args.batch_size, progress=True)
    data = result.to_dict(positions=args.positions)
    data["model"] = args.model or "data/backpack-mini"
    return _cli.emit(args, data, render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="evaluate_edits"))
