"""The dashboard in a real browser: start `streamlit run app/Home.py` on a free localhost port
and drive it with headless Chromium through Playwright. Used by tests/test_app_e2e.py and to
refresh the screenshots of docs/figures/:

    python app/browser.py --out docs/figures        # the shipped model (or --model DIR)
    python app/browser.py --only app-senses-atlas.png   # some of them

Uses the system Chromium (/usr/bin/chromium, or BACKPACK_CHROMIUM), never `playwright install`:
    apt-get install -y --no-install-recommends chromium && pip install playwright
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlparse

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("BACKPACK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Hang guards, not time budgets: every wait is for a condition (the server healthy, an element
# drawn, a rerun finished), and a loaded 2-core machine can take minutes for one (30 s timed out)
STARTUP_S, STEP_MS = 600, 300_000
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model: str | None, log_path: Path, env: dict[str, str] | None = None,
          python_prelude: str = "") -> Iterator[str]:
    """The dashboard on a free localhost port, run from the repository root (so that
    .streamlit/config.toml applies); yields its URL and stops it at the end. python_prelude:
    code run in the server process before Streamlit starts (the tests inject a failure)."""
    port = free_port()
    env = {**os.environ, **(env or {}), "BACKPACK_DEVICE": "cpu"}
    if model:
        env["BACKPACK_MODEL"] = model
    env.pop("STREAMLIT_BROWSER_GATHER_USAGE_STATS", None)  # the config file must say it
    run = ("import sys\nfrom streamlit.web import cli\n" + python_prelude +
           "\nsys.exit(cli.main())\n")
    args = [sys.executable, "-c", run, "run", str(REPO / "app" / "Home.py"),
            "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
            "--server.fileWatcherType", "none"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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
                    raise RuntimeError(f"the server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def chromium(playwright) -> Iterator:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=STEP_MS)
    try:
        yield browser
    finally:
        browser.close()


def watch_requests(page) -> list[str]:
    """Every URL the page requests, as it goes (to check that none leaves the machine)."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def remote(urls: list[str]) -> list[str]:
    """The URLs that would leave the machine."""
    return [u for u in urls if urlparse(u).scheme not in ("data", "blob", "about")
            and urlparse(u).hostname not in LOCAL_HOSTS]


def settle(page) -> None:
    """Wait until the app has finished its rerun (the 'Running…' status is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=STEP_MS)
    page.wait_for_timeout(200)


def open_page(page, url: str) -> None:
    page.goto(url, timeout=STEP_MS)
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=STEP_MS)  # drawn
    settle(page)


def drawn(page) -> None:
    """Wait until nothing is a placeholder any more and the Plotly charts are drawn."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')",
                           timeout=STEP_MS)
    settle(page)
    page.wait_for_timeout(1500)


def clip_between(page, top, bottom, pad: int = 12) -> dict:
    """The main column's rectangle from element `top` down to element `bottom`."""
    a, b = top.bounding_box(), bottom.bounding_box()
    column = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()
    return {"x": column["x"], "y": a["y"] - pad, "width": column["width"],
            "height": b["y"] + b["height"] - a["y"] + 2 * pad}


def shoot_page(page, url: str, path: Path, route: str) -> None:
    """A page as it opens."""
    open_page(page, f"{url}/{route}")
    drawn(page)
    page.screenshot(path=str(path))


def shoot_patching(page, url: str, path: Path) -> None:
    """Context page, patching France -> Germany: the patching section down to its download."""
    open_page(page, f"{url}/context?text={quote('The language of France is')}"
                    f"&corrupted={quote('The language of Germany is')}")
    drawn(page)
    for label, word in (("Target word (default: the text's top prediction)", " French"),
                        ("Foil word (default: the corrupted prompt's top prediction)", " German")):
        page.get_by_label(label).fill(word)
        page.keyboard.press("Enter")
        settle(page)
    drawn(page)
    top = page.get_by_text("Patching: what was said, and how it was weighted").first
    bottom = page.get_by_text("Download the patching JSON").first
    page.screenshot(path=str(path), clip=clip_between(page, top, bottom))


