"""Steer: build an edit set, see the predictions and generations before and after, share it."""

import json

import components as ui
import evaluation_view as ev
import state
import streamlit as st
import views

from backpack_core.common import limits
from backpack_core.edit.generation import generate_side_by_side
from backpack_core.edit.specs import EditError

PAGE = "steer"
OTHER = "\x00other"  # the word selector's "type another word" entry
KIND_LABELS = {"ablate_sense": "ablate sense(s)", "scale_sense": "scale sense(s)",
               "replace_sense": "replace sense(s) by another word's sense",
               "knowledge_edit": "knowledge edit (move a word's logit to another)",
               "scale_contextualization": "scale contextualization weight(s)"}

model, tokenizer, choice = state.require_model()
params = state.read_url_once(PAGE)
state.restore_text(PAGE, params)
link_problem = state.restore_edits(params, model, tokenizer)
if state.int_param(params, "pos") is not None:
    st.session_state[f"{PAGE}:pos:pending"] = state.int_param(params, "pos")


def set_edits(data: dict) -> None:
    """Replace this session's edit set (called from widget callbacks)."""
    state.set_edit_set(data)
    st.session_state[f"{PAGE}:json"] = json.dumps(data, indent=2, ensure_ascii=False)
    st.session_state.pop(f"{PAGE}:problem", None)


def problem(message: str) -> None:
    st.session_state[f"{PAGE}:problem"] = message


# the fields of one kind of edit; they start from their defaults when the kind changes
KIND_FIELDS = ("senses", "positions", "factor", "renormalize", "source-word", "source-sense",
               "remove", "add")


def control_spec() -> dict:
    """The edit the controls describe now (EditError when they do not make one)."""
    s = st.session_state
    word = s.get(f"{PAGE}:word")
    if word == OTHER:
        word = views.typed_word(s.get(f"{PAGE}:word-other", ""), tokenizer, model.config.vocab_size)
    return views.edit_spec(
        s[f"{PAGE}:kind"], word=word, senses=s.get(f"{PAGE}:senses", "all"),
        factor=s.get(f"{PAGE}:factor"), positions=s.get(f"{PAGE}:positions", ""),
        source_word=s.get(f"{PAGE}:source-word"), source_sense=s.get(f"{PAGE}:source-sense"),
        remove=s.get(f"{PAGE}:remove"), add=s.get(f"{PAGE}:add"),
        renormalize=s.get(f"{PAGE}:renormalize", False), tokenizer=tokenizer,
        vocab_size=model.config.vocab_size)


@state.guarded
def on_add() -> None:
    try:
        set_edits(views.add_edit(state.edit_set(), control_spec(), model, tokenizer))
    except EditError as err:
        problem(f"The edit was not added: {err}")


@state.guarded
def on_kind() -> None:
    """Another kind of edit: the last kind's fields (its senses, positions, factor...) do not
    carry over; each starts from its default."""
    for name in KIND_FIELDS:
        st.session_state.pop(f"{PAGE}:{name}", None)
    st.session_state.pop(f"{PAGE}:problem", None)


@state.guarded
def on_remove(index: int) -> None:
    set_edits(views.remove_edit(state.edit_set(), index))


@state.guarded
def on_clear() -> None:
    set_edits(json.loads(json.dumps(state.EMPTY_EDITS)))


@state.guarded
def on_apply_json() -> None:
    try:
        set_edits(views.read_edit_set(st.session_state[f"{PAGE}:json"], model, tokenizer))
    except EditError as err:
        problem(f"The JSON was not applied: {err}")


@state.guarded
def on_upload() -> None:
    uploaded = st.session_state.get(f"{PAGE}:upload")
    if uploaded is None:
        return
    try:
        data, left_out = views.read_pack(uploaded.getvalue(), model, tokenizer,
                                         st.session_state.get(f"{PAGE}:apply-anyway", False))
        set_edits(data)
        if left_out:
            problem(f"Applied anyway; left out {len(left_out)} edit(s) that do not fit this "
                    "model: " + "; ".join(f"edit {u['index']}: {u['reason']}" for u in left_out))
    except EditError as err:
        problem(f"The uploaded file {uploaded.name!r} was not loaded: {err}")


@state.guarded
def on_factor(index: int) -> None:
    factor = st.session_state[f"{PAGE}:factor-{index}"]
    set_edits(views.with_factor(state.edit_set(), index, factor))


