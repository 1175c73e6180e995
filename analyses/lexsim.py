"""Lexical similarity: Spearman correlation of sense and embedding cosines with human judgments.

    python -m analyses.lexsim [--benchmarks simlex999,wordsim353] [--word2vec FILE] [--json]
        [--model DIR]

Benchmarks: SimLex-999 and WordSim-353 (gensim's bundled files). Methods: each single sense
(cosine of sense l of both words), the min / max / mean cosine over all k x k sense pairs, the
cosine of the mean sense, and the model's embeddings E (input = output in a Backpack).
Coverage: a pair is used only if both words are single tokens in their in-text form (" word");
the others are counted as skipped. With --word2vec (gensim KeyedVectors saved with .save(), or
a word2vec .bin/.txt file), pairs it does not cover are dropped for every method.
Picking the best of k senses on the pairs it is scored on inflates it; "held_out_sense" gives,
per benchmark, the sense chosen on the other benchmark(s) and its Spearman here.
JSON output: {"benchmarks": [{"benchmark", "pairs_total", "pairs_used", "pairs_skipped",
"spearman": {method: rho or null}, "held_out_sense": {"sense", "chosen_on", "spearman"}}]}.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from analyses import _cli

BENCHMARKS = ("simlex999", "wordsim353")



def build_parser():
    p = _cli.parser("python -m analyses.lexsim", __doc__.strip().splitlines()[0])
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS),
                   help=f"comma-separated, from {', '.join(BENCHMARKS)} (default: both)")
    p.add_argument("--word2vec", default=None, metavar="FILE",
                   help="also score gensim word vectors (KeyedVectors file, or word2vec .bin/.txt)")
    return p


def load_word_vectors(path: str):
    from pathlib import Path

    if not Path(path).is_file():
        raise ValueError(f"--word2vec {path!r}: no such file")
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        raise ValueError("--word2vec needs gensim: pip install gensim") from None

    if path.endswith((".bin", ".txt", ".vec")):
        return KeyedVectors.load_word2vec_format(path, binary=path.endswith(".bin"))
    return KeyedVectors.load(path)


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def render(data: dict) -> str:
    entries = data["benchmarks"]
    methods = list(dict.fromkeys(m for e in entries for m in e["spearman"]))
    lines = [f"{'method':<18}" + "".join(f"{e['benchmark']:>14}" for e in entries)]
    for m in methods:
        cells = []
        for e in entries:
            v = e["spearman"].get(m)
            cells.append(f"{v:>14.3f}" if v is not None else f"{'n/a':>14}")
        lines.append(f"{m:<18}" + "".join(cells))
    lines.append(f"{'pairs used':<18}" + "".join(f"{e['pairs_used']:>8} / {e['pairs_total']:<3}"
                                                  for e in entries))
    lines.append("")
    for e in entries:
        h = e.get("held_out_sense")
        if h:
            lines.append(f"{e['benchmark']}: sense {h['sense']} (chosen on {', '.join(h['chosen_on'])}) "
                         f"scores {h['spearman']:.3f}" if h["spearman"] is not None else
                         f"{e['benchmark']}: sense {h['sense']} (chosen on {', '.join(h['chosen_on'])})")
        lines.append(f"{e['benchmark']}: {e['pairs_skipped']} of {e['pairs_total']} pairs skipped "
                     "(a word is several tokens" + (" or unknown to word2vec)" if data["word2vec"]
                                                    else ")"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"unknown benchmark(s) {unknown or names}; choose from {', '.join(BENCHMARKS)}")
    extra = None
    if args.word2vec:
        from backpack_core.model.evaluation import keyed_vectors_similarity

        extra = {"word2vec": keyed_vectors_similarity(load_word_vectors(args.word2vec))}
    model, tokenizer = _cli.load(args)
    from backpack_core.experiments.lexsim import held_out_sense
    from backpack_core.model.evaluation import word_similarity

    results = {}
    for name in names:
        try:
            results[name] = word_similarity(model, tokenizer, name, extra=extra).to_dict()
        except ImportError as err:  # the benchmark files come with gensim
            raise ValueError(str(err)) from None
        except ValueError as err:  # no pair is covered: report it rather than fail the others
            from backpack_core.common.datasets import load_benchmark

            total = len(load_benchmark(name))
            results[name] = {"benchmark": name, "pairs_total": total, "pairs_used": 0,
                             "pairs_skipped": total, "spearman": {}, "note": str(err)}
    held_out = held_out_sense({n: r["spearman"] for n, r in results.items() if r["spearman"]})
    entries = []
    for name, r in results.items():
        r["spearman"] = {m: _finite(v) for m, v in r["spearman"].items()}
        if name in held_out:
            r["held_out_sense"] = {**held_out[name], "spearman": _finite(held_out[name]["spearman"])}
        entries.append(r)
    data = {"benchmarks": entries, "word2vec": args.word2vec}
    return _cli.emit(args, data, render)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="lexsim"))
