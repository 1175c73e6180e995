"""End to end in a real browser: one `streamlit run app/Home.py` on the tiny model for the module,
driven by headless Chromium through Playwright (Debian's /usr/bin/chromium, no `playwright
install`; app/browser.py). Each test also checks that no request left the machine (fonts
included). The server process injects a failure for texts holding FAIL_MARK, so that the error
boundary is seen in the browser; nothing in the app knows about it.

Skipped with the reason when Chromium or the playwright package is missing:
    apt-get install -y --no-install-recommends chromium && pip install playwright
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.browser_setup import APP, browser_or_skip

browser, sync_api = browser_or_skip()

TEXT = "The MacBook is made by Apple. The bank by the river has money."
FAIL_MARK = "<inject failure>"
SLOW_MARK = "<slow evaluation>"
# run in the server before Streamlit starts: the view model's prediction table fails on FAIL_MARK
INJECT = f"""
sys.path.insert(0, {str(APP)!r})
import views
_rows = views.prediction_rows
def _failing(session, *args, **kwargs):
    if {FAIL_MARK!r} in session.text:
        raise RuntimeError("injected failure for the browser test")
    return _rows(session, *args, **kwargs)
views.prediction_rows = _failing
# a long evaluation for texts holding SLOW_MARK: it reports progress until it is stopped (the
# browser test clicks Stop; it gives up by itself after 600 reports)
import time
import evaluation_view
_evaluate = evaluation_view.evaluate
def _slow(model, tokenizer, edits, choice, max_tokens, strengths, text="", progress=None, **kw):
    if {SLOW_MARK!r} not in text:
        return _evaluate(model, tokenizer, edits, choice, max_tokens, strengths, text=text,
                         progress=progress, **kw)
    for done in range(1, 601):
        time.sleep(0.2)
        progress(done, 1000)
    raise ValueError("the slow evaluation was not stopped")
