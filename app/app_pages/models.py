"""Models: choose the model, device and dtype; the model card's numbers; training curves."""

import components as ui
import state
import streamlit as st
import views

from backpack_core.model import access
from backpack_core.model.loading import DEFAULT_MODEL_DIR, available_devices

PAGE = "models"
SOURCES = {"default": "default", "shipped": "shipped (data/backpack-mini)",
           "directory": "local directory", "hub": "hub id"}
env_model = state.default_choice().source

st.title("Models")
current = state.model_choice()
st.caption(f"This session uses **{views.plain(current.label)}**. Each model is loaded once per "
           "server process and shared by every session; the choice here applies to your session only.")

st.subheader("Choose the model")
kinds = (["default"] if env_model else []) + ["shipped", "directory", "hub"]
labels = dict(SOURCES, default=f"default (BACKPACK_MODEL={env_model})")
kind = st.radio("Model", kinds, format_func=labels.get, horizontal=True, key=f"{PAGE}:kind")
source: str | None = None
if kind == "default":
    source = env_model
elif kind == "directory":
    source = st.text_input("Directory with config.json, model.safetensors (or pytorch_model.bin) "
                           "and tokenizer.json", key=f"{PAGE}:dir", placeholder="runs/backpack-mini-cpu")
elif kind == "hub":
    source = st.text_input("Hub id (downloaded when online)", "stanfordnlp/backpack-gpt2",
                           key=f"{PAGE}:hub")
devices = available_devices()
cols = st.columns(2)
device = cols[0].selectbox("Device", devices, key=f"{PAGE}:device",
                           index=devices.index(current.device) if current.device in devices else 0)
dtypes = list(state.DTYPES)
dtype = cols[1].selectbox("dtype", dtypes, key=f"{PAGE}:dtype",
                          index=dtypes.index(current.dtype) if current.dtype in dtypes else 0,
                          help="float32 keeps attributions exact; bf16 / fp16 are for GPUs")


@state.guarded
def on_load() -> None:
    """Load the chosen model (a callback: it runs before the page and the sidebar are drawn, so
    both show the new model in this run)."""
    s = st.session_state  # the widgets' values now (the page's variables are from the last run)
    kind = s[f"{PAGE}:kind"]
    source = {"default": env_model, "shipped": None, "directory": s.get(f"{PAGE}:dir"),
              "hub": s.get(f"{PAGE}:hub")}[kind]
    if kind in ("directory", "hub") and not (source or "").strip():
        s[f"{PAGE}:message"] = ("error", "Give a model directory or hub id.")
        return
    try:  # only what the operator allows (BACKPACK_MODEL_ROOTS, BACKPACK_ALLOW_HUB)
        choice = state.ModelChoice(access.allowed_source(source), s[f"{PAGE}:device"],
                                   s[f"{PAGE}:dtype"])
        state.load_model(choice)
    except (ValueError, OSError) as err:
        message = " ".join(str(err).split())
        st.session_state[f"{PAGE}:message"] = ("error", f"Could not load the model: {message}")
    else:
        state.choose_model(choice)
        st.session_state.pop(f"{PAGE}:metrics", None)  # show the new model's own curves
        st.session_state[f"{PAGE}:message"] = ("success", f"Loaded {choice.label}.")


st.button("Load", type="primary", key=f"{PAGE}:load", on_click=on_load)
if st.session_state.get(f"{PAGE}:message"):
    level, text = st.session_state.pop(f"{PAGE}:message")
    (st.error if level == "error" else st.success)(views.plain(text))
current = state.model_choice()

st.subheader("The model")
try:
    model, tokenizer = state.load_model(current)
except (ValueError, OSError) as err:
    state.show_error(err, f"Could not load {current.label}")
    model = tokenizer = None
if model is not None:
    ui.model_metrics(model, tokenizer)
    with st.expander("Configuration and parameters"):
        st.dataframe(views.model_rows(model, tokenizer), hide_index=True, key=f"{PAGE}:config")

