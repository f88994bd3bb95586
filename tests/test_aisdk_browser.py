"""The Vercel AI SDK's own ``useChat`` in real headless Chromium, on the endpoint ``GET /models`` advertises.

Two small React apps (``tests/js/apps``, built here with vite from ``tests/js/node_modules``): AI SDK 5
(``@ai-sdk/react`` 2 with ``DefaultChatTransport({ api })``) and AI SDK 4 (``ai/react`` ``useChat({ api })``),
each configured with nothing but the endpoint. They are served from their own loopback server, so the
chat request is cross-origin (CORS preflight included); the service's providers are the fakes. The page
shows the messages, what ``onFinish`` received and the ``error`` useChat exposes; the tests read those.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from modelgate.app import create_app
from modelgate.settings import Settings
from tests import browser as chromium
from tests.fakes import Fakes, Fault, Reply
from tests.node_parsers import JS_DIR
from tests.servers import serve_in_thread

pytestmark = pytest.mark.browser

VITE = JS_DIR / "node_modules" / "vite" / "bin" / "vite.js"
#: Generous: a guard against a hung build, not a speed check.
_BUILD_TIMEOUT_SECONDS = 300
TOKENS = ["It", " is", " 4", "."]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not chromium.chromium_available():
        pytest.skip(f"{chromium.CHROMIUM} is not installed (Debian package 'chromium'; scripts/test.sh installs it)")
    with chromium.launch() as (_, launched):
        yield launched


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The two apps, built now from the sources, on their own origin."""
    node = shutil.which("node")
    if node is None or not VITE.is_file():
        pytest.skip("node or tests/js/node_modules is missing (run: cd tests/js && npm ci)")
    out = tmp_path_factory.mktemp("aisdk-apps")
    completed = subprocess.run(
        [node, str(VITE), "build", "--outDir", str(out)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=_BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, f"vite build failed: {completed.stderr}"
    with serve_in_thread(Starlette(routes=[Mount("/", StaticFiles(directory=out, html=True))])) as url:
        yield url


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings(**fakes.settings_overrides()))) as url:  # type: ignore[arg-type]
        yield url


def advertised_endpoint(service: str, provider: str) -> str:
    """The first chat endpoint ``GET /models`` lists for ``provider``, as a front-end developer copies it."""
    endpoints = httpx.get(service + "/models", timeout=30).json()["endpoints"][provider]
    path: str = endpoints[0]
    return path if path.startswith("http") else service + path


@contextmanager
def open_app(browser: Browser, apps: str, sdk: str, api: str) -> Iterator[Page]:
    assert urlsplit(apps).port != urlsplit(api).port, "the app must be cross-origin to the service"
    with chromium.session(browser, chromium.DESKTOP) as session:
        session.page.goto(f"{apps}/{sdk}/index.html?api={api}")
        expect(session.page.locator("#status")).to_have_text("ready")
        yield session.page
        assert session.guard.blocked == [], "the app tried to reach another host"
        assert session.page_errors == []


def ask(page: Page, text: str) -> None:
    page.locator("#prompt").fill(text)
    page.get_by_role("button", name="Send").click()


SDKS = ["v5", "v4"]


@pytest.mark.parametrize("sdk", SDKS)
def test_the_reply_renders_and_on_finish_sees_the_finish_reason(
    browser: Browser, apps: str, service: str, fakes: Fakes, sdk: str
) -> None:
    fakes.openrouter.script(Reply(tokens=TOKENS, finish="length"))
    api = advertised_endpoint(service, "openrouter")
    with open_app(browser, apps, sdk, api) as page:
        with page.expect_request(lambda request: request.url == api and request.method == "POST") as sent:
            ask(page, "What is 2+2?")
        body = json.loads(sent.value.post_data or "{}")
        expect(page.locator("#finish")).to_have_text("length")
        expect(page.locator("#messages li[data-role=assistant]")).to_have_text("".join(TOKENS))
        expect(page.locator("#messages li[data-role=user]")).to_have_text("What is 2+2?")
        expect(page.locator("#status")).to_have_text("ready")
        expect(page.locator("#error")).to_have_count(0)
    # The shapes the protocol choice tells apart, as the real clients send them: AI SDK 5 a trigger and
    # parts only; AI SDK 4.2+ parts beside the content string.
    user = body["messages"][-1]
    if sdk == "v5":
        assert "trigger" in body and "content" not in user and user["parts"][0]["text"] == "What is 2+2?"
    else:
        assert "trigger" not in body and user["content"] == "What is 2+2?" and "parts" in user
    # The prompt reached the provider as text, whichever message shape the SDK sent.
    assert fakes.openrouter.last.json["messages"][-1] == {"role": "user", "content": "What is 2+2?"}


@pytest.mark.parametrize("sdk", SDKS)
def test_an_upstream_failure_before_the_reply_shows_as_an_error(
    browser: Browser, apps: str, service: str, fakes: Fakes, sdk: str
) -> None:
    fakes.openrouter.script(Reply(fault=Fault.status(400, message="context length exceeded")))
    with open_app(browser, apps, sdk, advertised_endpoint(service, "openrouter")) as page:
        ask(page, "Hi")
        expect(page.locator("#error")).to_contain_text("context length exceeded")
        expect(page.locator("#status")).to_have_text("error")
        expect(page.locator("#messages li[data-role=assistant]")).to_have_count(0)


@pytest.mark.parametrize("sdk", SDKS)
def test_an_upstream_failure_mid_reply_shows_as_an_error(
    browser: Browser, apps: str, service: str, fakes: Fakes, sdk: str
) -> None:
    fakes.openrouter.script(Reply(tokens=TOKENS, fault=Fault.error_after(2, message="model crashed")))
    with open_app(browser, apps, sdk, advertised_endpoint(service, "openrouter")) as page:
        ask(page, "Hi")
        expect(page.locator("#error")).to_contain_text("model crashed")
        expect(page.locator("#status")).to_have_text("error")
