"""Sense atlas: how each sense of a word is used over a corpus, and its top contexts.

    python -m analyses.sense_atlas --dataset ptb|validation | --data FILE  [--word science[,bank]]
        [--sense 3] [--top 3] [--max-tokens N] [--seq-len L] [--plot out.html|out.png] [--json]
        [--model DIR]

One pass over the corpus (windows of --seq-len tokens, each an independent context) builds the
atlas, cached under $BACKPACK_CACHE keyed by the model's weights, the corpus and --seq-len;
later runs on the same model and corpus read it from disk. The weight a sense of a word
receives at an occurrence j is sum_{i >= j} alpha[l, i, j] over the later predictions i of its
window (see backpack_core/interpret/atlas.py); the mean over all positions is about 1 for every sense.
For each --word (read as " word", in-text form, unless --exact): per sense the total and mean
weight per occurrence, the largest weight at one occurrence (dead below 0.05), and the --top
contexts where it carried the most weight, as snippets with [[the word]] and <<the position it
supported most>> ([[<<word>>]]: the word's own position), and the predictions there that the
sense raised most (logit contribution alpha E_w . C(x)_l). Without --word: the per-sense-index
usage table and the dead senses of frequent words. --plot writes a figure of the words' sense
usage (.html with Plotly, .png with Pillow).
JSON output: {"atlas": {corpus, tokens, seq_len, ...}, "words": [{"word", "token", "token_id",
"occurrences", "senses": [{"sense", "total_weight", "mean_weight", "share", "max_weight",
"peak_weight", "dead", "contexts": [{"offset", "weight", "query", "query_weight", "snippet":
[{"text", "role"}], "next_token", "predictions"}]}]}], "usage": [...], "dead": [...]}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses import _cli

MAX_WORDS = 50  # each word's top contexts re-run up to 16 x --top windows


def build_parser():
    p = _cli.parser("python -m analyses.sense_atlas", __doc__.strip().splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE", help="a UTF-8 text file")
    source.add_argument("--dataset", choices=["ptb", "validation"],
                        help="ptb: Penn Treebank test split; validation: the held-out split of the "
                             "training corpus (if built: python -m data.build_corpus)")
    p.add_argument("--word", default=None,
                   help='word(s), comma-separated; "science" is read as " science" unless --exact '
                        "(default: the per-sense usage table and dead senses)")
    p.add_argument("--exact", action="store_true", help="use --word exactly as given")
    p.add_argument("--sense", type=int, default=None, help="show only this sense index")
    p.add_argument("--top", type=int, default=3, help="top contexts shown per sense (default 3)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="read only the first N tokens of the corpus (quick runs)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="window length (default and maximum: the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--top-n", type=int, default=10,
                   help="contexts kept per (word, sense) in the atlas (default 10)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the atlas even if cached")
    _cli.add_plot(p, "the words' sense usage")
    _cli.add_threads(p, default=None)
    return p


def check_args(args) -> list[str]:
    """Argument checks that need no model; returns the words in the form to look up."""
    _cli.check_windows(args)
    if args.top < 0 or args.top_n < 1:
        raise ValueError("--top-n must be >= 1 and --top >= 0")
    from backpack_core.common.limits import check_atlas_top_n

    check_atlas_top_n(args.top_n)
    if args.top > args.top_n:
        raise ValueError(f"--top {args.top} is more than the --top-n {args.top_n} contexts the "
                         "atlas keeps; raise --top-n")
    _cli.check_plot(args.plot)
    if args.plot and not args.word:
        raise ValueError("--plot draws the words' senses: give --word too")
    if args.sense is not None and not args.word:
        raise ValueError("--sense shows one sense of the --word words: give --word too")
    if args.data is not None and not Path(args.data).is_file():
        what = "is a directory" if Path(args.data).is_dir() else "does not exist"
        raise ValueError(f"--data {args.data!r} {what}; give a UTF-8 text file, or --dataset ptb")
    if args.word is None:
        return []
    from analyses.sense_topk import in_text_form

    words = [w for w in args.word.split(",") if w.strip()]
    if not words:
        raise ValueError("--word is empty: give a word such as science (read as ' science')")
    if len(words) > MAX_WORDS:
        raise ValueError(f"--word lists {len(words):,} words; give at most {MAX_WORDS}")
    return [in_text_form(w.strip() if not args.exact else w, args.exact) for w in words]


def render_snippet(snippet: list[dict]) -> str:
    """[[the word]] and <<the position it supported most>>; [[<<word>>]] when that is the word
    itself (its own next-token prediction: the snippet then has no "query" part)."""
    marks = {"word": ("[[", "]]"), "query": ("<<", ">>"), "gap": ("", ""), "text": ("", "")}
    if not any(s["role"] == "query" for s in snippet):
        marks["word"] = ("[[<<", ">>]]")
    text = "".join(marks[s["role"]][0] + s["text"] + marks[s["role"]][1] for s in snippet)
    return " ".join(text.replace("\n", " ⏎ ").split())


def render_word(w: dict, atlas: dict, only_sense: bool) -> list[str]:
    lines = ["", f"{w['word']!r} (token {w['token']!r}, id {w['token_id']}): {w['occurrences']:,} "
                 f"occurrences in {atlas['corpus']} ({atlas['tokens']:,} tokens)"]
    if not w["occurrences"]:
        lines.append("  it does not occur in this corpus: nothing to show (try a larger --max-tokens)")
        return lines
    lines.append("  sense   total    mean   share    max    peak")
    for s in w["senses"]:
        lines.append(f"  {s['sense']:>5} {s['total_weight']:>7.2f} {s['mean_weight']:>7.3f} "
                     f"{s['share']:>6.1%} {s['max_weight']:>6.3f} {s['peak_weight']:>7.3f}"
                     + ("   dead" if s["dead"] else ""))
    for s in w["senses"]:
        if not s["contexts"]:
            continue
        lines.append(f"  sense {s['sense']}: top contexts (weight: snippet -> predictions supported "
                     "at <<...>>, contribution to the logit)")
        for c in s["contexts"]:
            preds = ", ".join(f"{p['token']!r} {p['contribution']:+.2f}" for p in c["predictions"])
            nxt = c["next_token"]
            actual = f"; actual next {nxt['token']!r} {nxt['contribution']:+.2f}" if nxt else ""
            lines.append(f"    {c['weight']:.2f}: {render_snippet(c['snippet'])}")
            if preds or actual:
                lines.append(f"          -> {preds}{actual}")
    return lines


def render(data: dict) -> str:
    a = data["atlas"]
    lines = [f"sense atlas of {a['corpus']}: {a['tokens']:,} tokens in windows of {a['seq_len']}, "
             f"{a['words_seen']:,} distinct tokens, {a['dead_pairs']:,} of {a['pairs_seen']:,} "
             f"(word, sense) pairs dead (weight < {a['dead_threshold']} at every occurrence)"]
    for w in data.get("words", []):
        lines += render_word(w, a, False)
    if data.get("usage"):
        lines += ["", "per sense index (each receives weight 1 per prediction by construction): "
                      "its share of the output's magnitude (alpha ||C||), the share of its weight "
                      "on the position itself, the mean distance i - j its weight travels, dead "
                      "(word, sense) pairs, and the words whose sense gets the most weight per "
                      "occurrence (5+ occurrences)",
                  "  sense  magnitude  self  distance  dead  top words"]
        for r in data["usage"]:
            words = " ".join(repr(t["token"]) for t in r["top_words"])
            lines.append(f"  {r['sense']:>5} {r['norm_share']:>10.1%} "
                         f"{r['self_share']:>5.0%} {r['mean_distance']:>9.1f} {r['dead_words']:>5}  {words}")
    if data.get("dead"):
        lines += ["", "dead senses of the most frequent words (token, sense: occurrences, max weight)"]
        lines += [f"  {d['token']!r} sense {d['sense']}: {d['count']} occurrences, max {d['max_weight']:.3f}"
                  for d in data["dead"]]
    return "\n".join(lines)


def _mean_weights(w: dict) -> list[float]:
    return [s["mean_weight"] for s in w["senses"]]


def write_plot(data: dict, path: str) -> str:
    """Per word, the mean weight per occurrence of each sense (dead senses grey; a dashed line
    at 1, the mean over all positions), and the top context of its most used sense. .html:
    Plotly; .png: drawn with Pillow (no kaleido)."""
    words = [w for w in data["words"] if w["occurrences"]]
    if not words:
        raise ValueError("none of the words occurs in this corpus: nothing to plot")
    title = (f"Sense atlas on {data['atlas']['corpus']} ({data['atlas']['tokens']:,} tokens): mean "
             "contextualization weight per occurrence, by sense")
    return _cli.write_plot(path, lambda: _figure(words, title), lambda out: _write_png(words, title, out))


def _figure(words: list[dict], title: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(words), cols=1, vertical_spacing=0.12,
                        subplot_titles=[_caption(w) for w in words])
    for row, w in enumerate(words, 1):
        fig.add_trace(go.Bar(
            x=[f"s{s['sense']}" for s in w["senses"]], y=_mean_weights(w), showlegend=False,
            marker_color=["#bbbbbb" if s["dead"] else "#1f77b4" for s in w["senses"]],
            hovertemplate="%{x}: %{y:.3f} per occurrence<extra>" + w["word"] + "</extra>"), row, 1)
        fig.add_hline(y=1.0, line_dash="dash", line_color="#d62728", row=row, col=1,
                      annotation_text="1 = mean over all positions")
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=260 * len(words) + 80,
                      width=900, margin={"l": 50, "r": 20, "t": 90, "b": 30})
    return fig


def _caption(w: dict) -> str:
    best = max(w["senses"], key=lambda s: s["mean_weight"])
    ctx = best["contexts"][0] if best["contexts"] else None
    line = f"{w['word']!r}: {w['occurrences']} occurrences; most used sense {best['sense']}"
    if ctx:
        snippet = render_snippet(ctx["snippet"])
        line += f", e.g. {snippet[:90]}"
    return line


def _write_png(words: list[dict], title: str, path: str) -> None:
    from analyses import _png

    width, panel, top = 1100, 260, 70
    img, draw = _png.canvas(width, top + panel * len(words), title,
                            "dashed: 1, the mean weight over all positions; grey: dead senses")
    for n, w in enumerate(words):
        y0 = top + n * panel
        colours = [_png.GREY if s["dead"] else _png.BLUE for s in w["senses"]]
        _png.bars(draw, (20, y0 + 5, width - 20, y0 + panel - 15), [f"s{s['sense']}" for s in w["senses"]],
                  [("", _mean_weights(w), colours)], title=_caption(w).replace("⏎", "/"), hline=1.0)
    img.save(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    words = check_args(args)  # a bad argument fails before the model loads
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses")
    from backpack_core.common.corpus import read_corpus
    from backpack_core.interpret.atlas import SenseAtlas

    if args.sense is not None and not 0 <= args.sense < model.config.num_senses:
        raise ValueError(f"--sense {args.sense}: the model has {model.config.num_senses} senses, "
                         f"indices 0..{model.config.num_senses - 1}")
    from backpack_core.model.vocab import single_token_id

    for word in words:  # a word of several tokens is refused before the pass, not after it
        single_token_id(tokenizer, word, model.config.vocab_size)
    corpus = read_corpus(args.data or args.dataset, tokenizer, max_tokens=args.max_tokens)
    atlas = SenseAtlas.for_corpus(model, tokenizer, corpus, top_n=args.top_n, seq_len=args.seq_len,
                                  batch_size=args.batch_size, progress=None, rebuild=args.rebuild)
    data = {"atlas": {**atlas.summary(), "model": args.model or "data/backpack-mini"}, "words": []}
    for word in words:
        data["words"].append(atlas.word_report(word, sense=args.sense, top=args.top).to_dict())
    if not words:
        data["usage"] = atlas.sense_usage_table()
        data["dead"] = atlas.dead_senses(min_count=5, limit=20)
    return _cli.emit(args, data, render, write_plot)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="sense_atlas"))
