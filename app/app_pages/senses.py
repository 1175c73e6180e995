"""Senses: a word's senses as top / bottom words, two words side by side, sense search, and the
atlas (how each sense is used over a corpus)."""

import html

import atlas_views
import components as ui
import state
import streamlit as st
import views

from backpack_core.common import limits
from backpack_core.edit.specs import EditError
from backpack_core.interpret.sense_bank import sense_search
from backpack_core.interpret.sense_cards import DUPLICATE_COSINE, sense_cards

PAGE = "senses"
model, tokenizer, choice = state.require_model()
params = state.read_url_once(PAGE)
for slot, name in (("w1", "word"), ("w2", "word2")):
    if params.get(name):
        st.session_state[f"{PAGE}:{slot}"] = params[name]
        st.session_state[f"{PAGE}:{slot}:pending"] = params[name]
if params.get("word2"):
    st.session_state[f"{PAGE}:compare"] = True
if params.get("q"):
    st.session_state[f"{PAGE}:targets"] = params["q"]
    st.session_state[f"{PAGE}:search"] = {"targets": params["q"], "in_text": True, "top": 20,
                                          "largest": True, "exclude": True, "normalize": False}

st.title("Senses")
st.caption("Every word has k sense vectors C(x)_l, the same in every context. A sense's "
           "sense_logits E·C(x)_l say which words it promotes (top words) and suppresses "
           "(bottom words). '␣' is a leading space: ' bank' is how the word appears inside a text.")

controls = st.columns([2, 1])
state.persist(f"{PAGE}:top", 8)
state.persist(f"{PAGE}:compare", False)
top = controls[0].slider("Words per sense", 3, 20, key=f"{PAGE}:top")
compare = controls[1].toggle("Two words side by side", key=f"{PAGE}:compare")


def pick_word(slot: str, default: str) -> str | None:
    """A search box over the vocabulary and the matching tokens to pick from."""
    key = f"{PAGE}:{slot}"
    state.persist(key, default)
    state.persist(f"{key}:pick")
    query = st.text_input("Search the vocabulary", key=key,
                          help="Type a word; matching tokens are listed below (exact matches "
                               "first). A word that is not one token is explained piece by piece.")
    matches = views.vocab_matches(tokenizer, query, vocab_size=model.config.vocab_size)
    options = views.word_options(matches, query)
    if not options:
        st.info("Type a word to see its senses.")
        return None
    pending = st.session_state.pop(f"{key}:pending", None)
    if pending in options:
        st.session_state[f"{key}:pick"] = pending
    return st.selectbox(f"Token ({len(matches)} matching)", options, key=f"{key}:pick",
                        format_func=lambda t: f"{views.show_token(t)}   ({t!r})")


@state.guarded
def on_steer_sense(token_id: int, sense: int, kind: str) -> None:
    """A card's button: add an edit of this sense to the session's edit set, then open Steer."""
    spec = ({"kind": "ablate_sense", "word": token_id, "sense": sense} if kind == "ablate"
            else {"kind": "scale_sense", "word": token_id, "sense": sense, "factor": 2.0})
    try:
        state.set_edit_set(views.add_edit(state.edit_set(), spec, model, tokenizer))
    except EditError as err:
        st.session_state[f"{PAGE}:card-problem"] = f"The edit was not added: {err}"
        return
    st.session_state.pop("steer:json", None)  # the Steer page's JSON box shows the new set
    st.session_state[f"{PAGE}:goto-steer"] = True


