"""PNG figures drawn with Pillow: no kaleido, no browser, no network (the commands' --plot FILE.png).

Two panels cover the commands' figures: `bars` (grouped bars, negative values below a zero line,
an optional dashed reference line) and `heat_table` (a grid of labelled cells coloured by a
score). A figure is a white `canvas` with a title; panels are drawn into boxes
(left, top, right, bottom) of it.
"""

from __future__ import annotations

from collections.abc import Sequence

RGB = tuple[int, int, int]
BLUE, ORANGE, RED, GREY = (31, 119, 180), (255, 127, 14), (214, 39, 40), (187, 187, 187)


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ValueError("--plot FILE.png needs Pillow (pip install pillow); or write .html") from None
    return Image, ImageDraw, ImageFont


def font(size: int):
    return _pil()[2].load_default(size=size)


def canvas(width: int, height: int, title: str, subtitle: str = ""):
    """(image, draw): a white image with the title (and a smaller subtitle) at the top."""
    image_mod, draw_mod, _ = _pil()
    img = image_mod.new("RGB", (width, height), "white")
    draw = draw_mod.Draw(img)
    draw.text((20, 16), title, fill="black", font=font(15))
    if subtitle:
        draw.text((20, 38), subtitle, fill=RED, font=font(12))
    return img, draw


def bars(draw, box: tuple[int, int, int, int], labels: Sequence[str],
         series: Sequence[tuple[str, Sequence[float], RGB | Sequence[RGB]]], title: str = "",
         hline: float | None = None) -> None:
    """Grouped bars: one group per label, one bar per series (name, values, colour or one colour
    per bar). The value axis spans 0 and every value (and `hline`, drawn dashed)."""
    left, top, right, bottom = box
    small = font(12)
    if title:
        draw.text((left, top), title, fill="black", font=small)
    values = [v for _, vs, _ in series for v in vs] + ([hline] if hline is not None else [])
    hi, lo = max([0.0, *values]), min([0.0, *values])
    span = (hi - lo) or 1.0
    x0, x1, y_top, y_bottom = left + 50, right, top + 40, bottom - 22
    legend = [(name, colour) for name, _, colour in series if name and isinstance(colour[0], int)]
    for n, (name, colour) in enumerate(legend):
        draw.rectangle((x1 - 160, top + 2 + 14 * n, x1 - 150, top + 12 + 14 * n), fill=colour)
        draw.text((x1 - 145, top + 14 * n), name, fill="black", font=small)

    def y(v: float) -> float:
        return y_bottom - (v - lo) / span * (y_bottom - y_top)

    draw.line((x0, y_top, x0, y_bottom), fill="black")
    draw.line((x0, y(0.0), x1, y(0.0)), fill="black")
    for v in sorted({lo, 0.0, hi}):
        draw.text((left, y(v) - 7), f"{v:.3g}", fill="black", font=small)
        draw.line((x0 - 4, y(v), x0, y(v)), fill="black")
    if hline is not None:
        for xx in range(x0, x1, 12):
            draw.line((xx, y(hline), min(xx + 6, x1), y(hline)), fill=RED)
    step = (x1 - x0) / max(len(labels), 1)
    width = step * 0.7 / max(len(series), 1)
    for i, label in enumerate(labels):
        group = x0 + i * step + step * 0.15
        for j, (_, vs, colour) in enumerate(series):
            c = colour if isinstance(colour[0], int) else colour[i]
            a, b = sorted((y(0.0), y(vs[i])))
            draw.rectangle((group + j * width, a, group + (j + 1) * width - 1, b), fill=c)
        text = label if len(label) <= max(int(step / 7), 3) else label[: max(int(step / 7) - 1, 2)] + "…"
        draw.text((group, y_bottom + 6), text, fill="black", font=small)


def heat_table(draw, box: tuple[int, int, int, int], row_labels: Sequence[str],
               cells: Sequence[Sequence[tuple[str, float]]], colour: RGB, title: str = "") -> None:
    """A grid: one row per label, cells (text, score) shaded from white (lowest |score| of the
    table) to `colour` (highest)."""
    left, top, right, bottom = box
    small = font(11)
    if title:
        draw.text((left + 90, top), title, fill="black", font=font(12))
    scores = [abs(s) for row in cells for _, s in row] or [0.0]
    lo, hi = min(scores), max(scores)
    n_rows, n_cols = max(len(cells), 1), max((len(r) for r in cells), default=1)
    x0, y0 = left + 90, top + 20
    w, h = (right - x0) / n_cols, (bottom - y0) / n_rows
    for r, (label, row) in enumerate(zip(row_labels, cells)):
        draw.text((left, y0 + r * h + h / 2 - 6), label, fill="black", font=small)
        for c, (text, score) in enumerate(row):
            t = (abs(score) - lo) / ((hi - lo) or 1.0)
            fill = tuple(round(255 + (ch - 255) * t) for ch in colour)
            cell = (x0 + c * w, y0 + r * h, x0 + (c + 1) * w - 1, y0 + (r + 1) * h - 1)
            draw.rectangle(cell, fill=fill, outline="white")
            ink = "white" if t > 0.6 else "black"
            shown = text if len(text) <= max(int(w / 6.5), 3) else text[: max(int(w / 6.5) - 1, 2)] + "…"
            draw.text((cell[0] + 3, cell[1] + h / 2 - 6), shown, fill=ink, font=small)
