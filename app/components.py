"""Rendering helpers: Plotly figures and styled tables from `views` (app/views.py) data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go

if TYPE_CHECKING:  # pragma: no cover
    from views import Heatmap

CHANGED = "background-color: rgba(255, 196, 0, 0.30)"
ENTERED = "background-color: rgba(46, 160, 67, 0.28)"
LEFT = "background-color: rgba(218, 54, 51, 0.22)"


def _clip(word: str, max_chars: int) -> str:
    return word if len(word) <= max_chars else word[: max_chars - 1] + "…"


def heatmap(h: Heatmap, colorscale: str = "Viridis", zmid: float | None = None,
            cell_text: bool = True, height: int | None = None, reverse_y: bool = True,
            colorbar_title: str = "", max_chars: int = 12, font_size: int = 11,
            clickable: bool = False) -> go.Figure:
    """A Plotly heatmap: values as colour; with cell_text, the words written in the cells
    (cut to max_chars; the hover shows them whole). clickable: a click on a cell selects it
    (st.plotly_chart(on_select=...) gets its x and y): Plotly cannot select heatmap cells, so an
    invisible marker sits on each non-blank cell and carries the hover and the click."""
    n_rows, n_cols = len(h.y), len(h.x)
    kwargs: dict[str, Any] = {}
    if h.text is not None and cell_text:
        kwargs.update(text=[[_clip(w, max_chars) for w in row] for row in h.text],
                      customdata=h.text, texttemplate="%{text}", textfont={"size": font_size},
                      hovertemplate="%{y}, %{x}: %{customdata} (%{z:.3f})<extra></extra>")
    else:
        kwargs.update(hovertemplate="%{y} ← %{x}: %{z:.4f}<extra></extra>")
    if zmid is not None:
        kwargs["zmid"] = zmid
    elif h.zmax is not None:
        kwargs.update(zmin=0.0 if h.zmin is None else h.zmin, zmax=h.zmax)
    gap = 1 if max(n_rows, n_cols) <= 40 else 0  # gaps would hide the cells of a long text
    fig = go.Figure(go.Heatmap(z=h.z, x=h.x, y=h.y, colorscale=colorscale, hoverongaps=False,
                               colorbar={"title": {"text": h.colorbar or colorbar_title}},
                               xgap=gap, ygap=gap, **kwargs))
    if clickable:
        cells = [(x, y, v) for y, row in zip(h.y, h.z) for x, v in zip(h.x, row) if v is not None]
        fig.data[0].hoverinfo = "skip"
        fig.add_trace(go.Scatter(
            x=[c[0] for c in cells], y=[c[1] for c in cells], customdata=[c[2] for c in cells],
            mode="markers", showlegend=False, marker={"opacity": 0, "symbol": "square",
                                                         "size": max(6, min(40, 600 // n_cols))},
            hovertemplate="%{y} ← %{x}: %{customdata:.4f}<extra>click: attribute this row</extra>"))
    fig.update_layout(
        title={"text": h.title + (f"<br><sup>{h.note}</sup>" if h.note else ""), "font": {"size": 14}},
        height=height or max(260, min(900, 60 + 26 * n_rows)),
        margin={"l": 10, "r": 10, "t": 60 if h.note else 40, "b": 10},
        xaxis={"title": h.x_title, "type": "category", "tickangle": -45 if n_cols > 12 else 0},
        yaxis={"title": h.y_title, "type": "category",
               "autorange": "reversed" if reverse_y else True},
    )
    return fig


def bars(x: list[Any], y: list[float], title: str, x_title: str = "", y_title: str = "",
         height: int = 300, diverging: bool = True) -> go.Figure:
    """Bars, positive blue and negative red when diverging."""
    colors = ["#1f77b4" if v >= 0 else "#d62728" for v in y] if diverging else "#1f77b4"
    fig = go.Figure(go.Bar(x=[str(v) for v in x], y=y, marker_color=colors))
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis={"title": x_title, "type": "category"}, yaxis={"title": y_title})
    return fig


def before_after_bars(detail: list[dict[str, Any]], title: str) -> go.Figure:
    """Probabilities of the tokens in the top-k before or after, before vs after."""
    before = {r["before"]: r["p before"] for r in detail}
    after = {r["after"]: r["p after"] for r in detail}
    tokens = list(dict.fromkeys([*before, *after]))
    fig = go.Figure([
        go.Bar(name="before", x=tokens, y=[before.get(t) for t in tokens], marker_color="#9aa5b1"),
        go.Bar(name="after", x=tokens, y=[after.get(t) for t in tokens], marker_color="#e8590c"),
    ])
    fig.update_layout(barmode="group", title={"text": title, "font": {"size": 14}}, height=320,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis={"type": "category"}, yaxis={"title": "probability"},
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    return fig


def curves(columns: list[tuple[str, list[float], list[float | None]]], title: str,
           x_title: str = "step", y_title: str = "", log_y: bool = False) -> go.Figure:
    """Line chart of (name, x, y) series."""
    fig = go.Figure([go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines",
                                name=name) for name, x, y in columns])
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=320,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis={"title": x_title}, yaxis={"title": y_title,
                                                       "type": "log" if log_y else "linear"},
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    return fig


def steer_table(rows: list[dict[str, Any]]):
    """Per-position predictions before / after, changed rows highlighted."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["changed"] = frame["changed"].map({True: "changed", False: ""})

    def highlight(row: pd.Series) -> list[str]:
        return [CHANGED if row["changed"] else ""] * len(row)

    return frame.style.apply(highlight, axis=1).format(
        {"p before": "{:.3f}", "p after": "{:.3f}", "KL": "{:.2e}"})


def detail_table(detail: list[dict[str, Any]]):
    """Top-k before and after at one position: tokens that left red, that entered green."""
    frame = pd.DataFrame(detail)
    if frame.empty:
        return frame
    left, entered = frame.pop("left").tolist(), frame.pop("entered").tolist()

    def highlight(column: pd.Series) -> list[str]:
        if column.name in ("before", "p before"):
            return [LEFT if flag else "" for flag in left]
        if column.name in ("after", "p after"):
            return [ENTERED if flag else "" for flag in entered]
        return [""] * len(column)

    return frame.style.apply(highlight, axis=0).format({"p before": "{:.3f}", "p after": "{:.3f}"})


def model_metrics(model, tokenizer) -> None:
    """One row of the model's shape: senses, width, layers, vocabulary, context."""
    import streamlit as st

    cfg = model.config
    cols = st.columns(5)
    cols[0].metric("senses per word (k)", cfg.num_senses)
    cols[1].metric("width (d)", cfg.n_embd)
    cols[2].metric("layers", cfg.n_layer)
    cols[3].metric("vocabulary", f"{len(tokenizer):,}")
    cols[4].metric("context (tokens)", cfg.n_positions)