def show_cards(token_id: int, slot: str) -> None:
    """A card per sense (Neuronpedia-style): top / bottom words, near-duplicates, its use in the
    atlas when one is loaded, and buttons that ablate or scale it on the Steer page."""
    state.persist(f"{PAGE}:{slot}:bytes", False)
    show_bytes = st.toggle("Show byte tokens (<0xE2>: parts of a character)", key=f"{PAGE}:{slot}:bytes")
    cards = sense_cards(model, tokenizer, token_id, top=top, hide_bytes=not show_bytes)
    groups = sorted({tuple(sorted([c.sense, *c.duplicates])) for c in cards if c.duplicates})
    if groups:
        st.caption("Near-duplicate senses (cosine of their vectors ≥ "
                   f"{DUPLICATE_COSINE:g}), grouped: " + ", ".join(
                       "{" + ", ".join(map(str, sorted(g))) + "}" for g in groups))
    atlas = atlas_views.current(choice.key)
    report = None
    if atlas is not None:
        try:
            report = atlas.word_report(token_id, top=1)
        except ValueError:
            report = None
        if report is not None and not report.occurrences:
            report = None
    shown, seen_groups = [], set()
    for card in cards:  # one card per group of near-duplicates: its first sense
        group = tuple(sorted([card.sense, *card.duplicates]))
        if card.duplicates and group in seen_groups:
            continue
        seen_groups.add(group)
        shown.append(card)
    grid = st.columns(2 if compare else 4)
    for n, card in enumerate(shown):
        with grid[n % len(grid)].container(border=True, key=f"{PAGE}:{slot}:card-{card.sense}"):
            same = f" (also {', '.join(map(str, card.duplicates))})" if card.duplicates else ""
            st.markdown(f"**sense {card.sense}**{same} · norm {card.norm:.2f}")
            st.caption("top: " + views.plain(views.card_words(card.top[:6], tokenizer)))
            st.caption("bottom: " + views.plain(views.card_words(card.bottom[:6], tokenizer)))
            if report is not None:
                use = report.senses[card.sense]
                st.caption(f"atlas: mean weight {use.mean_weight:.2f} over {report.occurrences:,} "
                           f"occurrences ({use.share:.0%} of the word's){' · dead' if use.dead else ''}")
                for ctx in use.contexts[:1]:
                    st.markdown(f"<small>{atlas_views.snippet_html(ctx)}</small>", unsafe_allow_html=True)
            st.button("Ablate", key=f"{PAGE}:{slot}:ablate-{card.sense}", on_click=on_steer_sense,
                      args=(card.token_id, card.sense, "ablate"), icon=":material/block:",
                      help="add 'ablate this sense' to the edit set and open Steer", width="stretch")
            st.button("Scale ×2", key=f"{PAGE}:{slot}:scale-{card.sense}", on_click=on_steer_sense,
                      args=(card.token_id, card.sense, "scale"), icon=":material/tune:",
                      help="add 'scale this sense by 2' to the edit set and open Steer", width="stretch")


FULL_WIDTH_TABLES: list = []  # two words side by side: their tables go below, full width


def sense_table(piece, slot: str, n: int) -> None:
    st.dataframe(piece.rows, hide_index=True, key=f"{PAGE}:{slot}:table:{n}",
                 height=38 + 35 * len(piece.rows),
                 column_config={"sense": st.column_config.NumberColumn(width="small")})


def show_word(word: str, slot: str) -> None:
    try:
        view = views.sense_view(model, tokenizer, word, top=top)
    except ValueError as err:
        state.show_error(err)
        return
    st.caption(views.plain(view.description))
    if view.multi_token:
        st.info(f"{views.plain(repr(word))} is not one token: it splits into {len(view.pieces)} pieces. A "
                "Backpack has senses per token, not per word, so the senses of each piece are "
                "shown.")
    tabs = st.tabs([f"piece {i + 1}: {views.readable_token(tokenizer, p.token_id)}"
                    for i, p in enumerate(view.pieces)]
                   ) if view.multi_token else [st.container()]
    for n, (tab, piece) in enumerate(zip(tabs, view.pieces)):
        with tab:
            if compare:  # a half-width column would cut the words off: below, full width
                FULL_WIDTH_TABLES.append((piece, slot, n))
            else:
                sense_table(piece, slot, n)
            top_tab, bottom_tab = st.tabs(["Top words", "Bottom words"])
            fit = {"max_chars": 7, "font_size": 9} if compare else {}  # half-width columns
            with top_tab:
                st.plotly_chart(ui.heatmap(piece.top, "Blues", colorbar_title="score", **fit),
                                key=f"{PAGE}:{slot}:top:{n}")
            with bottom_tab:
                st.plotly_chart(ui.heatmap(piece.bottom, "Reds_r", colorbar_title="score", **fit),
                                key=f"{PAGE}:{slot}:bottom:{n}")
            with st.expander("A card per sense: top and bottom words, near-duplicates, use in "
                             "the atlas, ablate or scale it on Steer", expanded=not compare):
                show_cards(piece.token_id, f"{slot}:{n}")


if st.session_state.pop(f"{PAGE}:goto-steer", False):
    st.switch_page("app_pages/steer.py")