@state.guarded
def on_learn() -> None:
    s = st.session_state
    upload = s.get(f"{PAGE}:learn-file")
    try:
        learned = views.learn_from_examples(
            model, tokenizer, state.edit_set(), s[f"{PAGE}:learn-examples"], s[f"{PAGE}:learn-loss"],
            senses_per_example=s[f"{PAGE}:learn-senses"], budget=s[f"{PAGE}:learn-budget"],
            steps=s[f"{PAGE}:learn-steps"], background=s[f"{PAGE}:learn-background"],
            text=s.get(f"{PAGE}:text", ""),
            upload=(upload.name, upload.getvalue()) if upload is not None else None)
    except (ValueError, OSError) as err:  # ExampleError, CorpusError, EditError are ValueErrors
        s[f"{PAGE}:learn-problem"] = f"Nothing was learned: {' '.join(str(err).split())}"
        return
    s.pop(f"{PAGE}:learn-problem", None)
    s[f"{PAGE}:learned"] = learned
    set_edits(learned.edit_set)


@state.guarded
def on_jump(position: int) -> None:
    st.session_state[f"{PAGE}:pos"] = position


def edit_row(effect) -> None:
    """One edit: what it is, a live slider for its factor, and where it acts (its effect alone)."""
    with st.container(border=True, key=f"{PAGE}:edit-{effect.index}"):
        line = st.columns([8, 1])
        line[0].markdown(f"`{effect.index}` {views.plain(effect.edit)}")
        line[1].button("", icon=":material/delete:", key=f"{PAGE}:remove-{effect.index}",
                       on_click=on_remove, args=(effect.index,), help="remove this edit",
                       type="tertiary")
        if effect.factor is not None:
            key = f"{PAGE}:factor-{effect.index}"
            low = 0.0 if effect.kind == "scale_contextualization" else min(-2.0, effect.factor)
            if st.session_state.get(key) != effect.factor:
                st.session_state[key] = effect.factor  # follow the edit set (JSON, upload, link)
            st.slider("factor (live)", low, max(4.0, effect.factor), step=0.1, key=key,
                      on_change=on_factor, args=(effect.index,))
        if effect.most_affected is None:
            st.caption("Changes no prediction of this text (its word is not in the text, or the "
                       "change is exactly zero).")
            return
        top = effect.rows[0]
        st.caption(f"Moves {effect.n_moved} of {session.n} positions' predictions "
                   f"({effect.n_changed} top-1 changes); most at **{top['position']}** "
                   f"{views.plain(top['token'])}: KL {top['KL']:.4f}, logit change up to "
                   f"{top['largest logit change']:.3f}.")
        st.button(f"Jump to position {top['position']}", key=f"{PAGE}:jump-{effect.index}",
                  on_click=on_jump, args=(top["position"],), icon=":material/my_location:",
                  disabled=top["position"] == position, type="secondary")
        with st.expander("Where this edit acts (most affected positions)"):
            st.dataframe(effect.rows, hide_index=True, key=f"{PAGE}:effect-{effect.index}",
                         column_config={"KL": st.column_config.NumberColumn(format="%.2e"),
                                        "largest logit change": st.column_config.NumberColumn(
                                            format="%.3f")})


st.title("Steer")
st.caption("Edit senses or contextualization weights and compare the predictions before and "
           "after. Edits never change the model: they apply to this session only. The URL "
           "holds the text, the edit set and the position: copy it to share the view.")
if link_problem:
    st.error(views.plain(link_problem))
text = state.text_area(PAGE)
try:
    session = state.text_session(PAGE, text)
except ValueError as err:
    state.show_error(err)
    st.stop()

positions = list(range(session.n))
state.persist(f"{PAGE}:pos", shared="position")
if state.text_changed(PAGE, text):  # a new text: its own default position, no stale message
    st.session_state[f"{PAGE}:pos"] = views.default_position(session.tokens)
    st.session_state.pop(f"{PAGE}:problem", None)
pending = st.session_state.pop(f"{PAGE}:pos:pending", None)
if pending in positions:
    st.session_state[f"{PAGE}:pos"] = pending
elif st.session_state.get(f"{PAGE}:pos") not in positions:
    st.session_state[f"{PAGE}:pos"] = views.default_position(session.tokens)