card = views.model_card(current.source)
st.subheader("Model card")
if card.headline:
    tiles = st.columns(3)
    for n, row in enumerate(card.headline[:12]):
        tiles[n % 3].metric(row["label"], row["value"], help=f"eval.json: {row['metric']}")
if card.numbers:
    with st.expander(f"Every number in `{card.directory}/eval.json` ({len(card.numbers)})",
                     expanded=not card.headline):
        st.dataframe(card.numbers, hide_index=True, key=f"{PAGE}:eval")
if card.readme:
    with st.expander("Model card (README.md)", expanded=not card.numbers):
        # as text: a card's Markdown could make the browser fetch an image from outside
        st.code(card.readme, language="markdown", wrap_lines=True)
for note in card.notes:
    st.caption(views.plain(note))
with st.expander("Beside the published Backpack (Hewitt et al. 2023)", expanded=True):
    st.caption("The paper's sizes (its training code: OpenWebText, GPT-2 tokenizer, 100k steps of "
               "about 512k tokens) beside this model's; the paper's perplexities are on "
               "OpenWebText, WikiText and LAMBADA, not comparable with a small model trained "
               "on another corpus. From docs/backpack-reference.md.")
    st.dataframe(views.reference_rows(model), hide_index=True, key=f"{PAGE}:reference")
    st.caption("A calibration at small scale (the reference's run on the offline corpus: width "
               "256, 6 layers, 16 senses, 98M tokens, one H100): " + "; ".join(
                   f"{k} {v}" for k, v in views.CALIBRATION.items()) + ".")

st.subheader("Training curves")
directory = views.model_directory(current.source)
found = views.find_metrics(*([directory] if directory else []), state.REPO_ROOT / "runs")
OTHER = "another file…"
picked = st.selectbox("Metrics file (a run's metrics.jsonl)", found + [OTHER], key=f"{PAGE}:metrics",
                      format_func=lambda p: p if p == OTHER else access.display_source(p))
path = st.text_input("Path to a run directory or metrics.jsonl", key=f"{PAGE}:metrics-path") \
    if picked == OTHER else picked
if path:
    try:
        curves = views.training_curves(access.allowed_path(path, "this metrics file"))
    except (OSError, ValueError) as err:
        state.show_error(err)
    else:
        train, val = curves.train, curves.val
        if not train.get("step") and not val.get("step"):
            st.info(f"{views.plain(curves.path)} has no records yet.")
        else:
            series = []
            if train.get("loss"):
                series.append(("train loss", train["step"], train["loss"]))
            if val.get("val_loss"):
                series.append(("validation loss", val["step"], val["val_loss"]))
            left, right = st.columns(2)
            left.plotly_chart(ui.curves(series, "loss", y_title="nats / token"), key=f"{PAGE}:loss")
            if train.get("lr"):
                right.plotly_chart(ui.curves([("learning rate", train["step"], train["lr"])],
                                             "learning rate"), key=f"{PAGE}:lr")
            last = {k: v[-1] for k, v in train.items() if v}
            n = st.columns(4)
            n[0].metric("steps", f"{int(last.get('step', 0)):,}")
            n[1].metric("tokens", f"{int(last.get('tokens', 0)):,}" if "tokens" in last else "–")
            n[2].metric("last train loss", f"{last['loss']:.3f}" if "loss" in last else "–")
            n[3].metric("last val loss", f"{val['val_loss'][-1]:.3f}" if val.get("val_loss") else "–")
            if curves.skipped:
                st.caption(f"{curves.skipped} unreadable line(s) skipped.")
elif not found:
    st.caption(f"No metrics.jsonl found next to the model or under runs/ (shipped model: "
               f"{DEFAULT_MODEL_DIR.name}).")

state.write_url()  # the model, device and dtype (when not the default) in the URL
