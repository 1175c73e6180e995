"""Patching a clean prompt into a corrupted one, split into senses and contextualization weights.

    python -m analyses.patch --clean "The language of France is" \\
        --corrupted "The language of Germany is" [--target " French" --foil " German"]
        [--no-contextualizer] [--top 10] [--plot out.html|out.png] [--json] [--model DIR]

The two prompts must have the same number of tokens. Metric: the logit difference target - foil
after the last token (default target: the clean prompt's most probable word; foil: the
corrupted one's), normalised so that the clean run scores 1 and the corrupted run 0.
1. Sense patching, exact and without a transformer pass: per (source position j, sense l), the
   effect of the clean sense vector C(x_j)_l in the corrupted run (weights kept), of the clean
   weight alpha[l, i, j] (senses kept), and their interaction; the three tables sum to 1.
2. Contextualizer patching: per (layer L, position p), the clean residual stream at the input of
   block L (the last layer: the contextualizer's output) in the corrupted run, everything that
   depends on it recomputed; its effect through the changed weights, split per sense.
See backpack_core/interpret/patching.py. --plot writes the heatmaps (.html with Plotly, .png
with Pillow). JSON: {"metric", "position", "target", "foil", "clean", "corrupted", "senses":
{"totals", "rows": [{"position", "clean_token", "corrupted_token", "sense", "senses",
"weights", "interaction"}]}, "contextualizer": {"layers", "rows": [{"layer", "position",
"clean_token", "corrupted_token", "effect", "by_sense"}]}}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses import _cli

PLOT_SUFFIXES = (".html", ".htm", ".png")


def build_parser():
    p = _cli.parser("python -m analyses.patch", __doc__.strip().splitlines()[0])
    p.add_argument("--clean", required=True, help="the prompt whose prediction is explained")
    p.add_argument("--corrupted", required=True,
                   help="the same prompt with a word changed (the same number of tokens)")
    p.add_argument("--target", default=None,
                   help='the word the clean prompt predicts, one token (e.g. " French"; default: '
                        "its most probable next word)")
    p.add_argument("--foil", default=None,
                   help="the word the corrupted prompt predicts instead (default: its most "
                        "probable next word)")
    p.add_argument("--no-contextualizer", action="store_true",
                   help="only the sense patching (no contextualizer passes)")
    p.add_argument("--top", type=int, default=10, help="rows of the largest-effect tables (default 10)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="also write the heatmaps: FILE.html (Plotly) or FILE.png (Pillow)")
    _cli.add_threads(p, default=None)
    return p


def check_args(args) -> None:
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.plot:
        if Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
            raise ValueError(f"--plot {args.plot!r}: write a .html (Plotly) or .png (Pillow) file")
        if not Path(args.plot).absolute().parent.is_dir():
            raise ValueError(f"--plot {args.plot!r}: no such directory {str(Path(args.plot).parent)!r}")


# ----------------------------------------------------------------------------------------------
# Tables from the JSON (the text rendering and the figures read the same data)
# ----------------------------------------------------------------------------------------------

def position_labels(data: dict) -> list[str]:
    """'3 ' France'→' Germany'' where the prompts differ, '2 ' of'' where they agree."""
    labels = []
    for j, (a, b) in enumerate(zip(data["clean"]["tokens"], data["corrupted"]["tokens"])):
        labels.append(f"{j} {a!r}" if a == b else f"{j} {a!r}→{b!r}")
    return labels


def sense_matrix(data: dict, kind: str) -> list[list[float]]:
    """(k, n) effects of one kind of sense patching: senses, weights or interaction."""
    rows = data["senses"]["rows"]
    n = len(data["clean"]["tokens"])
    k = max(r["sense"] for r in rows) + 1
    out = [[0.0] * n for _ in range(k)]
    for r in rows:
        out[r["sense"]][r["position"]] = r[kind]
    return out


def layer_matrix(data: dict) -> list[list[float]]:
    """(n_layer + 1, n) contextualizer-patching effects."""
    n = len(data["clean"]["tokens"])
    out = [[0.0] * n for _ in range(data["contextualizer"]["layers"])]
    for r in data["contextualizer"]["rows"]:
        out[r["layer"]][r["position"]] = r["effect"]
    return out


def layer_names(data: dict) -> list[str]:
    count = data["contextualizer"]["layers"]
    return [f"block {L} in" for L in range(count - 1)] + ["output"]


def render(data: dict, top: int) -> str:
    c, x = data["clean"], data["corrupted"]
    t, f = data["target"]["token"], data["foil"]["token"]
    tops = lambda run: ", ".join(f"{p['token']!r} {p['prob']:.3f}" for p in run["top"][:3])  # noqa: E731
    lines = [f"clean:     {c['text']!r} ({len(c['tokens'])} tokens); next: {tops(c)}",
             f"corrupted: {x['text']!r}; next: {tops(x)}",
             f"metric: logit {t!r} - logit {f!r} after the last token: clean {c['logit_diff']:+.4f}, "
             f"corrupted {x['logit_diff']:+.4f}; below, normalised (clean 1, corrupted 0)", ""]
    totals = data["senses"]["totals"]
    lines.append(f"1. sense patching (no transformer pass): clean senses {totals['senses']:+.3f}, "
                 f"clean weights {totals['weights']:+.3f}, interaction {totals['interaction']:+.3f} "
                 f"(sum {sum(totals.values()):+.3f})")
    labels = position_labels(data)
    width = max(len(s) for s in labels) + 2
    lines.append(f"   {'position':<{width}} {'senses':>8} {'weights':>8} {'interact':>8}")
    by_pos = {}
    for r in data["senses"]["rows"]:
        acc = by_pos.setdefault(r["position"], [0.0, 0.0, 0.0])
        acc[0] += r["senses"]
        acc[1] += r["weights"]
        acc[2] += r["interaction"]
    for j, label in enumerate(labels):
        s, w, i = by_pos[j]
        lines.append(f"   {label:<{width}} {s:>+8.3f} {w:>+8.3f} {i:>+8.3f}")
    rows = sorted(data["senses"]["rows"], key=lambda r: -max(abs(r["senses"]), abs(r["weights"])))
    lines += ["", "   largest (position, sense) cells"]
    for r in rows[:top]:
        lines.append(f"   {labels[r['position']]:<{width}} sense {r['sense']:>2}: senses "
                     f"{r['senses']:+.3f}, weights {r['weights']:+.3f}, interaction {r['interaction']:+.3f}")
    if data["contextualizer"] is not None:
        matrix, names = layer_matrix(data), layer_names(data)
        lines += ["", "2. contextualizer patching: clean residual stream at (layer, position), "
                      "effect through the weights (senses kept)"]
        header = "   " + " " * 11 + "".join(f"{j:>8}" for j in range(len(labels)))
        lines.append(header)
        for name, row in zip(names, matrix):
            lines.append(f"   {name:<11}" + "".join(f"{v:>+8.3f}" for v in row))
        cells = sorted(data["contextualizer"]["rows"], key=lambda r: -abs(r["effect"]))
        lines += ["", "   largest cells, and the senses the change of weights acts through"]
        for r in cells[:min(top, 5)]:
            split = sorted(enumerate(r["by_sense"]), key=lambda kv: -abs(kv[1]))[:3]
            senses = ", ".join(f"sense {l} {v:+.3f}" for l, v in split)
            lines.append(f"   {names[r['layer']]}, {labels[r['position']]}: {r['effect']:+.3f} "
                         f"({senses})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def panels(data: dict) -> list[tuple[str, list[str], list[list[float]]]]:
    """(title, row labels, matrix) of each heatmap; columns are the positions."""
    k = len(sense_matrix(data, "senses"))
    senses = [f"sense {l}" for l in range(k)]
    out = [("clean sense vector in (weights kept)", senses, sense_matrix(data, "senses")),
           ("clean weight alpha[l, i, j] in (senses kept)", senses, sense_matrix(data, "weights")),
           ("interaction (both patched, beyond the two)", senses, sense_matrix(data, "interaction"))]
    if data["contextualizer"] is not None:
        out.append(("contextualizer: clean residual stream at (layer, position)", layer_names(data),
                    layer_matrix(data)))
    return out


def write_plot(data: dict, path: str) -> str:
    """Heatmaps of the effects, one colour scale centred at 0 (blue: towards the clean
    prediction). .html: Plotly; .png: drawn with Pillow (no kaleido)."""
    title = (f"Patching {data['clean']['text']!r} into {data['corrupted']['text']!r}: "
             f"logit {data['target']['token']!r} - {data['foil']['token']!r} (clean 1, corrupted 0)")
    if Path(path).suffix.lower() == ".png":
        return _write_png(data, title, path)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figures = panels(data)
    labels = position_labels(data)
    vmax = max(1e-9, max(abs(v) for _, _, m in figures for row in m for v in row))
    heights = [len(rows) for _, rows, _ in figures]
    fig = make_subplots(rows=len(figures), cols=1, subplot_titles=[t for t, _, _ in figures],
                        row_heights=heights, vertical_spacing=0.06)
    for n, (_name, rows, matrix) in enumerate(figures, 1):
        fig.add_trace(go.Heatmap(z=matrix, x=labels, y=rows, colorscale="RdBu", zmid=0.0,
                                 zmin=-vmax, zmax=vmax, showscale=n == 1, xgap=1, ygap=1,
                                 hovertemplate="%{y}, %{x}: %{z:.4f}<extra></extra>"), n, 1)
        fig.update_yaxes(autorange="reversed", type="category", row=n, col=1)
        fig.update_xaxes(type="category", row=n, col=1)
    fig.update_layout(title={"text": title, "font": {"size": 13}}, width=1000,
                      height=120 + 22 * sum(heights) + 60 * len(figures),
                      margin={"l": 90, "r": 20, "t": 90, "b": 40})
    fig.write_html(path, include_plotlyjs="cdn")
    return path


def _colour(v: float, vmax: float) -> tuple[int, int, int]:
    """White at 0, blue (33, 102, 172) at +vmax, red (178, 24, 43) at -vmax."""
    a = max(-1.0, min(1.0, v / vmax))
    end = (33, 102, 172) if a >= 0 else (178, 24, 43)
    a = abs(a)
    return tuple(round(255 + (e - 255) * a) for e in end)


def _write_png(data: dict, title: str, path: str) -> str:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ValueError("--plot FILE.png needs Pillow (pip install pillow); or write .html") from None
    figures = panels(data)
    clean, corrupted = data["clean"]["tokens"], data["corrupted"]["tokens"]
    n = len(clean)
    vmax = max(1e-9, max(abs(v) for _, _, m in figures for row in m for v in row))
    cell_w, cell_h, left, top_gap = max(56, min(120, 900 // n)), 16, 90, 44
    width = max(960, left + cell_w * n + 30)
    height = 90 + sum(top_gap + cell_h * len(rows) + 52 for _, rows, _ in figures)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=11)
    head, _, metric = title.partition(": ")
    draw.text((12, 8), head, fill="black", font=font)
    draw.text((12, 28), metric, fill="black", font=font)
    draw.text((12, 50), f"blue: towards the clean prediction, red: away; colour scale +-{vmax:.3f}; "
                        "columns: source positions (clean token, and the corrupted one where "
                        "it differs)", fill=(80, 80, 80), font=small)
    chars = max(4, cell_w // 6)
    clip = lambda text: text if len(text) <= chars else text[: chars - 1] + "~"  # noqa: E731
    y = 70
    for name, rows, matrix in figures:
        total = sum(sum(r) for r in matrix)
        suffix = f" (sum {total:+.3f})" if "contextualizer" not in name else ""
        draw.text((12, y + 16), name + suffix, fill="black", font=font)
        y += top_gap
        for r, (row_name, row) in enumerate(zip(rows, matrix)):
            draw.text((8, y + r * cell_h + 2), row_name, fill="black", font=small)
            for j, v in enumerate(row):
                x0, y0 = left + j * cell_w, y + r * cell_h
                draw.rectangle((x0, y0, x0 + cell_w - 1, y0 + cell_h - 1), fill=_colour(v, vmax))
                if abs(v) >= 0.05 * vmax:
                    text_fill = "white" if abs(v) > 0.6 * vmax else "black"
                    draw.text((x0 + 3, y0 + 2), f"{v:+.2f}", fill=text_fill, font=small)
        y += cell_h * len(rows)
        for j in range(n):
            x0 = left + j * cell_w + 2
            draw.text((x0, y + 4), clip(f"{j} {clean[j]!r}"), fill="black", font=small)
            if corrupted[j] != clean[j]:
                draw.text((x0, y + 18), clip(f"> {corrupted[j]!r}"), fill=(178, 24, 43), font=small)
        y += 52
    img.save(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)  # a bad argument fails before the model loads
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    from backpack_core.interpret.patching import patch_prompts

    result = patch_prompts(model, tokenizer, args.clean, args.corrupted, args.target, args.foil,
                           contextualizer=not args.no_contextualizer)
    data = {**result.to_dict(), "model": args.model or "data/backpack-mini"}
    return _cli.emit(args, data, lambda d: render(d, args.top), write_plot)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="patch"))
