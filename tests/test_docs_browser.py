"""``/docs`` works offline: Swagger UI from the installed package, under the page's own CSP, in Chromium.

The browser session (``tests/browser.py``) aborts every request not addressed to 127.0.0.1, which is
what a machine without internet does to a CDN: the operations list must still render.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from modelgate.app import create_app
from modelgate.routes.docs import assets_version
from modelgate.settings import Settings
from tests import browser as chromium
from tests.servers import serve_in_thread


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with serve_in_thread(create_app(Settings())) as url:
        yield url


def test_the_page_names_no_other_host_and_forbids_inline_script(service: str) -> None:
    response = httpx.get(service + "/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert re.findall(r"(?:src|href)=\"([^\"]+)\"", response.text) and not re.search(r"https?://", response.text)
    assert "<script>" not in response.text  # no inline script: the CSP below forbids it
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp


def test_the_assets_come_from_the_package(service: str) -> None:
    version = assets_version()
    js = httpx.get(f"{service}/docs/assets/{version}/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    css = httpx.get(f"{service}/docs/assets/{version}/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{service}/docs/assets/old/swagger-ui.css").headers["cache-control"] == "no-cache"
    for name in ["redoc.standalone.js", "..%2F..%2Fcore.py", "favicon.png"]:
        assert httpx.get(f"{service}/docs/assets/{version}/{name}").status_code == 404


@pytest.mark.browser
def test_docs_render_the_operations_with_the_network_closed(service: str) -> None:
    if not chromium.chromium_available():
        pytest.skip(f"{chromium.CHROMIUM} is not installed (Debian package 'chromium')")
    browser: Browser
    with chromium.launch() as (_, browser), chromium.session(browser, chromium.DESKTOP) as session:
        page = session.page
        page.goto(service + "/docs")
        operations = page.locator(".opblock .opblock-summary-path")
        expect(operations.filter(has_text=re.compile(r"^/v1/chat/completions$"))).to_have_count(1)
        expect(operations.filter(has_text=re.compile(r"^/models$"))).not_to_have_count(0)
        assert operations.count() >= 5
        expect(page.locator(".info .title")).to_contain_text("modelgate")
        assert session.guard.blocked == [], "the page tried to reach another host"
        assert session.page_errors == []
        assert session.console_errors == []  # a CSP violation would be logged here