if st.session_state.get(f"{PAGE}:card-problem"):
    st.error(views.plain(st.session_state.pop(f"{PAGE}:card-problem")))
picked = {}
if compare:
    left, right = st.columns(2)
    for column, slot, default in ((left, "w1", "bank"), (right, "w2", "river")):
        with column:
            picked[slot] = pick_word(slot, default)
            if picked[slot]:
                show_word(picked[slot], slot)
    for piece, slot, n in FULL_WIDTH_TABLES:
        st.markdown(f"**Senses of {views.plain(views.readable_token(tokenizer, piece.token_id))}**")
        sense_table(piece, slot, n)
    if picked.get("w1") and picked.get("w2"):
        try:
            similarity = views.similarity_heatmap(model, tokenizer, picked["w1"], picked["w2"])
        except ValueError as err:
            st.caption(f"Sense-by-sense similarity: {views.plain(err)}")
        else:
            st.plotly_chart(ui.heatmap(similarity, "RdBu_r", colorbar_title="cosine", max_chars=5,
                                       font_size=9, height=max(360, 40 + 26 * len(similarity.y))),
                            key=f"{PAGE}:similarity")
else:
    picked["w1"] = pick_word("w1", "bank")
    if picked["w1"]:
        show_word(picked["w1"], "w1")

st.divider()
st.subheader("Sense search")
st.caption("Which senses of which words promote (or suppress) the words you give? Score of "
           "(word x, sense l) = C(x)_l · Σ E[w]: the logit the sense adds to the targets per unit of "
           "contextualization weight. The first search builds the sense bank (every word's senses).")
with st.form(f"{PAGE}:search-form"):
    cols = st.columns([3, 1, 1])
    targets_text = cols[0].text_input("Targets (comma-separated words; #123 is a token id)",
                                      "science", key=f"{PAGE}:targets")
    n_hits = cols[1].number_input("Results", 5, 200, 20, key=f"{PAGE}:hits")
    order = cols[2].radio("Order", ["promote", "suppress"], key=f"{PAGE}:order")
    flags = st.columns(3)
    in_text = flags[0].checkbox("In-text form (leading space)", True, key=f"{PAGE}:in-text")
    exclude = flags[1].checkbox("Leave out the targets' own senses", True, key=f"{PAGE}:exclude")
    normalize = flags[2].checkbox("Cosine (normalise)", False, key=f"{PAGE}:normalize")
    if st.form_submit_button("Search senses"):
        st.session_state[f"{PAGE}:search"] = {
            "targets": targets_text, "in_text": in_text, "top": int(n_hits),
            "largest": order == "promote", "exclude": exclude, "normalize": normalize}

query = st.session_state.get(f"{PAGE}:search")
if query:
    targets = views.parse_words(query["targets"], query["in_text"])
    if not targets:
        st.warning("Give at least one target word.")
    else:
        try:
            result = sense_search(model, tokenizer, targets, top=query["top"], bank=state.sense_bank(),
                                  exclude_targets=query["exclude"], largest=query["largest"],
                                  normalize=query["normalize"], progress=False)
        except ValueError as err:
            state.show_error(err, "Sense search")
        else:
            rows = views.sense_search_rows(result, tokenizer)
            label = "promote" if result.largest else "suppress"
            st.markdown(f"Senses that most **{label}** "
                        f"{views.plain(', '.join(repr(t) for t in result.targets))}:")
            table, chart = st.columns([2, 3])
            table.dataframe(rows, hide_index=True, key=f"{PAGE}:search-table")
            chart.plotly_chart(ui.bars([f"{r['word']} · {r['sense']}" for r in rows],
                                       [r["score"] for r in rows], "score by (word · sense)",
                                       y_title="score", height=360), key=f"{PAGE}:search-chart")

st.divider()
st.subheader("Atlas: senses in use over a corpus")
st.caption("One pass over a corpus (windows of the model's context) records, for every word and "
           "sense, the contextualization weight it receives from later predictions: weight(j, l) "
           "= Σ_i α[l, i, j]. The mean over all positions is about 1 for every sense. A sense is "
           "dead when its weight stays below 0.05 at every occurrence. Built once per model and "
           "corpus, then read from the disk cache.")
