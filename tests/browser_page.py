"""The playground in a real headless Chromium: what the modules that drive the page share (import `browser`, a
module-scoped fixture, with the helpers)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time

import pytest

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _browser_missing() -> str | None:
    if not CHROMIUM:
        return ("no chromium on PATH: `scripts/dev test` installs Debian's chromium with apt-get when run as root; "
                "else install it yourself or set LLAMASERVE_CHROMIUM to a Chromium binary")
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: pip install -e '.[test]'"
    return None


CHROMIUM = os.environ.get("LLAMASERVE_CHROMIUM") or shutil.which("chromium")
BROWSER_MISSING = _browser_missing()
# A mark, not a skip in the fixture, so that no server starts for tests that cannot run.
in_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def open_page(browser, srv, *, width=1280, height=900, scheme="light", wait_model=True):
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                                  permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(120_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: "Content Security Policy" in msg.text and errors.append(msg.text))
    page.errors = errors
    resp = page.goto(srv.base_url + "/")
    assert resp.status == 200 and page.url.endswith("/playground")
    if wait_model:
        wait_until(page, "document.getElementById('model').textContent.includes('context')")
    return page


def wait_until(page, condition: str, timeout: float = 120):
    """Polls a JavaScript condition. (Playwright's wait_for_function evaluates strings, which the page's CSP
    forbids; evaluate() is exempt.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {condition}")
        time.sleep(0.05)


def fill(page, **params):
    for name, value in params.items():
        box = page.locator(f'[data-param="{name}"]')
        if isinstance(value, bool):
            box.set_checked(value)
        elif box.evaluate("e => e.tagName") == "SELECT":
            box.select_option(str(value))
        else:
            box.fill(str(value))


def finished(page, count=1):
    wait_until(
        page,
        f"document.querySelectorAll('.choice .finish').length >= {count} && "
        "[...document.querySelectorAll('.choice .finish')].every(e => e.textContent.startsWith('finish_reason'))"
        " && !document.getElementById('send').disabled")
