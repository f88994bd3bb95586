"""Headless Chromium for the playground tests: Debian's ``chromium`` driven by Playwright's sync API.

Never ``playwright install``: the browser is the system package (``scripts/test.sh`` installs it),
launched from its fixed path with flags that keep it from calling home. Every request the page
makes goes through ``OnlyLoopback``, which aborts (and records) anything not addressed to
127.0.0.1, so a test can assert the page needs no other host.

Playwright's sync API runs its own event loop (in a greenlet) on the calling thread; the services
under test run on theirs in other threads (``tests/servers.py``), and no test here is async, so the
two never meet.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, ViewportSize, sync_playwright

#: Debian's package puts its launcher here; the tests use nothing else.
CHROMIUM = Path("/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 667}

#: Where the tests write screenshots (gitignored; CI may keep it as an artifact).
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


def chromium_available() -> bool:
    return CHROMIUM.exists() and shutil.which(str(CHROMIUM)) is not None


@contextmanager
def launch() -> Iterator[tuple[Playwright, Browser]]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield playwright, browser
        finally:
            browser.close()


@dataclass
class OnlyLoopback:
    """A route handler: requests to 127.0.0.1 go through, anything else is aborted and recorded."""

    blocked: list[str] = field(default_factory=list)

    def __call__(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if (parts.scheme in {"http", "https"} and parts.hostname == "127.0.0.1") or parts.scheme in {"data", "blob"}:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")


@dataclass
class Session:
    """One isolated browser context (own cookies and sessionStorage) with a page and its diagnostics."""

    context: BrowserContext
    page: Page
    guard: OnlyLoopback
    console_errors: list[str]
    page_errors: list[str]


@contextmanager
def session(browser: Browser, viewport: ViewportSize) -> Iterator[Session]:
    context = browser.new_context(viewport=viewport, device_scale_factor=1, color_scheme="light")
    guard = OnlyLoopback()
    context.route("**/*", guard)
    page = context.new_page()
    console_errors: list[str] = []
    page_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        yield Session(context, page, guard, console_errors, page_errors)
    finally:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
