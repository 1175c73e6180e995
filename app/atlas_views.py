"""The Senses page's Atlas section: reading the chosen corpus, building (or loading) the atlas
with a progress bar, and turning `backpack_core.interpret.atlas` results into tables and highlighted
snippets. The computation is all in `backpack_core.interpret.atlas`; this is wiring and formatting.

An atlas is built once per (model, corpus, window length) and cached on disk by
`SenseAtlas.for_corpus`; the session keeps the one it built or loaded (`st.session_state`).
"""

from __future__ import annotations

import html
from typing import Any

import streamlit as st

from backpack_core.common.corpus import corpus_from_choice
from backpack_core.interpret.atlas import SenseAtlas
from backpack_core.model.tokenizer import show_token

SOURCES = {"Penn Treebank (test)": "ptb", "Upload a text file": "upload",
           "Training corpus (validation split)": "validation"}
SESSION_KEY = "senses:atlas"
STOP_NAME = "senses:atlas-build"  # state.run_with_stop's name for the build


def read_source(label: str, uploaded, tokenizer, max_tokens: int):
    """The Corpus of a source label (an uploaded file: Streamlit's UploadedFile or None)."""
    upload = (uploaded.name, uploaded.getvalue()) if uploaded is not None else None
    return corpus_from_choice(SOURCES[label], tokenizer, max_tokens, upload=upload)


def build(model, tokenizer, corpus, model_key: tuple) -> SenseAtlas:
    """The atlas of `corpus` (from the disk cache, or built with a progress bar, the time left
    and a Stop button: `state.run_with_stop`), kept in the session with its model."""
    import state

    try:
        atlas = state.run_with_stop(
            STOP_NAME, f"Sense atlas of {corpus.name} ({len(corpus):,} tokens)",
            lambda report: SenseAtlas.for_corpus(model, tokenizer, corpus, progress=report),
            work_tokens=len(corpus))
    except Exception:
        st.session_state.pop(f"_running:{STOP_NAME}", None)  # failed, not stopped
        raise
    st.session_state[SESSION_KEY] = (model_key, atlas)
    return atlas


def current(model_key: tuple) -> SenseAtlas | None:
    """This session's atlas, if it was built for the model in use."""
    kept = st.session_state.get(SESSION_KEY)
    return kept[1] if kept is not None and kept[0] == model_key else None


def usage_rows(report) -> list[dict[str, Any]]:
    return [{"sense": s.sense, "mean weight": round(s.mean_weight, 4),
             "total weight": round(s.total_weight, 3), "share": round(s.share, 4),
             "max weight": round(s.max_weight, 4), "peak alpha": round(s.peak_weight, 4),
             "dead": s.dead} for s in report.senses]


def _escape(text: str) -> str:
    """Text shown as-is inside st.markdown: HTML escaped, and Markdown's (and KaTeX's $)
    special characters backslash-escaped."""
    text = html.escape(text.replace("\n", " ⏎ "), quote=False)
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!$~|" else c for c in text)


def snippet_html(context) -> str:
    """The snippet with the occurrence and the supported position highlighted (escaped HTML)."""
    styles = {"word": "background:rgba(255,196,0,.55);font-weight:600",
              "query": "background:rgba(31,119,180,.30);border-bottom:2px solid #1f77b4",
              "gap": "color:#888", "text": ""}
    if not any(role == "query" for _, role in context.snippet):  # it supported its own prediction
        styles["word"] += ";" + styles["query"]
    parts = []
    for text, role in context.snippet:
        text = _escape(text)
        parts.append(f'<span style="{styles[role]}">{text}</span>' if styles[role] else text)
    return "".join(parts)


def predictions_text(context) -> str:
    preds = ", ".join(f"{_escape(show_token(p['token']))} ({p['contribution']:+.2f})"
                      for p in context.predictions)
    nxt = context.next_token
    actual = (f"; actual next {_escape(show_token(nxt['token']))} ({nxt['contribution']:+.2f})"
              if nxt else "")
    return f"supports {preds}{actual}" if preds or actual else ""


def table_rows(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"sense": r["sense"], "magnitude share": round(r["norm_share"], 4),
             "self share": round(r["self_share"], 4), "mean distance": round(r["mean_distance"], 2),
             "dead words": r["dead_words"],
             "most used by": " ".join(show_token(w["token"]) for w in r["top_words"])} for r in table]


def dead_rows(dead: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"word": show_token(d["token"]), "sense": d["sense"], "occurrences": d["count"],
             "max weight": round(d["max_weight"], 4)} for d in dead]
