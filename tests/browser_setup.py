"""What the browser tests (test_app_e2e.py, test_patch_e2e.py) share before their first test:
app/ on sys.path for its `browser` helper, and a module-level skip, with the command that fixes
it, when Chromium or the playwright package is missing.

    browser, sync_api = browser_or_skip()   # at the top of a browser test module
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

APP = Path(__file__).resolve().parent.parent / "app"


def browser_or_skip() -> tuple[ModuleType, ModuleType]:
    """(app/browser.py, playwright.sync_api); skips the calling module when either is unusable."""
    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))
    import browser

    if not Path(browser.CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {browser.CHROMIUM}: apt-get install -y --no-install-recommends "
                    "chromium", allow_module_level=True)
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed: pip install playwright")
    return browser, sync_api