with st.form(f"{PAGE}:atlas-form"):
    cols = st.columns([2, 2, 1])
    atlas_source = cols[0].radio("Corpus", list(atlas_views.SOURCES), key=f"{PAGE}:atlas-source")
    uploaded = cols[1].file_uploader("Text file (UTF-8)", type=["txt", "md", "text"],
                                     key=f"{PAGE}:atlas-upload")
    max_tokens = cols[2].number_input("Max tokens", 1_000, limits.MAX_REQUEST_TOKENS,
                                      min(50_000, limits.MAX_REQUEST_TOKENS), step=10_000,
                                      key=f"{PAGE}:atlas-tokens",
                                      help="The first N tokens of the corpus (about 150 µs a "
                                           "token on an idle CPU for the shipped model); at most "
                                           f"{limits.MAX_REQUEST_TOKENS:,} per request "
                                           "(BACKPACK_MAX_REQUEST_TOKENS)")
    build = st.form_submit_button("Build or load the atlas")
stopped = state.stopped_message(atlas_views.STOP_NAME)
if stopped:
    st.info(f"The atlas build was stopped. {stopped}")
if build:
    try:
        corpus = atlas_views.read_source(atlas_source, uploaded, tokenizer, int(max_tokens))
        atlas_views.build(model, tokenizer, corpus, choice.key)
    except ValueError as err:
        state.show_error(err, "Atlas")
atlas = atlas_views.current(choice.key)
if atlas is not None:
    summary = atlas.summary()
    st.caption(f"**{views.plain(summary['corpus'])}**: {summary['tokens']:,} tokens in windows of "
               f"{summary['seq_len']}; {summary['words_seen']:,} distinct tokens; "
               f"{summary['dead_pairs']:,} of {summary['pairs_seen']:,} (word, sense) pairs dead.")
    state.persist(f"{PAGE}:atlas-word", picked.get("w1") or " bank")
    typed = st.text_input("Word (one token)", key=f"{PAGE}:atlas-word", help=views.WORD_HELP)
    try:
        atlas_word = views.typed_word(typed, tokenizer, model.config.vocab_size)
        report = atlas.word_report(atlas_word, top=0) if atlas_word is not None else None
    except ValueError as err:
        state.show_error(err, "Atlas")
        report = None
    if report is not None and not report.occurrences:
        st.info(f"{views.plain(repr(atlas_word))} does not occur in {views.plain(summary['corpus'])} "
                f"(first {summary['tokens']:,} tokens).")
    elif report is not None:
        rows = atlas_views.usage_rows(report)
        chart, table = st.columns([3, 2])
        chart.plotly_chart(ui.bars([f"s{r['sense']}" for r in rows], [r["mean weight"] for r in rows],
                                   f"{html.escape(repr(atlas_word))}: mean weight per occurrence "
                                   f"({report.occurrences:,} occurrences)", y_title="weight",
                                   diverging=False), key=f"{PAGE}:atlas-chart")
        table.dataframe(rows, hide_index=True, key=f"{PAGE}:atlas-usage")
        busiest = max(report.senses, key=lambda u: u.total_weight).sense
        atlas_sense = st.selectbox("Top contexts of sense", list(range(atlas.num_senses)),
                                   index=busiest, key=f"{PAGE}:atlas-sense:{atlas_word}")
        detail = atlas.word_report(atlas_word, sense=atlas_sense, top=5)
        st.markdown(f"Where sense {atlas_sense} of {views.plain(repr(atlas_word))} carried the most weight "
                    "(highlighted: the word, and the position whose prediction it supported most):")
        for ctx in detail.senses[0].contexts:
            st.markdown(f"**{ctx.weight:.2f}** · {atlas_views.snippet_html(ctx)}  \n"
                        f"<small>{atlas_views.predictions_text(ctx)}</small>",
                        unsafe_allow_html=True)
    with st.expander("Sense usage by sense index, and dead senses"):
        st.dataframe(atlas_views.table_rows(atlas.sense_usage_table()), hide_index=True,
                     key=f"{PAGE}:atlas-table")
        st.dataframe(atlas_views.dead_rows(atlas.dead_senses(min_count=5, limit=100)),
                     hide_index=True, key=f"{PAGE}:atlas-dead")

state.write_url(word=picked.get("w1"), word2=picked.get("w2") if compare else None,
                q=query["targets"] if query else None)
