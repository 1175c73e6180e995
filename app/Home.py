"""Backpack Workbench dashboard. Run from the repository root:

    streamlit run app/Home.py

BACKPACK_MODEL=/path/to/model picks the default model (else the shipped data/backpack-mini).
"""

from pathlib import Path

import components as ui
import state
import streamlit as st
import views

# A local icon: a ":material/...:" page icon is fetched from fonts.gstatic.com by the browser.
st.set_page_config(page_title="Backpack Workbench", page_icon=str(Path(__file__).with_name("icon.png")),
                   layout="wide")

PAGES = {
    "senses": ("app_pages/senses.py", "Senses", ":material/dictionary:",
               "a word's senses: top and bottom words per sense, two words side by side, "
               "and sense search (which senses of which words promote a word)"),
    "context": ("app_pages/context.py", "Context", ":material/notes:",
                "a text: next-token predictions, contextualization weights, and the exact "
                "attribution of a prediction by source token and sense"),
    "steer": ("app_pages/steer.py", "Steer", ":material/tune:",
              "build an edit set (ablate, scale, replace, knowledge edit): predictions and "
              "generations before and after, shareable as a link or a JSON file"),
    "models": ("app_pages/models.py", "Models", ":material/settings:",
               "choose the model, device and dtype; the model card's numbers; training curves"),
}


def home() -> None:
    st.title("Backpack Workbench")
    st.markdown(
        "A Backpack language model (Hewitt et al., ACL 2023) predicts each word as a weighted sum "
        "of **senses**: every vocabulary word has *k* context-free sense vectors, and a "
        "transformer only chooses the **contextualization** weights that mix them. Every "
        "prediction therefore splits exactly into (source word, sense) **contributions**, and "
        "editing a sense changes every prediction that uses it, predictably.")
    choice = state.model_choice()
    try:
        model, tokenizer = state.load_model(choice)
    except (ValueError, OSError) as err:
        st.error(f"Could not load the model {views.plain(choice.label)}: {views.plain(err)}")
        st.page_link(state.MODELS_PAGE, label="Choose a model on the Models page", icon=":material/settings:")
    else:
        ui.model_metrics(model, tokenizer)
        st.caption(f"Model: {views.plain(choice.label)}")
    st.subheader("Pages")
    for path, title, icon, what in PAGES.values():
        st.page_link(path, label=f"**{title}**: {what}", icon=icon)


navigation = st.navigation(
    [st.Page(home, title="Home", icon=":material/home:", default=True)]
    + [st.Page(path, title=title, icon=icon, url_path=name)
       for name, (path, title, icon, _) in PAGES.items()])
state.guarded(state.restore_model)(state.link_params())  # a shared link's model, once per session
state.sidebar()
state.run_page(navigation)  # the error boundary around every page