position = st.selectbox("Position (the prediction after this token)", positions, key=f"{PAGE}:pos",
                        format_func=lambda i: views.position_label(session, i))
knowledge = views.knowledge_defaults(tokenizer, model.config.vocab_size, session.tokens)

builder, results = st.columns([2, 3], gap="large")

# -------------------------------------------------------------------------- the edit set --
with builder:
    st.subheader("Edit set")
    kind = st.selectbox("Edit", views.STEER_KINDS, key=f"{PAGE}:kind", on_change=on_kind,
                        format_func=lambda kd: KIND_LABELS.get(kd, kd))
    words = list(dict.fromkeys(session.tokens))
    word_options = words + [OTHER]
    # the word follows the chosen position's token (a knowledge edit: its example's word)
    here = knowledge[0] if kind == "knowledge_edit" and knowledge and knowledge[0] in words \
        else session.tokens[position]
    if st.session_state.get(f"{PAGE}:word") not in word_options or \
            st.session_state.get(f"{PAGE}:word-for") != (position, kind):
        st.session_state[f"{PAGE}:word"] = here
        st.session_state[f"{PAGE}:word-for"] = (position, kind)
    cols = st.columns(2)
    word = cols[0].selectbox("Word", word_options, key=f"{PAGE}:word",
                             format_func=lambda t: "another word…" if t == OTHER else views.show_token(t))
    cols[1].text_input("Senses", "all", key=f"{PAGE}:senses",
                       help=f"'all', one index like 3, or a list like 1, 2 "
                            f"(0..{model.config.num_senses - 1})")
    if word == OTHER:
        st.text_input("Another word (one token)", "bank", key=f"{PAGE}:word-other",
                      help=views.WORD_HELP)
    if kind in ("scale_sense", "scale_contextualization"):
        st.number_input("Factor", value=2.0 if kind == "scale_sense" else 0.0, step=0.5,
                        min_value=None if kind == "scale_sense" else 0.0, key=f"{PAGE}:factor")
    if kind == "scale_contextualization":
        st.checkbox("Renormalise the rows", False, key=f"{PAGE}:renormalize")
    if kind == "replace_sense":
        c = st.columns(2)
        c[0].text_input("By the sense of word", "river", key=f"{PAGE}:source-word",
                        help=views.WORD_HELP)
        c[1].number_input("Sense", 0, model.config.num_senses - 1, 0, key=f"{PAGE}:source-sense")
    if kind == "knowledge_edit":
        c = st.columns(2)
        c[0].text_input("Remove the word", knowledge[1] if knowledge else "", key=f"{PAGE}:remove",
                        help="one token of this model's vocabulary; " + views.WORD_HELP)
        c[1].text_input("Add the word (optional)", knowledge[2] if knowledge else "", key=f"{PAGE}:add",
                        help=views.WORD_HELP)
    st.text_input("Only at positions (blank: every occurrence)", "", key=f"{PAGE}:positions",
                  placeholder="e.g. 3, 7")
    try:  # what the edit will touch, before it is added
        spec = control_spec()
        preview = state.memo(f"{PAGE}:preview", session, spec,
                             lambda: views.edit_preview(session, spec))
    except EditError:
        preview = None  # the Add button says why
    if preview is not None:
        where = (f"its word is at position(s) {', '.join(map(str, preview.occurrences[:12]))}"
                 f"{'…' if len(preview.occurrences) > 12 else ''}" if preview.occurrences
                 else "its word is not in this text")
        st.caption(f"Will {views.plain(preview.edit)}: {where}; it moves {preview.n_moved} of "
                   f"{session.n} positions' predictions ({preview.n_changed} top-1 changes), "
                   f"largest KL {preview.max_kl:.2g}.")
        if preview.tiny:
            st.warning(f"This edit changes almost nothing on this text (largest KL "
                       f"{preview.max_kl:.2g}, below {views.TINY_KL:g}): check its senses, "
                       "positions and words.", icon=":material/warning:")
    st.button("Add edit", type="primary", on_click=on_add, key=f"{PAGE}:add-button")
    if st.session_state.get(f"{PAGE}:problem"):
        st.error(views.plain(st.session_state[f"{PAGE}:problem"]))

    with st.expander("Learn from examples (sense finetuning)",
                     expanded=bool(st.session_state.get(f"{PAGE}:learned"))):
        st.caption("State the behaviour with a few canonical examples, one JSON object a line: "
                   "{\"prefix\", \"suffix\"} (good: raise the suffix; bad: lower it) or "
                   "{\"prefix\", \"suffix1\", \"suffix2\"} (balance: even the two). The most "
                   "important senses of each example (gradient norm of its loss) are trained, with "
                   "a KL penalty on background text; the strength is the largest whose measured "
                   "loss increase on held-out background text stays within the budget. The result "
                   "joins the edit set as add_sense edits. See docs/ANALYSES.md.")
        st.text_area("Canonical examples (JSONL)", views.LEARN_EXAMPLE, key=f"{PAGE}:learn-examples",
                     height=110)
        c = st.columns(3)
        c[0].radio("Loss", ["good", "bad", "balance"], key=f"{PAGE}:learn-loss", horizontal=True)
        c[1].number_input("Senses per example", 1, 64, 10, key=f"{PAGE}:learn-senses")
        c[2].number_input("Steps", 1, 500, 40, key=f"{PAGE}:learn-steps")
        c = st.columns(2)
        c[0].number_input("Budget (nats)", 0.0, 5.0, 0.01, step=0.005, format="%.3f",
                          key=f"{PAGE}:learn-budget",
                          help="allowed increase of the mean next-token loss on held-out "
                               "background text")
        c[1].selectbox("Background text", ["ptb", "validation", "text", "upload"],
                       key=f"{PAGE}:learn-background",
                       format_func=lambda v: {"ptb": "Penn Treebank (test split)",
                                              "validation": "training corpus (validation split)",
                                              "text": "the text above",
                                              "upload": "a text file (upload)"}[v])
        if st.session_state.get(f"{PAGE}:learn-background") == "upload":
            st.file_uploader("Background text file (UTF-8)", type=["txt", "md"],
                             key=f"{PAGE}:learn-file")
        st.button("Learn", on_click=on_learn, key=f"{PAGE}:learn", icon=":material/school:")
        if st.session_state.get(f"{PAGE}:learn-problem"):
            st.error(st.session_state[f"{PAGE}:learn-problem"])
        learned = st.session_state.get(f"{PAGE}:learned")
        if learned is not None:
            st.markdown(f"Learned **{len(learned.learned['edits'])}** add_sense edits at strength "
                        f"**{learned.strength:g}**: general loss **{learned.general_increase:+.4f}** "
                        f"nats on held-out {learned.background} (budget {learned.budget:g}).")
            st.dataframe(learned.senses, hide_index=True, key=f"{PAGE}:learned-senses")

    edits = state.edit_set()
    rows = views.edit_rows(edits)
    if edits.get("name") or edits.get("description"):
        # a link's or upload's own words: plain text, never Markdown (no links, no images)
        st.text(" · ".join(str(edits[k]) for k in ("name", "description") if edits.get(k)))
    if rows:
        effects = state.memo(f"{PAGE}:effects", session, edits,
                             lambda: views.edit_effects(session, edits))
        for effect in effects:
            edit_row(effect)
        st.button("Clear all edits", on_click=on_clear, key=f"{PAGE}:clear")
    else:
        st.info("No edits yet: the predictions after equal the predictions before.")

    st.download_button("Download the edit set (JSON)", views.pack_json(edits, model, tokenizer, choice.name),
                       file_name="edits.json", mime="application/json", key=f"{PAGE}:download",
                       on_click="ignore", help="with what it was made on (this model's fingerprint "
                       "and tokenizer), so that it is not applied to another model by mistake")
    st.file_uploader("Upload an edit set (JSON)", type=["json"], key=f"{PAGE}:upload",
                     on_change=on_upload)
    st.checkbox("Apply anyway", False, key=f"{PAGE}:apply-anyway",
                help="an edit set made on another model with the same tokenizer: re-resolve its "
                     "words here and leave out (and list) the edits that do not fit")
    with st.expander("Edit set as JSON"):
        if f"{PAGE}:json" not in st.session_state:
            st.session_state[f"{PAGE}:json"] = json.dumps(edits, indent=2, ensure_ascii=False)
        st.text_area("JSON (schema version 1; see docs/API.md)", key=f"{PAGE}:json", height=220)
        st.button("Apply the JSON", on_click=on_apply_json, key=f"{PAGE}:apply-json")

