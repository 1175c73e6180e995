"""Context: a text's tokens and next-token predictions, its contextualization weights, the
exact attribution of one prediction by source token and sense, patching against a corrupted
prompt, and the model beside its Transformer twin."""

import json

import components as ui
import state
import streamlit as st
import views

PAGE = "context"
params = state.read_url_once(PAGE)
state.restore_text(PAGE, params)
for name, key in (("pos", f"{PAGE}:pos"), ("sense", f"{PAGE}:sense")):
    value = state.int_param(params, name)
    if value is not None:
        st.session_state[f"{key}:pending"] = value
if params.get("target"):
    st.session_state[f"{PAGE}:custom-target"] = params["target"]

st.title("Context")
st.caption("Each prediction is a weighted sum of the senses of the tokens so far; the "
           "contextualization weights alpha[l, i, j] say how much sense l of source token j "
           "counts for the prediction after token i.")
text = state.text_area(PAGE, help="Up to the model's context length, in tokens.")
try:
    session = state.text_session(PAGE, text)
except ValueError as err:
    state.show_error(err)
    st.stop()
k = session.contextualization.shape[0]
tokenizer = session.tokenizer
st.caption(f"{session.n} tokens · {k} senses · context {session.model.config.n_positions} tokens")

# -- tokens and predictions --
st.subheader("Tokens and next-token predictions")
state.persist(f"{PAGE}:top", 5)
n_top = st.slider("Predictions per token", 1, 10, key=f"{PAGE}:top")
st.dataframe(views.prediction_rows(session, top=n_top), hide_index=True, key=f"{PAGE}:predictions",
             height=min(420, 38 + 35 * session.n),
             column_config={"p(next token)": st.column_config.ProgressColumn(
                 "p(next token)", min_value=0.0, max_value=1.0, format="%.3f"),
                 "log p(next token)": st.column_config.NumberColumn(format="%.2f")})
st.caption("✓ marks the token that actually follows; its rank is among all the model's predictions.")


def pending_choice(key: str, options: list, default) -> None:
    """Select a value from a shared link (or keep a still-valid selection)."""
    pending = st.session_state.pop(f"{key}:pending", None)
    if pending in options:
        st.session_state[key] = pending
    elif st.session_state.get(key) not in options:
        st.session_state[key] = default


# the position (of the token text below and of the attribution): a link's, or kept
positions = list(range(session.n))
state.persist(f"{PAGE}:pos", shared="position")
if state.text_changed(PAGE, text):  # a new text: its last position, not the old text's
    st.session_state[f"{PAGE}:pos"] = session.n - 1
pending_choice(f"{PAGE}:pos", positions, session.n - 1)

# -- contextualization --
st.subheader("Contextualization weights")
sense_options = ["all"] + list(range(k))
for key, default in (("sense", "all"), ("log", False), ("hide-diagonal", False)):
    state.persist(f"{PAGE}:{key}", default)
pending_choice(f"{PAGE}:sense", sense_options, "all")
cols = st.columns([2, 1, 1])
sense = cols[0].selectbox("Sense", sense_options, key=f"{PAGE}:sense",
                          format_func=lambda s: "all senses, summed" if s == "all" else f"sense {s}")
log_scale = cols[1].toggle("log scale", key=f"{PAGE}:log")
hide_diagonal = cols[2].toggle("hide the diagonal", key=f"{PAGE}:hide-diagonal",
                               help="leave out each token's weight on its own senses")
heat = views.contextualization_heatmap(session, None if sense == "all" else sense,
                                       log_scale=log_scale, hide_diagonal=hide_diagonal)


@state.guarded
def on_cell() -> None:
    """A click on a cell (query i, source j) picks position i for the attribution below."""
    cell = views.picked_cell(st.session_state.get(f"{PAGE}:contextualization"))
    if cell is not None:
        st.session_state[f"{PAGE}:pos"] = cell[0]


heat_column, text_column = st.columns([3, 2])
heat_column.plotly_chart(ui.heatmap(heat, "Viridis", cell_text=False, colorbar_title="alpha",
                                    height=max(380, min(900, 120 + 14 * session.n)), clickable=True),
                         key=f"{PAGE}:contextualization", on_select=on_cell, selection_mode="points")
