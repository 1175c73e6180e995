"""The Steer page's "Evaluate on a dataset": its form read and evaluated (`evaluate`), and the tables and
the figure of an `EditEvaluation` (backpack_core.interpret.edit_effects). No Streamlit here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go

from backpack_core.common.corpus import corpus_from_choice
from backpack_core.interpret.edit_effects import (
    EditEvaluation,
    evaluate_edits,
    parse_strengths,
    read_prompts,
)

DATASETS = {"ptb": "Penn Treebank (test split)", "upload": "a text file (upload)",
            "text": "the text above"}


def evaluate(model, tokenizer, edits: dict, choice: str, max_tokens: int, strengths: str,
             prompts: tuple[str, bytes] | None = None, upload: tuple[str, bytes] | None = None,
             text: str = "", progress: Callable[[int, int], None] | None = None) -> EditEvaluation:
    """The page's form -> `evaluate_edits`: strengths as typed, prompts and corpus uploads as
    (name, bytes). Every input is checked before the pass over the corpus; ValueError (EditError,
    PromptError, CorpusError, LimitError) says what is wrong."""
    strength_list = parse_strengths(strengths)
    prompt_list = read_prompts(prompts[1], name=prompts[0]) if prompts is not None else None
    corpus = corpus_from_choice(choice, tokenizer, max_tokens, upload=upload, text=text)
    return evaluate_edits(model, tokenizer, edits, corpus, prompts=prompt_list,
                          strengths=strength_list, progress=progress or False)


def sweep_rows(result: EditEvaluation) -> list[dict[str, Any]]:
    """One row per strength: radius, loss change (all / inside / outside), success rate."""
    return [{"strength": r.strength, "blast radius": r.radius,
             "Δloss all": r.loss_change["all"], "Δloss inside": r.loss_change["inside"],
             "Δloss outside": r.loss_change["outside"], "loss after": r.loss_after["all"],
             "success": r.success_rate} for r in result.sweep]


def prompt_rows(result: EditEvaluation) -> list[dict[str, Any]]:
    """One row per target prompt: log-probabilities and success before and at strength 1."""
    one = result.strengths.index(1.0)
    rows = []
    for p in result.prompts:
        after = p.by_strength[one]
        rows.append({"prompt": p.prompt, "target": p.target, "foil": p.foil or "",
                     "logp before": p.before.target_logprob, "logp after": after.target_logprob,
                     "rank before": p.before.target_rank, "rank after": after.target_rank,
                     "success before": p.before.success, "success after": after.success})
    return rows


def sweep_figure(result: EditEvaluation) -> go.Figure:
    """Success rate against the loss change inside the blast radius, one point per strength
    (labelled); without prompts, the loss changes against the strength."""
    labels = [f"{r.strength:g}" for r in result.sweep]
    inside = [r.loss_change["inside"] or 0.0 for r in result.sweep]
    if result.prompts:
        fig = go.Figure(go.Scatter(
            x=inside, y=[r.success_rate for r in result.sweep], mode="lines+markers+text",
            text=labels, textposition="top center", name="strength",
            hovertemplate="strength %{text}: Δloss inside %{x:.4f}, success %{y:.0%}<extra></extra>"))
        x_title, y_title = "Δ loss inside the blast radius (nats/token)", "target-prompt success"
        title = "Success vs loss change, by strength (labels)"
        yaxis = {"title": y_title, "tickformat": ".0%", "range": [-0.05, 1.1]}
    else:
        strengths = [r.strength for r in result.sweep]
        fig = go.Figure([go.Scatter(x=strengths, y=inside, mode="lines+markers", name="inside"),
                         go.Scatter(x=strengths, y=[r.loss_change["all"] for r in result.sweep],
                                    mode="lines+markers", name="all text")])
        x_title, title = "strength", "Loss change by strength (no target prompts)"
        yaxis = {"title": "Δ loss (nats/token)"}
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=340,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis={"title": x_title},
                      yaxis=yaxis, legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    return fig
