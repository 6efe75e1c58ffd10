"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

`make test` installs chromium when it is missing. Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in the test thread; the ORM calls our tests make
# between page actions are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run `make test` (it installs Debian's chromium) or set CHROMIUM_PATH."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs  # an alert() from injected script would land here
    yield page
    context.close()


@pytest.fixture
def screenshot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def login(page):
    def do(username: str, password: str, *, on=None):
        """Log in on `page`, or on another page (`on`) a test opened beside it."""
        target = on or page
        target.goto("/accounts/login/")
        target.get_by_label("Username").fill(username)
        target.get_by_label("Password").fill(password)
        target.get_by_role("button", name="Log in").click()
        target.wait_for_url("**/")

    return do


# True once nothing left on the page can still run script: the document and every image have
# loaded or failed (an <img onerror> runs in the same task that marks it complete) and htmx has
# no request, swap or settle under way (scripts in swapped-in HTML run during the swap).
SETTLED = """() => document.readyState === 'complete'
  && Array.from(document.images).every((img) => img.complete)
  && !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')"""


@pytest.fixture
def assert_no_dialog(page):
    """Wait until injected script would have run by now, then assert it opened no dialog."""

    def check():
        page.wait_for_function(SETTLED)
        assert page.dialogs == [], f"script ran: {page.dialogs}"

    return check
