"""The Context page's patching and twin sections (app/app_pages/context.py, app/views.py) under
streamlit.testing's AppTest on the tiny model saved with its tiny twin: the numbers shown are the
core's, computed independently here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from backpack_core.interpret.patching import patch_prompts
from backpack_core.interpret.twin import compare_with_twin
from backpack_core.model.loading import load_backpack
from tests.conftest import HANG_S

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app"
if str(APP) not in sys.path:
    sys.path.insert(0, str(APP))
import state  # noqa: E402
import views  # noqa: E402

CLEAN, CORRUPTED = "The MacBook is made by", "The laptop is made by"


@pytest.fixture(scope="module")
def app_with_twin(tiny_model_with_twin_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(state.MODEL_ENV, str(tiny_model_with_twin_dir))
        mp.setenv(state.DEVICE_ENV, "cpu")
        mp.setenv(state.DTYPE_ENV, "float32")
        mp.setenv("BACKPACK_MODEL_ROOTS", str(tiny_model_with_twin_dir.parent))
        mp.setenv("BACKPACK_CACHE", str(tmp_path_factory.mktemp("cache")))
        model, tokenizer = load_backpack(tiny_model_with_twin_dir)
        twin, _ = load_backpack(tiny_model_with_twin_dir.parent / "twin")
        yield model, tokenizer, twin


def context_page(**query) -> AppTest:
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=HANG_S)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page("app_pages/context.py")
    at = at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_patching_view_is_the_core_result(tiny_model, tiny_tokenizer):
    view = views.patching_view(tiny_model, tiny_tokenizer, CLEAN, CORRUPTED, " Apple", " HP")
    result = patch_prompts(tiny_model, tiny_tokenizer, CLEAN, CORRUPTED, " Apple", " HP")
    assert torch.tensor(view.senses.z).allclose(result.senses)
    assert torch.tensor(view.layers.z).allclose(result.layers)
    assert view.senses.x[1] == "1 ␣MacBook→␣laptop" and view.layers.y[-1] == "output"
    assert sum(view.totals.values()) == pytest.approx(1.0, abs=1e-5)


def test_twin_view_is_the_core_comparison(tiny_model, tiny_twin, tiny_tokenizer):
    text = "The bank by the river has money."
    view = views.twin_view(tiny_model, tiny_twin, tiny_tokenizer, text)
    c = compare_with_twin(tiny_model, tiny_twin, tiny_tokenizer, text)
    assert view.loss == pytest.approx(c.loss.tolist())
    assert view.twin_loss == pytest.approx(c.twin_loss.tolist())
    assert [r["position"] for r in view.disagreements] == c.disagreements(5)


def test_recorded_twin(tiny_model_with_twin_dir, tiny_model_dir):
    assert Path(views.recorded_twin(str(tiny_model_with_twin_dir))).resolve() == \
        (tiny_model_with_twin_dir.parent / "twin").resolve()
    assert views.recorded_twin(str(tiny_model_dir)) is None


def test_context_page_patches_and_shows_the_twin(app_with_twin):
    model, tokenizer, twin = app_with_twin
    at = context_page(text=CLEAN, corrupted=CORRUPTED)
    result = patch_prompts(model, tokenizer, CLEAN, CORRUPTED)  # default target and foil
    shown = {m.label: m.value for m in at.metric}
    assert shown["logit difference, text"] == f"{result.logit_diff_clean:+.4f}"
    assert shown["logit difference, corrupted"] == f"{result.logit_diff_corrupted:+.4f}"
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    titles = [s["layout"]["title"]["text"] for s in specs]
    layers = specs[titles.index("contextualizer: clean residual stream at (layer, position)")]
    z = torch.tensor(layers["data"][0]["z"])
    assert torch.allclose(z, result.layers, atol=1e-6)
    # the twin named in config.json: both models' mean losses
    c = compare_with_twin(model, twin, tokenizer, CLEAN)
    assert shown["mean loss, Backpack"] == f"{c.mean_loss()[0]:.3f}"
    assert shown["mean loss, twin"] == f"{c.mean_loss()[1]:.3f}"
    assert at.text_input(key="context:twin-dir").value.endswith("twin")


def test_context_page_says_what_is_wrong(app_with_twin):
    at = context_page(text=CLEAN, corrupted="The bank by the river is made by")
    errors = " ".join(str(e.value) for e in at.error)
    assert "Patching" in errors and "same number of tokens" in errors
    at.text_input(key="context:twin-dir").set_value("/etc").run()
    assert "outside the model directories" in " ".join(str(e.value) for e in at.error)


def test_another_model_gets_its_own_twin_box(app_with_twin, tiny_model_dir):
    """The twin box follows the session's model: a model without a recorded twin shows none,
    not the previous model's."""
    at = context_page(text=CLEAN)
    assert at.text_input(key="context:twin-dir").value.endswith("twin")
    at.session_state["model_choice"] = state.ModelChoice(str(tiny_model_dir), "cpu", "float32")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="context:twin-dir").value == ""
    assert "names no Transformer twin" in " ".join(c.value for c in at.caption)
