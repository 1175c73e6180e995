"""End to end in a real browser: start `streamlit run app/Home.py` on the tiny model, open the
Steer page in headless Chromium (Playwright driving Debian's /usr/bin/chromium), ablate a sense,
and check that the predictions shown change. A screenshot is saved in the test's tmp directory.

Needs `apt-get install chromium` and `pip install playwright` (no `playwright install`: the
system browser is used); skipped with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("BACKPACK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TEXT = "The MacBook is made by Apple. The bank by the river has money."
STARTUP_S, STEP_MS = 60, 30_000

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y --no-install-recommends chromium",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: "
                                                             "pip install playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    """The dashboard on a free localhost port; yields its URL; stopped at the end."""
    port = free_port()
    env = {**os.environ, "BACKPACK_MODEL": str(tiny_model_dir), "BACKPACK_DEVICE": "cpu",
           "BACKPACK_CACHE": str(tmp_path / "cache"), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "Home.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--global.developmentMode", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"the server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def settle(page) -> None:
    """Wait until the app has finished its rerun (the 'Running…' status is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=STEP_MS)


def shown_predictions(page) -> list[list[str]]:
    """The before / after table at the chosen position, as text."""
    rows = page.locator('[data-testid="stTable"] tbody tr')
    return [rows.nth(i).locator("th, td").all_inner_texts() for i in range(rows.count())]


def test_ablating_a_sense_changes_the_predictions_shown(server, tmp_path):
    from urllib.parse import quote

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=STEP_MS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(STEP_MS)
            page.goto(f"{server}/steer?text={quote(TEXT)}", timeout=STEP_MS)
            page.wait_for_selector('[data-testid="stTable"] tbody tr')
            settle(page)
            before = shown_predictions(page)
            assert len(before) == 10
            assert all(row[1] == row[3] for row in before)  # no edits: after == before

            senses = page.get_by_label("Senses", exact=True)  # word: the last token, '.'
            senses.fill("0")
            senses.press("Enter")
            settle(page)
            page.get_by_role("button", name="Add edit").click()
            page.wait_for_function("() => document.body.innerText.includes('ablate sense 0 of')")
            settle(page)
            after = shown_predictions(page)
            # the URL is rewritten by the browser after the rerun's message: wait for it
            page.wait_for_function("() => window.location.search.includes('edits=')")
            url = page.url
            page.screenshot(path=str(tmp_path / "steer-after-ablation.png"), full_page=True)
        finally:
            browser.close()
    assert len(after) == 10
    assert [row[1:3] for row in after] == [row[1:3] for row in before]  # "before" is unchanged
    assert [row[3:5] for row in after] != [row[3:5] for row in before]  # "after" changed
    assert "edits=" in url  # the view, edit set included, is in the URL
    assert (tmp_path / "steer-after-ablation.png").stat().st_size > 10_000