# ---------------------------------------------------------------------- before and after --
with results:
    st.subheader("Predictions before and after")
    try:
        view = state.memo(f"{PAGE}:view", session, [edits, position],
                          lambda: views.steer_view(session, edits, position=position, top=10))
    except (EditError, ValueError) as err:
        state.show_error(err, "The edit set does not fit this model or text")
        st.stop()
    m = st.columns(3)
    m[0].metric("top-1 changed at", f"{view.n_changed} / {session.n}",
                help="positions whose most probable next token changed")
    m[1].metric(f"KL(before ‖ after) at {position}", f"{view.comparison.kl:.4f}")
    m[2].metric("largest KL", f"{max(view.kl):.4f}")
    shown = views.readable_token(tokenizer, session.token_ids[position])
    st.markdown(f"Next token after position **{position}** ({views.plain(shown)}); green: entered the top "
                "10, red: left it.")
    st.table(ui.detail_table(view.detail))

charts = st.columns(2)
# figures and views are memoised per (text, edits, position): a rerun that changes none of them
# (a click elsewhere, a generation) reuses them
bars = state.memo(f"{PAGE}:bars", session, [edits, position], lambda: ui.before_after_bars(
    view.detail, f"top 10 after position {position}"))
charts[0].plotly_chart(bars, key=f"{PAGE}:bars")
if view.edits:
    kl_bars = state.memo(f"{PAGE}:kl", session, edits, lambda: ui.bars(
        [f"{r['position']} {r['token']}" for r in view.rows], view.kl,
        "KL(before ‖ after) per position", y_title="nats", diverging=False, height=320))
    charts[1].plotly_chart(kl_bars, key=f"{PAGE}:kl")
