"""Learn an edit from a few canonical examples (sense finetuning), against full finetuning and LoRA.

    python -m analyses.sense_finetune --examples EX.jsonl --eval EVAL.jsonl
        [--loss good|bad|balance] [--senses-per-example N] [--budget NATS] [--out edits.json]
        [--background validation|ptb|FILE] [--baselines full,lora|none] [--twin DIR]
        [--steps N] [--lr X] [--kl-weight X] [--strengths 0.25,0.5,1,2] [--json] [--model DIR]

Examples: one JSON object a line, {"prefix", "suffix"} (good: raise the suffix's probability;
bad: lower it) or {"prefix", "suffix1", "suffix2"} (balance: even the two). Evaluation items
(--eval, out-of-distribution sentences): {"prefix", "suffix1", "suffix2"} (good: suffix1 should
beat suffix2; bad: lose to it; balance: within a factor of 2) or {"prefix", "suffix"}. Datasets:
analyses/data/canonical/ (capitals, pronouns, agreement; val and test splits).

Sense finetuning (backpack_core.edit.finetune): each example picks its N most important
(token, sense) vectors (score: the gradient norm of its loss with respect to the vector), only
their deltas are trained, with a KL penalty to the original model on background text; the
strength is the largest of --strengths whose measured increase of the general loss on held-out
background text stays within --budget. Full finetuning and LoRA (peft) are trained and chosen the
same way. --twin DIR adds the sense edit carried to a Transformer with the same tokenizer
(logits_twin + logits_edited - logits_backpack). The edit set (add_sense edits, with provenance)
goes to --out; the chosen senses are printed with their top words before and after the edit.
JSON output: {"examples", "eval", "loss", "budget", "background", "base_general_loss",
"rows": [{"method", "strength", "general_increase", "targeted_increase", "before": {"success",
"margin", "targeted_loss", "n"}, "after": {...}, "trained_parameters", "sweep"}], "senses":
[{"token", "token_id", "sense", "score", "example", "top_before", "top_after"}], "edit_set",
"out"}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses import _cli


def build_parser():
    p = _cli.parser("python -m analyses.sense_finetune", __doc__.strip().splitlines()[0])
    p.add_argument("--examples", required=True, metavar="EX.jsonl", help="canonical examples (JSONL)")
    p.add_argument("--eval", default=None, metavar="EVAL.jsonl",
                   help="out-of-distribution evaluation items (JSONL); without it only the "
                        "general loss is measured")
    p.add_argument("--loss", default="good", choices=["good", "bad", "balance"],
                   help="good (default): raise the suffix; bad: lower it; balance: even suffix1/suffix2")
    p.add_argument("--senses-per-example", type=int, default=10, metavar="N",
                   help="senses selected per example (default 10)")
    p.add_argument("--budget", type=float, default=0.01, metavar="NATS",
                   help="allowed increase of the mean next-token loss on held-out background text "
                        "(default 0.01 nats)")
    p.add_argument("--out", default=None, metavar="edits.json", help="write the learned edit set here")
    p.add_argument("--background", default="validation",
                   help='background text: "validation" (default: the training corpus\'s held-out '
                        'split, if built), "ptb", or a UTF-8 text file')
    p.add_argument("--seq-len", type=int, default=128, help="background window length (default 128)")
    p.add_argument("--train-windows", type=int, default=32,
                   help="background windows for the KL penalty (default 32)")
    p.add_argument("--heldout-windows", type=int, default=32,
                   help="held-out background windows for the budget (default 32; never trained on)")
    p.add_argument("--baselines", default="full,lora",
                   help='comma-separated: full, lora (default both), or "none"')
    p.add_argument("--twin", default=None, metavar="DIR",
                   help="a Transformer with the same tokenizer: report the transferred edit")
    p.add_argument("--steps", type=int, default=60, help="optimisation steps (default 60)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate of the sense deltas")
    p.add_argument("--full-lr", type=float, default=1e-4, help="learning rate of full finetuning")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of LoRA")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--kl-weight", type=float, default=1.0, help="weight of the KL penalty (default 1)")
    p.add_argument("--strengths", default=None,
                   help="candidate strengths, comma-separated (default 0.125 ... 32)")
    p.add_argument("--top-words", type=int, default=6, help="top words per chosen sense (default 6)")
    p.add_argument("--seed", type=int, default=0)
    _cli.add_threads(p)
    return p


def parse_strengths(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--strengths must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError("--strengths is empty")
    return values


def sense_rows(model, tokenizer, choices, deltas, strength: float, top: int) -> list[dict]:
    """Each chosen sense with its top words (E . C(w)_l, interpret.readouts) before and after
    the edit (C(w)_l + strength * delta)."""
    import torch

    from backpack_core.interpret.readouts import sense_logits, sense_readout
    from backpack_core.model.vocab import token_text

    rows = []
    n_real = min(len(tokenizer), model.config.vocab_size)
    index = {t: i for i, t in enumerate(deltas.token_ids.tolist())}
    with torch.no_grad():
        table = deltas.masked_delta()
        for c in choices:
            readout = sense_readout(model, tokenizer, c.token_id, top=top).pieces[0]
            before = [w.token for w in readout.readouts[c.sense].top]
            edited = readout.senses[c.sense] + strength * table[index[c.token_id], c.sense].cpu()
            scores = sense_logits(model, edited.to(model.wte.weight.device))[:n_real]
            after = [token_text(tokenizer, int(i)) for i in scores.topk(top).indices]
            rows.append({"token": c.token, "token_id": c.token_id, "sense": c.sense,
                         "score": c.score, "example": c.example, "top_before": before,
                         "top_after": after})
    return rows


def _pct(scores, key="success") -> str:
    return "-" if scores is None else f"{scores[key]:.0%}"


def render(data: dict) -> str:
    lines = [f"{data['loss']} loss, {data['examples']['count']} examples ({data['examples']['path']}), "
             f"eval {data['eval']['path']} ({data['eval']['count']} items)",
             f"background: {data['background']}; base general loss {data['base_general_loss']:.4f}; "
             f"budget +{data['budget']:g} nats", "",
             f"{'method':<18}{'strength':>9}{'success before':>16}{'after':>7}{'margin before':>15}"
             f"{'after':>8}{'general +':>11}{'targeted +':>12}{'params':>10}"]
    for r in data["rows"]:
        b, a = r["before"], r["after"]
        margin = (lambda s: "-" if s is None or s["margin"] is None else f"{s['margin']:+.2f}")
        targeted = "-" if r["targeted_increase"] is None else f"{r['targeted_increase']:+.4f}"
        lines.append(f"{r['method']:<18}{r['strength']:>9g}{_pct(b):>16}{_pct(a):>7}"
                     f"{margin(b):>15}{margin(a):>8}{r['general_increase']:>+11.4f}{targeted:>12}"
                     f"{r['trained_parameters']:>10,}")
    lines += ["", f"chosen senses (importance = ||dL/dC(w)_l||), top words before | after the "
                  f"edit (strength {data['rows'][0]['strength']:g}):"]
    for s in data["senses"]:
        lines.append(f"  {s['token']!r} sense {s['sense']:>2} (example {s['example']}, score "
                     f"{s['score']:.3g}): {' '.join(repr(w) for w in s['top_before'])} | "
                     f"{' '.join(repr(w) for w in s['top_after'])}")
    if data["out"]:
        lines += ["", f"edit set ({len(data['edit_set']['edits'])} add_sense edits) written to {data['out']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    strengths = parse_strengths(args.strengths)
    baselines = [] if args.baselines.strip() == "none" else [
        b.strip() for b in args.baselines.split(",") if b.strip()]
    for b in baselines:
        if b not in ("full", "lora"):
            raise ValueError(f"--baselines takes full, lora or none; got {b!r}")
    if args.seq_len < 2 or args.train_windows < 0 or args.heldout_windows < 1:
        raise ValueError("--seq-len must be >= 2, --train-windows >= 0, --heldout-windows >= 1")
    if args.top_words < 1:
        raise ValueError(f"--top-words must be >= 1, got {args.top_words}")
    from backpack_core.edit.finetune import (
        Background,
        TrainConfig,
        compare_methods,
        read_examples,
    )

    examples = read_examples(args.examples, args.loss)
    items = read_examples(args.eval, args.loss, evaluation=True) if args.eval else None
    config = TrainConfig(steps=args.steps, lr=args.lr, full_lr=args.full_lr, lora_lr=args.lora_lr,
                         lora_rank=args.lora_rank, kl_weight=args.kl_weight,
                         senses_per_example=args.senses_per_example, seed=args.seed,
                         **({"strengths": strengths} if strengths else {}))
    config.check()
    from backpack_core.common.corpus import read_corpus
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses to finetune")
    if args.seq_len > model.config.n_positions:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's context "
                         f"({model.config.n_positions})")
    corpus = read_corpus(args.background, tokenizer,
                         max_tokens=args.seq_len * (args.train_windows + args.heldout_windows))
    background = Background.split(corpus.token_ids, args.seq_len, args.heldout_windows,
                                  args.train_windows, corpus.name)
    twin = None
    if args.twin:
        from backpack_core.model.loading import load_backpack

        twin, _ = load_backpack(args.twin, device=args.device, dtype=args.dtype)
        if twin.config.is_backpack:
            raise ValueError(f"--twin {args.twin!r} is a Backpack; give a Transformer with the "
                             "same tokenizer")
    result = compare_methods(model, tokenizer, examples, args.loss, background, args.budget, items,
                             config, baselines, twin)
    if args.out:
        from backpack_core.common.files import write_text_atomic

        write_text_atomic(args.out, result.sense.edit_set.to_json() + "\n")
    rows = [r.to_dict() for r in result.rows]
    data = {"examples": {"path": args.examples, "count": len(examples)},
            "eval": {"path": args.eval, "count": len(items) if items else 0},
            "loss": args.loss, "budget": args.budget, "background": background.name,
            "base_general_loss": result.sense.base_general_loss, "rows": rows,
            "senses": sense_rows(model, tokenizer, result.sense.choices, result.sense.deltas,
                                 result.sense.result.strength, args.top_words),
            "edit_set": result.sense.edit_set.to_dict(), "out": args.out}
    return _cli.emit(args, data, render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="sense_finetune"))