heat_column.caption("Click a cell to attribute that row's prediction below.")
shown_position = st.session_state[f"{PAGE}:pos"]
text_column.markdown(f"**The text, coloured by the weight of each token in the prediction after "
                     f"position {shown_position}** ({'all senses' if sense == 'all' else f'sense {sense}'}; "
                     "hover a token: its weight sense by sense)")
text_column.markdown(views.token_weights_html(session, shown_position, None if sense == "all" else sense),
                     unsafe_allow_html=True)

# -- attribution --
st.subheader("Attribution of one prediction")
st.caption("The logit of a word after position i is exactly Σ_l Σ_(j≤i) alpha[l, i, j] · "
           "(E_word · C(x_j)_l): the contributions below sum to it.")
cols = st.columns([2, 2, 2])
position = cols[0].selectbox("Position i (the prediction after this token)", positions,
                             key=f"{PAGE}:pos",
                             format_func=lambda i: views.position_label(session, i))
options = views.target_options(session, position)
target_pick = cols[1].selectbox("Target word", options, key=f"{PAGE}:target",
                                format_func=lambda t: views.readable_token(tokenizer, t))
custom = cols[2].text_input("…or another word (one token)", key=f"{PAGE}:custom-target",
                            help=views.WORD_HELP)
try:
    target = views.typed_word(custom, tokenizer, session.model.config.vocab_size) if custom \
        else target_pick
    view = views.attribution_view(session, target, position)
except ValueError as err:
    state.show_error(err, "Attribution")
else:
    m = st.columns(3)
    m[0].metric("logit of the target", f"{view.logit:.4f}")
    m[1].metric("sum of the contributions", f"{view.total:.4f}")
    m[2].metric("target", views.readable_token(tokenizer, view.target_id))
    st.plotly_chart(ui.heatmap(view.heatmap, "RdBu", zmid=0.0, cell_text=False,
                               colorbar_title="contribution", height=max(300, 60 + 22 * k)),
                    key=f"{PAGE}:contributions")
    left, right = st.columns(2)
    left.plotly_chart(ui.bars([f"{r['position']} {r['token']}" for r in view.by_position],
                              [r["contribution"] for r in view.by_position],
                              "by source token (summed over senses)", y_title="contribution"),
                      key=f"{PAGE}:by-position")
    right.plotly_chart(ui.bars([f"sense {r['sense']}" for r in view.by_sense],
                               [r["contribution"] for r in view.by_sense],
                               "by sense (summed over source tokens)", y_title="contribution"),
                       key=f"{PAGE}:by-sense")
    st.markdown("**Largest contributions** (source token, sense)")
    st.dataframe(view.top, hide_index=True, key=f"{PAGE}:top-contributions")

state.write_url(text=text, pos=position, sense=None if sense == "all" else sense,
                target=custom or None)


# -- patching: the text (clean) against a corrupted prompt --