else:
    charts[1].caption("KL(before ‖ after) per position appears here once there are edits.")
st.markdown("**Every position** (rows whose most probable next token changed are highlighted)")
f = st.columns([1, 2])
only_changed = f[0].toggle(f"Only changed rows ({view.n_changed})", False, key=f"{PAGE}:only-changed",
                           disabled=not view.n_changed)
order = f[1].radio("Sort by", list(views.ROW_ORDERS), format_func=views.ROW_ORDERS.get,
                   horizontal=True, key=f"{PAGE}:order", label_visibility="collapsed")
table_rows = views.position_rows(view.rows, only_changed and view.n_changed > 0, order)
st.dataframe(ui.steer_table(table_rows), hide_index=True, key=f"{PAGE}:table",
             height=min(420, 38 + 35 * max(1, len(table_rows))))

st.subheader("Generations with and without the edits")
g = st.columns(4)
new_tokens = g[0].number_input("New tokens", 1, 200, 30, key=f"{PAGE}:gen-tokens")
seed = g[1].number_input("Seed", 0, 2**31 - 1, 0, key=f"{PAGE}:gen-seed")
sample = g[2].toggle("Sample", False, key=f"{PAGE}:gen-sample", help="off: greedy decoding")
temperature = g[3].number_input("Temperature", 0.05, 5.0, 0.8, step=0.05, key=f"{PAGE}:gen-temp",
                                disabled=not sample)
request = {"text": text, "edits": edits, "tokens": int(new_tokens), "seed": int(seed),
           "sample": bool(sample), "temperature": float(temperature)}
if st.button("Generate", key=f"{PAGE}:generate"):
    try:
        with st.spinner("Generating…"):
            out = generate_side_by_side(model, tokenizer, session.text, edits or None,
                                        max_new_tokens=int(new_tokens), do_sample=bool(sample),
                                        temperature=float(temperature), top_p=0.95 if sample else None,
                                        seed=int(seed))
        st.session_state[f"{PAGE}:generation"] = {"request": request, "result": out}
    except ValueError as err:
        state.show_error(err, "Generation")
generation = st.session_state.get(f"{PAGE}:generation")
if generation and generation["request"] == request:
    left, right = st.columns(2)
    left.markdown("**Without the edits**")
    left.code(generation["result"]["before"], language=None, wrap_lines=True)
    right.markdown("**With the edits**")
    right.code(generation["result"]["after"], language=None, wrap_lines=True)
    split = views.divergence(tokenizer, generation["result"]["before"], generation["result"]["after"])
    if split.identical:
        st.caption("The two generations are identical.")
    else:
        st.caption(f"They share their first {split.tokens} generated token(s), then diverge "
                   "(marked):")
        left.markdown(views.divergence_html(split.shared, split.before), unsafe_allow_html=True)
        right.markdown(views.divergence_html(split.shared, split.after), unsafe_allow_html=True)