def shoot_atlas(page, url: str, path: Path) -> None:
    """Senses page: the atlas of the shipped corpus sample, built (or loaded) by its button."""
    open_page(page, f"{url}/senses?word=%20bank")
    drawn(page)
    page.get_by_role("button", name="Build or load the atlas").click()
    settle(page)
    page.get_by_text("pairs dead").first.wait_for(timeout=STEP_MS)
    drawn(page)
    top = page.get_by_text("Atlas: senses in use over a corpus").first
    box = top.bounding_box()
    column = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()
    page.screenshot(path=str(path), clip={"x": column["x"], "y": box["y"] - 12,
                                           "width": column["width"], "height": 1586})


def shoot_evaluate(page, url: str, path: Path) -> None:
    """Steer page: the README's edits evaluated on their target prompts (the expander)."""
    import json

    import state

    edits = json.loads((REPO / "analyses/data/edits_last_week.json").read_text())
    open_page(page, f"{url}/steer?edits={state.encode_edits(edits)}")
    drawn(page)
    title = "Blast radius, loss change and target-prompt success over a corpus, by strength"
    page.get_by_text(title).click()
    settle(page)
    expander = page.locator('[data-testid="stExpander"]').filter(has_text=title)
    expander.locator('input[type="file"]').last.set_input_files(
        str(REPO / "analyses/data/prompts_last_week.jsonl"))
    settle(page)
    page.get_by_role("button", name="Evaluate").click()
    settle(page)
    page.get_by_text("Target prompts: success").first.wait_for(timeout=STEP_MS)
    drawn(page)
    expander.screenshot(path=str(path))


def screenshots(out: Path, model: str | None, only: list[str] | None = None) -> list[Path]:
    """docs/figures' screenshots on `model`: each page (with an edit on the Steer page), then
    three pages after an interaction (patching, the atlas, an edit's evaluation). only: file
    names to take (default: all)."""
    import json

    sys.path.insert(0, str(REPO / "app"))
    import state

    text = ("The United States and the United Nations met in Paris. She went to the bank to "
            "deposit money. The bank by the river has money.")
    edits = {"version": 1, "edits": [{"kind": "knowledge_edit", "word": " United",
                                      "remove": " States", "add": " Nations"},
                                     {"kind": "scale_sense", "word": " bank", "sense": [0, 1],
                                      "factor": 2.0}]}
    pages = {
        "app-home.png": "",
        "app-senses.png": "senses?word=%20bank",
        "app-senses-compare.png": "senses?word=%20bank&word2=%20river",
        "app-context.png": f"context?text={quote(text)}&pos=9",
        "app-steer.png": f"steer?text={quote(text)}&pos=9&edits={state.encode_edits(edits)}",
        "app-models.png": "models",
    }
    heights = {"app-home.png": 900, "app-senses.png": 2600, "app-senses-compare.png": 2400,
               "app-context.png": 2600, "app-steer.png": 2900, "app-models.png": 2000}
    shots = [(name, heights[name], functools.partial(shoot_page, route=route))
             for name, route in pages.items()]
    shots += [("app-context-patching.png", 7000, shoot_patching),  # after an interaction
              ("app-senses-atlas.png", 6000, shoot_atlas),
              ("app-steer-evaluate.png", 6000, shoot_evaluate)]
    unknown = set(only or []) - {name for name, _, _ in shots}
    if unknown:
        raise ValueError(f"no screenshot named {sorted(unknown)}; the names: "
                         f"{', '.join(name for name, _, _ in shots)}")
    shots = [shot for shot in shots if not only or shot[0] in only]

    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p, chromium(p) as browser, \
            serve(model, out / ".server.log") as url:
        for name, height, shoot in shots:
            # Streamlit scrolls inside the page, so a tall window shows all of it
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(STEP_MS)
            requests = watch_requests(page)
            shoot(page, url, out / name)
            written.append(out / name)
            page.close()
            if remote(requests):
                raise RuntimeError(f"requests left the machine: {json.dumps(remote(requests))}")
    (out / ".server.log").unlink(missing_ok=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "figures"))
    parser.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="take only these screenshots (e.g. app-senses-atlas.png)")
    args = parser.parse_args()
    try:
        paths = screenshots(Path(args.out), args.model, args.only)
    except ValueError as e:
        parser.error(str(e))
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