def patching_section(text: str, session, params: dict) -> None:
    """Sense / weight patching and contextualizer patching at the last position of the text."""
    st.subheader("Patching: what was said, and how it was weighted")
    st.caption("Change a word of the text (the same number of tokens) and see what carries the "
               "prediction after the last token. Metric: logit(target) − logit(foil), 1 on the "
               "text above, 0 on the corrupted prompt. Each sense vector and each weight "
               "alpha[l, i, j] of the text put into the corrupted run, exactly (no transformer "
               "pass); then the contextualizer's residual stream per (layer, position).")
    if params.get("corrupted"):  # a shared link (read once per session)
        st.session_state[f"{PAGE}:corrupted"] = params["corrupted"]
    for key in ("corrupted", "patch-target", "patch-foil"):
        state.persist(f"{PAGE}:{key}", "")
    corrupted = st.text_input("Corrupted prompt (the same number of tokens as the text)",
                              key=f"{PAGE}:corrupted", placeholder="the text with one word changed")
    cols = st.columns(2)
    target = cols[0].text_input("Target word (default: the text's top prediction)",
                                key=f"{PAGE}:patch-target")
    foil = cols[1].text_input("Foil word (default: the corrupted prompt's top prediction)",
                              key=f"{PAGE}:patch-foil")
    if not corrupted.strip():
        shown = " · ".join(views.show_token(t) for t in session.tokens[:24])
        st.caption(f"The text has {session.n} tokens: {shown}{' …' if session.n > 24 else ''}")
        return
    try:
        view = state.memo("patching", session, [corrupted, target, foil], lambda: views.patching_view(
            session.model, session.tokenizer, text, corrupted, target, foil))
    except ValueError as err:
        state.show_error(err, "Patching")
        return
    m = st.columns(4)
    m[0].metric("target", views.show_token(view.target))
    m[1].metric("foil", views.show_token(view.foil))
    m[2].metric("logit difference, text", f"{view.logit_diff['clean']:+.4f}")
    m[3].metric("logit difference, corrupted", f"{view.logit_diff['corrupted']:+.4f}")
    st.caption("Of the difference between the two (1): clean sense vectors "
               f"{view.totals['senses']:+.3f}, clean weights {view.totals['weights']:+.3f}, "
               f"interaction {view.totals['interaction']:+.3f}. One colour scale for all the "
               "heatmaps; blue moves towards the text's prediction.")
    height = max(300, 60 + 22 * len(view.senses.y))
    for name, heat in (("senses", view.senses), ("weights", view.weights)):
        st.plotly_chart(ui.heatmap(heat, "RdBu", cell_text=False, height=height),
                        key=f"{PAGE}:patch-{name}")
    st.plotly_chart(ui.heatmap(view.layers, "RdBu", cell_text=False,
                               height=max(240, 60 + 26 * len(view.layers.y))),
                    key=f"{PAGE}:patch-layers")
    st.markdown("**Largest (position, sense) cells**")
    st.dataframe(view.top, hide_index=True, key=f"{PAGE}:patch-top")
    st.download_button("Download the patching JSON", json.dumps(view.data), "patching.json",
                       "application/json", key=f"{PAGE}:patch-json")


# -- the Transformer twin beside the Backpack --

def twin_section(text: str, session) -> None:
    """Both models' predictions and losses on the text, where they disagree most."""
    st.subheader("Beside its Transformer twin")
    choice = state.model_choice()
    try:
        recorded = views.recorded_twin(choice.source)
    except ValueError as err:
        state.show_error(err)
        recorded = None
    state.persist(f"{PAGE}:twin-dir", recorded or "")
    if st.session_state.get(f"{PAGE}:twin-for") != choice.key:  # another model: its own twin
        st.session_state[f"{PAGE}:twin-dir"] = recorded or ""
        st.session_state[f"{PAGE}:twin-for"] = choice.key
    source = st.text_input("Transformer twin (a model directory)", key=f"{PAGE}:twin-dir",
                           help='Recorded in the model\'s config.json as "twin" (a path relative to '
                                "the model's directory), or typed here; a twin has model_kind "
                                '"transformer" and the same tokenizer.')
    if not source.strip():
        st.caption('This model names no Transformer twin: add "twin": "<directory>" to its '
                   "config.json (docs/APP.md), or type a twin's directory above.")
        return
    try:
        twin, twin_tokenizer = state.load_twin(source.strip())
        view = state.memo("twin", session, source.strip(), lambda: views.twin_view(
            session.model, twin, session.tokenizer, text, twin_tokenizer=twin_tokenizer))
    except (ValueError, OSError) as err:
        state.show_error(err, "Twin")
        return
    m = st.columns(3)
    m[0].metric("mean loss, Backpack", f"{view.mean_loss['backpack']:.3f}")
    m[1].metric("mean loss, twin", f"{view.mean_loss['twin']:.3f}")
    worst = view.disagreements[0]
    m[2].metric("largest disagreement", f"after {worst['position']} {worst['token']}",
                f"JS {worst['JS divergence']:.3f} nats", delta_color="off")
    st.plotly_chart(ui.curves([("Backpack", view.positions, view.loss),
                               ("twin", view.positions, view.twin_loss)],
                              "loss of the next token", x_title="position", y_title="nats"),
                    key=f"{PAGE}:twin-loss")
    st.markdown("**Where they disagree most** (Jensen-Shannon divergence of the next-token "
                "distributions)")
    st.dataframe(view.disagreements, hide_index=True, key=f"{PAGE}:twin-disagree")
    with st.expander("Every position"):
        st.dataframe(view.rows, hide_index=True, key=f"{PAGE}:twin-rows")


patching_section(text, session, params)
twin_section(text, session)