elif generation:
    st.caption("The text, edits or settings changed since the last generation: generate again.")

# ------------------------------------------------------------------ evaluate on a dataset --
st.subheader("Evaluate this edit set on a dataset")
with st.expander("Blast radius, loss change and target-prompt success over a corpus, by strength",
                 expanded=bool(st.session_state.get(f"{PAGE}:evaluation"))):
    st.caption("The model reads the corpus once (windows of its context) and every strength is "
               "re-evaluated from the cached contextualization and senses. Strength s moves what "
               "each edit changes by s times its change (0: no edit, 1: the edit set as given). "
               "The blast radius is the positions whose prediction the edits change; outside it "
               "the loss change is exactly 0. A target prompt succeeds when its target beats the "
               "foil (or, without a foil, is the most probable next token). See docs/ANALYSES.md.")
    e = st.columns([3, 1, 2])
    dataset = e[0].radio("Dataset", list(ev.DATASETS), format_func=ev.DATASETS.get, horizontal=True,
                         key=f"{PAGE}:eval-data")
    max_tokens = e[1].number_input("Max tokens", 16, limits.MAX_REQUEST_TOKENS, 5_000, step=1_000,
                                   key=f"{PAGE}:eval-max",
                                   help=f"at most {limits.MAX_REQUEST_TOKENS:,} per request "
                                        "(BACKPACK_MAX_REQUEST_TOKENS)")
    strengths_text = e[2].text_input("Strengths", "0, 0.5, 1, 2", key=f"{PAGE}:eval-strengths",
                                     help="comma-separated; 1 is always added")
    corpus_file = (st.file_uploader("Text file (UTF-8)", type=["txt", "md"], key=f"{PAGE}:eval-file")
                   if dataset == "upload" else None)
    prompts_file = st.file_uploader(
        "Target prompts (optional, JSONL: one {\"prompt\", \"target\", \"foil\"} a line)",
        type=["jsonl", "json", "txt"], key=f"{PAGE}:eval-prompts")
    stopped = state.stopped_message(f"{PAGE}:eval")
    if stopped:
        st.info(f"The evaluation was stopped. {stopped}")
    if st.button("Evaluate", key=f"{PAGE}:evaluate", type="primary", disabled=not edits.get("edits"),
                 help=None if edits.get("edits") else "add an edit first"):
        try:
            result = state.run_with_stop(
                f"{PAGE}:eval", "Evaluating the edit set", lambda report: ev.evaluate(
                    model, tokenizer, edits, dataset, int(max_tokens), strengths_text, text=text,
                    prompts=(prompts_file.name, prompts_file.getvalue()) if prompts_file else None,
                    upload=(corpus_file.name, corpus_file.getvalue()) if corpus_file else None,
                    progress=report), work_tokens=int(max_tokens))
            st.session_state[f"{PAGE}:evaluation"] = {"edits": edits, "result": result}
        except (ValueError, OSError) as err:  # EditError, PromptError, CorpusError are ValueErrors
            st.session_state.pop(f"_running:{PAGE}:eval", None)
            state.show_error(err, "The evaluation")
    evaluation = st.session_state.get(f"{PAGE}:evaluation")
    if evaluation and evaluation["edits"] == edits:
        result = evaluation["result"]
        one = result.at(1.0)
        note = ev.absent_note(result)
        if note:
            st.warning(views.plain(note), icon=":material/search_off:")
        m = st.columns(4)
        m[0].metric("blast radius", f"{len(result.blast_radius):,}",
                    help=f"positions whose prediction the edits change, of {result.corpus['tokens']:,} "
                         f"tokens of {result.corpus['name']}")
        m[1].metric("Δ loss, all text", f"{one.loss_change['all']:+.4f}")
        m[2].metric("Δ loss, inside the radius", ev.loss_text(one.loss_change["inside"]),
                    help="– : the radius is empty, no position to average over")
        m[3].metric("Δ loss, outside", ev.loss_text(one.loss_change["outside"]),
                    help="– : every position is inside the radius")
        if result.prompts:
            st.markdown(f"Target prompts: success **{result.success_before:.0%}** before, "
                        f"**{one.success_rate:.0%}** after (strength 1).")
        if result.blast_radius or result.prompts:  # nothing to plot when no position moved
            st.plotly_chart(ev.sweep_figure(result), key=f"{PAGE}:eval-figure")
        st.dataframe(ev.sweep_rows(result), hide_index=True, key=f"{PAGE}:eval-sweep")
        if result.prompts:
            st.dataframe(ev.prompt_rows(result), hide_index=True, key=f"{PAGE}:eval-prompts-table")
    elif evaluation:
        st.caption("The edit set changed since the last evaluation: evaluate again.")

