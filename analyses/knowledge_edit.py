"""Knowledge editing: move a word's association from one target to another in all its senses.

    python -m analyses.knowledge_edit --word " MacBook" --remove " Apple" --add " HP"
        [--prompts "The MacBook is made by" ...] [--generate 20] [--sample --seed 0]
        [--orthogonalize] [--json] [--model DIR]

The paper's edit: for every sense s of --word, with a = E[remove] and h = E[add],
s <- s - c a + c (|a|^2 / |h|^2) h, c = (s . a) / |a|^2, so the sense's logit for --remove moves
to --add. Reported: for each prompt, the probability of both targets as the next word before and
after (and KL), and, with --generate N (default 20; 0 to skip), greedy generations before and
after. All three words must be single tokens (with their leading space: " Apple"); the command
says which are not and lists edits this vocabulary supports. Without --word it runs the first
candidate of analyses/data/knowledge_edits.json that the vocabulary supports.
JSON output: {"word", "remove", "add", "edits", "prompts": [{"prompt", "remove": {"token",
"prob_before", "prob_after", "logprob_delta"}, "add": {...}, "kl", "top_before", "top_after"}],
"generations": [{"prompt", "before", "after"}], "candidate_note"}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses import _cli

EDITS_FILE = Path(__file__).resolve().parent / "data" / "knowledge_edits.json"


def build_parser():
    p = _cli.parser("python -m analyses.knowledge_edit", __doc__.strip().splitlines()[0])
    p.add_argument("--word", default=None,
                   help='the edited word, one token with its leading space (e.g. " MacBook"); '
                        "default: the first supported candidate of the edits file")
    p.add_argument("--remove", default=None, help='the target to remove (e.g. " Apple")')
    p.add_argument("--add", default=None, help='the target to add instead (e.g. " HP")')
    p.add_argument("--prompts", nargs="+", default=None,
                   help="prompts whose next word is scored (default: the candidate's prompts)")
    p.add_argument("--generate", type=int, default=20, metavar="N",
                   help="tokens to generate before and after (default 20; 0 skips; imports transformers)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same before and after")
    p.add_argument("--orthogonalize", action="store_true",
                   help="add only the part of E[add] orthogonal to E[remove] (then s . E[remove] = 0)")
    p.add_argument("--edits-file", default=str(EDITS_FILE), help="candidate edits (JSON)")
    _cli.add_threads(p)
    return p


def read_candidates(path: str) -> dict:
    data = _cli.read_json(path, "edits")
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
        raise ValueError(f"the edits file {path!r} lacks a \"candidates\" list")
    return data


def _triple(c: dict) -> str:
    return f"--word {c['word']!r} --remove {c['remove']!r} --add {c['add']!r}"


def check_words(tokenizer, vocab_size: int, words: dict[str, str | None], supported: list[dict]
                ) -> None:
    """ValueError naming every word that is several tokens, with the edits that would work."""
    from backpack_core.model.vocab import resolve_word

    problems = []
    for role, word in words.items():
        if word is None:
            continue
        resolved = resolve_word(tokenizer, word, vocab_size)
        if not resolved.is_single:
            problems.append(f"--{role} {resolved.describe()}")
    if not problems:
        return
    hint = ("; edits whose words are single tokens here: "
            + "; ".join(_triple(c) for c in supported[:4])) if supported else ""
    raise ValueError("a knowledge edit rewrites the senses of one token and moves the logit of one "
                     "token to another, so each word must be a single token in this model's "
                     f"vocabulary, but {'; '.join(problems)}{hint}")


def render(data: dict) -> str:
    lines = [f"knowledge edit: in every sense of {data['word']!r}, remove {data['remove']!r}"
             + (f", add {data['add']!r}" if data["add"] is not None else "")]
    if data.get("candidate_note"):
        lines.append(f"({data['candidate_note']})")
    lines += ["", f"{'prompt':<36}{'target':<12}{'p before':>10}{'p after':>10}{'log ratio':>11}"]
    for row in data["prompts"]:
        for i, role in enumerate(("remove", "add")):
            if role not in row:
                continue
            r = row[role]
            prompt = row["prompt"] if i == 0 else ""
            prompt = prompt if len(prompt) <= 34 else prompt[:33] + "…"
            lines.append(f"{prompt:<36}{r['token']!r:<12}{r['prob_before']:>10.3g}"
                         f"{r['prob_after']:>10.3g}{r['logprob_delta']:>+11.2f}")
    for g in data["generations"]:
        lines += ["", f"{g['prompt']!r}",
                  f"  before: {' '.join((g['prompt'] + g['before']).split())}",
                  f"  after:  {' '.join((g['prompt'] + g['after']).split())}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.generate < 0:
        raise ValueError(f"--generate must be >= 0, got {args.generate}")
    if args.word is not None and args.remove is None:
        raise ValueError("--word needs --remove (and usually --add): which target to move?")
    if args.word is None and (args.remove is not None or args.add is not None):
        raise ValueError("--remove/--add need --word: whose senses to edit?")
    spec = read_candidates(args.edits_file)
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses to edit")
    from backpack_core.experiments.knowledge_edit import knowledge_edit
    from backpack_core.experiments.lexsim import single_token_candidates

    vocab = model.config.vocab_size
    supported = single_token_candidates(tokenizer, spec["candidates"], vocab)
    if args.word is None:
        if not supported:
            raise ValueError(f"no candidate of {args.edits_file} is made of single tokens in this "
                             "vocabulary; give --word, --remove and --add")
        chosen = supported[0]
    else:
        chosen = {"word": args.word, "remove": args.remove, "add": args.add}
        check_words(tokenizer, vocab, {"word": args.word, "remove": args.remove, "add": args.add},
                    supported)
        chosen = next((c for c in spec["candidates"] if all(c.get(k) == chosen[k] for k in chosen)),
                      chosen)
    prompts = args.prompts or chosen.get("prompts") or [
        p.replace("{word}", chosen["word"]) for p in spec.get("generic_prompts", ["The{word}"])]
    result = knowledge_edit(model, tokenizer, chosen["word"], chosen["remove"], chosen.get("add"),
                            prompts, generate_tokens=args.generate,
                            orthogonalize=args.orthogonalize, sample=args.sample, seed=args.seed)
    data = result.to_dict()
    data["candidate_note"] = chosen.get("note")
    return _cli.emit(args, data, render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="knowledge_edit"))