evaluation_view.evaluate = _slow
"""


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("e2e")
    log = directory / "server.log"
    with browser.serve(str(tiny_model_dir), log, env={"BACKPACK_CACHE": str(directory / "cache")},
                       python_prelude=INJECT) as url:
        yield url, log


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as p, browser.chromium(p) as b:
        yield b


@pytest.fixture
def page(chromium, tmp_path):
    """A fresh tab (a new session); asserts at the end that every request stayed local."""
    tab = chromium.new_page(viewport={"width": 1400, "height": 1800})
    tab.set_default_timeout(browser.STEP_MS)
    requests = browser.watch_requests(tab)
    yield tab
    tab.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    tab.close()
    assert requests and not browser.remote(requests), browser.remote(requests)


def shown_predictions(page) -> list[list[str]]:
    """The before / after table at the chosen position, as text."""
    rows = page.locator('[data-testid="stTable"] tbody tr')
    return [rows.nth(i).locator("th, td").all_inner_texts() for i in range(rows.count())]


AFTER_COLUMNS_JS = """() => JSON.stringify([...document.querySelectorAll(
    '[data-testid="stTable"] tbody tr')].map(r => [...r.querySelectorAll('th, td')]
    .slice(3, 5).map(c => c.innerText)))"""


def test_ablating_a_sense_changes_the_predictions_shown(server, page):
    url, _ = server
    browser.open_page(page, f"{url}/steer?text={quote(TEXT)}")
    page.wait_for_selector('[data-testid="stTable"] tbody tr')
    before = shown_predictions(page)
    assert len(before) == 10 and all(row[1] == row[3] for row in before)  # no edits: equal

    senses = page.get_by_label("Senses", exact=True)  # the word: the token at the position
    senses.fill("0")
    senses.press("Enter")
    browser.settle(page)
    shown_after = AFTER_COLUMNS_JS  # the table's "after" columns as one string
    unedited = page.evaluate(shown_after)
    page.get_by_role("button", name="Add edit").click()
    page.wait_for_function("() => document.body.innerText.includes('ablate sense 0 of')")
    # the edit list is drawn before the table: wait for the table itself (a busy machine's
    # rerun can outlast settle()); a table that never changes fails here after STEP_MS
    page.wait_for_function(f"(old) => ({shown_after})() !== old", arg=unedited,
                           timeout=browser.STEP_MS)
    browser.settle(page)
    after = shown_predictions(page)
    page.wait_for_function("() => window.location.search.includes('edits=')")
    assert [row[1:3] for row in after] == [row[1:3] for row in before]  # "before" is unchanged
    assert [row[3:5] for row in after] != [row[3:5] for row in before]  # "after" changed


def test_edit_effect_view_jump_and_live_factor_slider(server, page, tiny_tokenizer):
    """An edit acting at its own word only: the chosen position does not move (KL 0), the effect
    view says where it acts, a button jumps there, and the slider changes the factor live."""
    import state

    url, _ = server
    bank = tiny_tokenizer.encode(TEXT).index(tiny_tokenizer.encode(" bank")[0])
    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": "all",
                                      "factor": 1.5, "positions": [bank]}]}
    browser.open_page(page, f"{url}/steer?text={quote(TEXT)}&pos=2&edits={state.encode_edits(edits)}")
    page.wait_for_selector('[data-testid="stTable"] tbody tr')
    kl_here = page.locator('[data-testid="stMetric"]').filter(has_text="at 2")
    assert "0.0000" in kl_here.inner_text()  # the chosen position did not move
    page.get_by_text(f"most at {bank}").wait_for()  # the effect view says where it acts
    page.get_by_role("button", name=f"Jump to position {bank}").click()
    page.wait_for_function(f"() => window.location.search.includes('pos={bank}')")
    browser.settle(page)
    jumped = shown_predictions(page)
    assert [row[1] for row in jumped] != [row[3] for row in jumped]  # here the edit shows

    slider = page.get_by_role("slider")
    slider.focus()
    for _ in range(5):  # 1.5 -> 1.0 in steps of 0.1: a factor of 1 changes nothing
        slider.press("ArrowLeft")
    page.wait_for_function("() => document.body.innerText.includes('by 1 at positions')")
    browser.settle(page)
    unchanged = shown_predictions(page)
    assert [row[1:3] for row in unchanged] == [row[3:5] for row in unchanged]
    page.wait_for_function("() => !window.location.search.includes('edits=') || "
                           "atob(new URLSearchParams(window.location.search).get('edits')"
                           ".replace(/-/g, '+').replace(/_/g, '/')).includes('\"factor\":1')")


def test_byte_tokens_and_a_click_on_the_heatmap(server, page, tiny_tokenizer):
    url, _ = server
    text = "The bank \u2014 by the river."  # an em dash: bytes the tiny BPE never merged
    browser.open_page(page, f"{url}/context?text={quote(text)}&pos=0")
    # a click on a cell of the contextualization heatmap (a low row) picks that row's position
    browser.drawn(page)
    n = len(tiny_tokenizer.encode(text))
    area = page.locator(".js-plotly-plot").first.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(area["x"] + area["width"] * 0.5 / n,  # the centre of cell (n - 1, 0)
                     area["y"] + area["height"] * (1 - 0.5 / n))
    page.wait_for_function(f"() => window.location.search.includes('pos={n - 1}')")

    page.wait_for_selector('[data-testid="stDataFrame"]')
    shown = page.locator('[data-testid="stSelectbox"]').all_inner_texts()  # the position picker
    page.get_by_label("Position i (the prediction after this token)").click()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert any("<0xE2>" in o for o in options), options
    assert not any("\ufffd" in o for o in options + shown)


def test_a_failure_is_one_line_without_a_traceback(server, page):
    url, log = server
    browser.open_page(page, f"{url}/context?text={quote(FAIL_MARK + ' the bank')}")
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="Something went wrong")
    alert.wait_for()
    assert "RuntimeError: injected failure for the browser test" in alert.inner_text()
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body
    assert "Traceback" in log.read_text() and "injected failure" in log.read_text()


HOSTILE = "https://evil.example"


def test_user_text_in_a_link_is_plain_text_no_link_no_outside_request(server, page):
    """A shared link's edit set names itself with a phishing link, an image (which a browser
    would fetch), an autolink and HTML; a second link's refused edit set quotes the same in its
    error. Both read as typed: nothing becomes a link or an image, no request leaves the machine
    (the `page` fixture asserts that)."""
    import state

    url, _ = server
    name = f"[Click here to re-authenticate]({HOSTILE}/login)"
    description = (f"![pixel]({HOSTILE}/pixel.png) www.evil.example {HOSTILE}/auto "
                   f"<img src='{HOSTILE}/img.png'>")
    edits = {"version": 1, "name": name, "description": description,
             "edits": [{"kind": "ablate_sense", "word": " bank", "sense": 0}]}
    browser.open_page(page, f"{url}/steer?text={quote(TEXT)}&edits={state.encode_edits(edits)}")
    page.get_by_text("Click here to re-authenticate", exact=False).first.wait_for()
    body = page.locator("body").inner_text()
    assert name in body and f"![pixel]({HOSTILE}/pixel.png)" in body  # as typed
    assert no_hostile_elements(page)
    refused = {"version": 1, "name": name,
               "edits": [{"kind": "![k](https://evil.example/k.png)", "word": " bank"}]}
    browser.open_page(page, f"{url}/steer?text={quote(TEXT)}&edits={state.encode_edits(refused)}")
    page.get_by_text("The edit set in the link was not loaded").wait_for()
    shown = page.locator("body").inner_text().replace("\u2060", "")  # the joiner breaking autolinks
    assert "unknown edit kind '![k](https://evil.example/k.png)'" in shown
    assert no_hostile_elements(page)


def no_hostile_elements(page) -> bool:
    """No link to, image from or element sourcing the hostile host anywhere in the page."""
    return page.locator('a[href*="evil"], img, [src*="evil"]').count() == 0


def test_a_long_evaluation_says_its_time_left_and_stops(server, page):
    """The Stop button interrupts a running evaluation at its next progress report; the page then
    says it stopped, and keeps nothing."""
    import state

    url, _ = server
    edits = {"version": 1, "edits": [{"kind": "ablate_sense", "word": " bank", "sense": 0}]}
    text = f"The bank by the river. {SLOW_MARK}"
    browser.open_page(page, f"{url}/steer?text={quote(text)}&edits={state.encode_edits(edits)}")
    page.get_by_text("Blast radius, loss change").click()
    page.get_by_text("the text above").click()
    browser.settle(page)
    page.get_by_role("button", name="Evaluate").click()
    page.get_by_text("s left").first.wait_for()  # "batch 2 of 1000; about 3 min 19 s left"
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("The evaluation was stopped").wait_for()
    assert "Stopped after" in page.locator("body").inner_text()
    assert page.get_by_text("the slow evaluation was not stopped").count() == 0


def test_views_token_text_changed_rows_divergence_and_sense_cards(server, page, tiny_tokenizer):
    """The token-coloured text (hover: the weight by sense), the every-position table filtered to
    changed rows, the generations' divergence marked, and a sense card's Ablate button."""
    import state

    url, _ = server
    browser.open_page(page, f"{url}/context?text={quote(TEXT)}&pos=5")
    tokens = page.locator('span[title*="by sense"]')
    tokens.first.wait_for()
    assert tokens.count() == 6  # positions 0..5 have a weight in the prediction after 5
    tokens.nth(2).hover()
    assert "in the prediction after 5; by sense: " in tokens.nth(2).get_attribute("title")

    edits = {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": "all",
                                      "factor": 8.0}]}
    browser.open_page(page, f"{url}/steer?text={quote(TEXT)}&edits={state.encode_edits(edits)}")
    page.get_by_text("Only changed rows").click()
    browser.settle(page)
    page.wait_for_function("() => document.querySelector('[data-testid=\"stDataFrame\"]')")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("then diverge").or_(page.get_by_text("are identical")).first.wait_for()
    browser.settle(page)  # the caption comes before the marked texts: wait for the run's end
    if page.get_by_text("then diverge").count():  # the two sides' first differing tokens marked
        assert page.locator("mark").count() == 2

    browser.open_page(page, f"{url}/senses?word=%20bank")
    page.get_by_role("button", name="Ablate").first.click()
    page.wait_for_function("() => window.location.pathname.endsWith('/steer')")
    page.get_by_text("ablate sense").first.wait_for()


def test_screenshots_name_the_ones_they_can_take(tmp_path):
    """`python app/browser.py --only NAME` refuses a name it has no recipe for, listing the names
    (the six pages and the three taken after an interaction), before it starts anything."""
    with pytest.raises(ValueError, match="no screenshot named") as caught:
        browser.screenshots(tmp_path / "shots", None, only=["app-atlas.png"])
    for name in ("app-home.png", "app-context-patching.png", "app-senses-atlas.png",
                 "app-steer-evaluate.png"):
        assert name in str(caught.value)
    assert not (tmp_path / "shots").exists()