# ------------------------------------------------------------- export the edited model --


@state.guarded
def on_title() -> None:
    set_edits(views.with_title(state.edit_set(), st.session_state[f"{PAGE}:title"],
                               st.session_state[f"{PAGE}:description"]))


def export_section() -> None:
    """Export this edited model: to a directory the server may open, or as a zip download."""
    st.subheader("Export this edited model")
    with st.expander("A model directory whose forward pass applies this edit set (exactly, to "
                     "every occurrence of the edited words)", expanded=False):
        st.caption("The edits become tables over token ids that the new model carries; the "
                   "model's own files are not changed. It loads like any model directory (the "
                   "Models page, --model in every command, transformers after `import "
                   "backpack_core`). Its README.md lists the edits, where they come from and this "
                   "model's fingerprint. Edits restricted to positions, renormalising or setting "
                   "weights cannot be exported: they are refused, naming the edit.")
        for key, name in ((f"{PAGE}:title", "name"), (f"{PAGE}:description", "description")):
            if st.session_state.get(f"{key}:for") != edits.get(name):  # follow uploads, links
                st.session_state[key] = edits.get(name) or ""
                st.session_state[f"{key}:for"] = edits.get(name)
        c = st.columns([1, 2])
        c[0].text_input("Title", key=f"{PAGE}:title", on_change=on_title)
        c[1].text_input("Description", key=f"{PAGE}:description", on_change=on_title)
        disabled = not edits.get("edits")
        to_server = views.server_export_allowed()
        d = st.columns([3, 1])
        if not to_server:
            d[0].caption("Exports to the server's disk are turned off here (the operator set "
                         "BACKPACK_SERVER_EXPORT=0); the zip download below still works.")
        target = "" if not to_server else d[0].text_input(
            "Directory on the server (new; under the model directories the server may open)",
            "runs/edited-model", key=f"{PAGE}:export-dir")
        if to_server and d[1].button("Export", key=f"{PAGE}:export", disabled=disabled, type="primary"):
            try:
                with st.spinner("Exporting…"):
                    result = views.export_to_directory(edits, model, tokenizer, target, choice.name)
                st.session_state[f"{PAGE}:exported"] = {"edits": edits, "result": result,
                                                        "where": target}
            except (ValueError, OSError) as err:  # EditError, AccessError are ValueErrors
                state.show_error(err, "The export")
        if st.button("Prepare a zip download", key=f"{PAGE}:export-zip", disabled=disabled):
            try:
                with st.spinner("Exporting…"):
                    data, result = views.export_zip(edits, model, tokenizer, choice.name)
                st.session_state[f"{PAGE}:exported"] = {"edits": edits, "result": result,
                                                        "zip": data}
            except (ValueError, OSError) as err:
                state.show_error(err, "The export")
        exported = st.session_state.get(f"{PAGE}:exported")
        if exported and exported["edits"] == edits:
            result = exported["result"]
            sizes = result.sizes
            st.success(f"Exported {sizes['sense_tokens']} token(s) with replaced senses and "
                       f"{sizes['contextualization_tokens']} with scaled contextualization "
                       f"({result.total_bytes / 2**20:.1f} MiB in all, "
                       f"{result.table_bytes:,} bytes of edit tables)"
                       + (" to the directory below." if "where" in exported else "."))
            if "where" in exported:
                st.code(exported["where"], language=None)
            st.dataframe(views.export_rows(result), hide_index=True, key=f"{PAGE}:export-files")
            if "zip" in exported:
                st.download_button("Download the edited model (zip)", exported["zip"],
                                   file_name="edited-model.zip", mime="application/zip",
                                   key=f"{PAGE}:export-download", on_click="ignore")
        elif exported:
            st.caption("The edit set changed since the last export: export again.")


export_section()

state.write_url(text=text, edits=state.encode_edits(edits) if edits.get("edits") else None,
                pos=position)
