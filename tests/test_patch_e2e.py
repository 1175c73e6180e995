"""The Context page's patching and twin sections in a real browser (headless Chromium through
Playwright, as tests/test_app_e2e.py): the tiny model saved with its tiny Transformer twin named
in its config.json, a link with a corrupted prompt. Skipped when Chromium or playwright is
missing."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.browser_setup import browser_or_skip

browser, sync_api = browser_or_skip()

CLEAN, CORRUPTED = "The MacBook is made by", "The laptop is made by"


@pytest.fixture(scope="module")
def server(tiny_model_with_twin_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("e2e-patch")
    env = {"BACKPACK_CACHE": str(directory / "cache"),
           "BACKPACK_MODEL_ROOTS": str(tiny_model_with_twin_dir.parent)}
    with browser.serve(str(tiny_model_with_twin_dir), directory / "server.log", env=env) as url:
        yield url


def test_patching_and_the_twin_on_the_context_page(server, tiny_model, tiny_tokenizer, tiny_twin,
                                                   tmp_path):
    from backpack_core.interpret.patching import patch_prompts
    from backpack_core.interpret.twin import compare_with_twin

    result = patch_prompts(tiny_model, tiny_tokenizer, CLEAN, CORRUPTED)
    twin = compare_with_twin(tiny_model, tiny_twin, tiny_tokenizer, CLEAN)
    with sync_api.sync_playwright() as p, browser.chromium(p) as b:
        page = b.new_page(viewport={"width": 1400, "height": 1800})
        # five charts and a second model: slower on a busy machine
        page.set_default_timeout(2 * browser.STEP_MS)
        requests = browser.watch_requests(page)
        browser.open_page(page, f"{server}/context?text={quote(CLEAN)}&corrupted={quote(CORRUPTED)}")
        page.get_by_text("Patching: what was said, and how it was weighted").first.wait_for()
        browser.drawn(page)
        metrics = page.locator('[data-testid="stMetric"]')
        corrupted = metrics.filter(has_text="logit difference, corrupted").inner_text()
        assert f"{result.logit_diff_corrupted:+.4f}" in corrupted
        assert f"{twin.mean_loss()[1]:.3f}" in metrics.filter(has_text="mean loss, twin").inner_text()
        # the heatmaps are drawn: the contextualizer grid among them
        assert page.locator(".js-plotly-plot").count() >= 5
        page.get_by_text("contextualizer: clean residual stream at (layer, position)").first.wait_for()
        page.get_by_text("Where they disagree most").first.wait_for()

        # a corrupted prompt of another length: one message, the rest of the page still there
        box = page.get_by_label("Corrupted prompt (the same number of tokens as the text)")
        box.fill("The bank by the river is made by")
        box.press("Enter")
        browser.settle(page)
        alert = page.locator('[data-testid="stAlert"]').filter(has_text="same number of tokens")
        alert.wait_for()
        assert "Traceback" not in page.locator("body").inner_text()
        page.get_by_text("Where they disagree most").first.wait_for()
        page.screenshot(path=str(tmp_path / "context-patching.png"), full_page=True)
        assert requests and not browser.remote(requests), browser.remote(requests)
