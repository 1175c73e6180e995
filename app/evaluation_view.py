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


def loss_text(value: float | None) -> str:
    """A loss change as the table shows it; '–' where there is no position to average over."""
    return "–" if value is None else f"{value:+.4f}"


def absent_note(result: EditEvaluation) -> str | None:
    """Why an edit changes nothing on this corpus: its word never occurs there (and the other
    case of it does, when the corpus is lower-cased). None when every edited word occurs."""
    absent = result.absent_words
    if not absent:
        return None
    parts = []
    for w in absent:
        part = (f"{w['word']!r} never occurs in {result.corpus['name']} "
                f"(its {result.corpus['tokens']:,} tokens)")
        if w["other"]:
            part += (f"; {w['other']['word']!r} occurs {w['other']['count']:,} times: the corpus "
                     "may be lower-cased (or differently cased)")
        parts.append(part)
    what = ("the edits of that word change no prediction here" if len(absent) == len(result.words)
            else "the edits of those words change nothing here")
    return "; ".join(parts) + f". So {what}: choose a corpus where the word occurs."


def sweep_rows(result: EditEvaluation) -> list[dict[str, Any]]:
    """One row per strength: radius, loss change (all / inside / outside), success rate. A loss
    over no position (an empty blast radius) reads '–', not None."""
    return [{"strength": r.strength, "blast radius": r.radius,
             "Δloss all": loss_text(r.loss_change["all"]),
             "Δloss inside": loss_text(r.loss_change["inside"]),
             "Δloss outside": loss_text(r.loss_change["outside"]),
             "loss after": round(r.loss_after["all"], 4),
             "success": "–" if r.success_rate is None else f"{r.success_rate:.0%}"}
            for r in result.sweep]


def prompt_rows(result: EditEvaluation) -> list[dict[str, Any]]:
    """One row per target prompt: log-probabilities and success before and at strength 1."""
    one = result.strengths.index(1.0)
    rows = []
    for p in result.prompts:
        after = p.by_strength[one]
        rows.append({"prompt": p.prompt, "target": p.target, "foil": p.foil or "",
                     "logp before": p.before.target_logprob, "logp after": after.target_logprob,
                     # ranks from 1 (the most probable next token), as everywhere in the app
                     "rank before": p.before.target_rank + 1, "rank after": after.target_rank + 1,
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
