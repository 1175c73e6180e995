"""Sense visualization: per sense of a word, the top and bottom words of E . C(word)_l.

    python -m analyses.sense_topk --word science [--k 10] [--senses 0,3,12] [--plot out.html|out.png]
        [--json] [--model DIR]

The word is read in its in-text form: "science" is looked up as " science" (with the leading
space, as it appears inside a sentence) unless --exact is given. A word the vocabulary splits
into several tokens lists every piece (a Backpack has senses per token, not per word).
JSON output: {"word", "tokens", "token_ids", "multi_token", "notes", "senses": [{"index",
"piece", "token", "top": [[word, score], ...], "bottom": [[word, score], ...]}, ...]}, scores
being the sense logits E_w . C(x)_l; "piece" indexes "tokens".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses import _cli


def build_parser():
    p = _cli.parser("python -m analyses.sense_topk", __doc__.strip().splitlines()[0])
    p.add_argument("--word", required=True,
                   help='the word; "science" is read as " science" (in-text form) unless --exact')
    p.add_argument("--exact", action="store_true",
                   help="use --word exactly as given (no leading space added)")
    p.add_argument("--k", type=int, default=10, help="top and bottom words per sense (default 10)")
    p.add_argument("--senses", default=None,
                   help="comma-separated sense indices to show, e.g. 0,3,12 (default: all)")
    _cli.add_plot(p, "the top and bottom words of each sense")
    return p


def parse_senses(text: str | None, k: int) -> list[int]:
    if text is None:
        return list(range(k))
    try:
        senses = [int(s) for s in text.replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise ValueError(f"--senses takes comma-separated integers such as 0,3,12; got {text!r}") from None
    bad = [s for s in senses if not 0 <= s < k]
    if bad or not senses:
        raise ValueError(f"--senses {text!r}: the model has {k} senses, indices 0..{k - 1}")
    return list(dict.fromkeys(senses))


def in_text_form(word: str, exact: bool) -> str:
    if exact or word.startswith(" "):
        return word
    return " " + word


def to_json(readout, senses: list[int]) -> dict:
    """The command's JSON from an `interpret.readouts.SenseReadout`."""
    rows = []
    for piece_index, piece in enumerate(readout.pieces):
        for sense in senses:
            r = piece.readouts[sense]
            rows.append({"index": sense, "piece": piece_index, "token": piece.token,
                         "top": [[t.token, t.score] for t in r.top],
                         "bottom": [[t.token, t.score] for t in r.bottom]})
    return {"word": readout.word.query, "tokens": [p.token for p in readout.pieces],
            "token_ids": [p.token_id for p in readout.pieces], "multi_token": readout.multi_token,
            "notes": readout.notes, "senses": rows}


def render(data: dict, width: int = 14) -> str:
    """Per sense two lines: the top words and the bottom words, each with its score."""
    def cell(token: str, score: float) -> str:
        text = repr(token)[1:-1].strip() or repr(token)
        text = text if len(text) <= width else text[: width - 1] + "…"
        return f"{text} {score:.3g}"

    lines = list(data["notes"])
    current = None
    for row in data["senses"]:
        if row["piece"] != current:
            current = row["piece"]
            piece = (f", piece {current + 1} of {len(data['tokens'])}" if data["multi_token"] else "")
            lines += ["", f"token {row['token']!r} (id {data['token_ids'][current]}){piece}: "
                          "scores E_w . C(x)_l"]
        lines.append(f"sense {row['index']:>2}  top     " + "  ".join(cell(t, s) for t, s in row["top"]))
        lines.append(f"{'':>8}  bottom  " + "  ".join(cell(t, s) for t, s in row["bottom"]))
    return "\n".join(lines)


def _labels(data: dict) -> list[str]:
    return [f"{r['token']!r} s{r['index']}" if data["multi_token"] else f"sense {r['index']}"
            for r in data["senses"]]


def _title(data: dict) -> str:
    return f"Senses of {data['word']!r}: top and bottom words of E · C(x)_l"


def write_plot(data: dict, path: str) -> str:
    """Heatmaps (one row per sense, one column per rank) of the top and bottom words; the cell
    text is the word and its colour the score. .html: Plotly; .png: Pillow. Returns the path."""
    return _cli.write_plot(path, lambda: _figure(data), lambda out: _write_png(data, out))


def _write_png(data: dict, path: str) -> None:
    from analyses import _png

    rows, k = data["senses"], max(len(data["senses"][0]["top"]), 1)
    width, height = max(1000, 2 * 95 * k + 200), 90 + 26 * len(rows)
    img, draw = _png.canvas(width, height, _title(data).replace("·", "."),
                            "cell shade: the score (darker = larger in size)")
    half = (width - 20) // 2
    for n, (side, colour) in enumerate((("top", _png.BLUE), ("bottom", _png.RED))):
        cells = [[(repr(t)[1:-1].strip() or repr(t), score) for t, score in r[side]] for r in rows]
        _png.heat_table(draw, (20 + n * half, 60, 10 + (n + 1) * half, height - 10), _labels(data),
                        cells, colour, f"{side} words")
    img.save(path)


def _figure(data: dict):
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise ValueError("--plot FILE.html needs plotly: pip install plotly") from None

    rows = data["senses"]
    labels = _labels(data)
    k = max(len(rows[0]["top"]), 1)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("top words", "bottom words"),
                        horizontal_spacing=0.04)
    for col, side, scale in ((1, "top", "Blues"), (2, "bottom", "Reds_r")):
        z = [[s for _, s in r[side]] for r in rows]
        text = [[t for t, _ in r[side]] for r in rows]
        fig.add_trace(go.Heatmap(
            z=z, x=[f"#{i + 1}" for i in range(k)], y=labels, text=text, texttemplate="%{text}",
            colorscale=scale, showscale=False, textfont={"size": 10},
            hovertemplate="%{y} %{x}: %{text}<br>E_w · C(x)_l = %{z:.2f}<extra></extra>"), 1, col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=_title(data), height=120 + 34 * len(rows), width=max(900, 190 * k),
                      margin={"l": 90})
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if not args.word.strip():
        raise ValueError("--word is empty: give a word such as science (read as ' science')")
    _cli.check_plot(args.plot)  # before loading anything
    model, tokenizer = _cli.load(args)
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses to read")
    from backpack_core.interpret.readouts import sense_readout

    senses = parse_senses(args.senses, model.config.num_senses)
    readout = sense_readout(model, tokenizer, in_text_form(args.word, args.exact), top=args.k)
    data = to_json(readout, senses)
    return _cli.emit(args, data, render, write_plot)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="sense_topk"))
