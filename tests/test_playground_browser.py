"""The playground (``GET /``) in real headless Chromium, against a real service and the fake upstreams.

Debian's ``chromium`` driven by Playwright's sync API (``tests/browser.py``); the service runs on
loopback (``tests/servers.py``) with its providers pointed at ``tests/fakes``. The browser may reach
nothing but 127.0.0.1: every test ends by asserting the page asked for no other host and raised no
script error. Screenshots land in ``test-artifacts/screenshots/`` (gitignored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, CatalogueModel, load_catalogue
from modelgate.settings import Settings
from tests import browser as chromium
from tests.fakes import Fakes, Fault, Reply
from tests.servers import serve_in_thread

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parent.parent / "src" / "modelgate" / "static"

PROVIDER_LABELS = {
    "huggingface": "Hugging Face",
    "cloudflare": "Cloudflare Workers AI",
    "openrouter": "OpenRouter",
    "ollama": "Ollama",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not chromium.chromium_available():
        pytest.skip(f"{chromium.CHROMIUM} is not installed (Debian package 'chromium'; scripts/test.sh installs it)")
    with chromium.launch() as (_, launched):
        yield launched


@contextmanager
def serve(settings: Settings, catalogue: Catalogue | None = None) -> Iterator[str]:
    with serve_in_thread(create_app(settings, catalogue)) as url:
        yield url


#: Console errors Chrome logs for what a test provokes on purpose: an error status from the service,
#: and the CSP refusing the inline style/handler attributes of hostile markup while DOMParser parses
#: it (reported eagerly; DOMParser's document never runs handlers, CSP or not).
EXPECTED_CONSOLE = re.compile(r"status of (401|5\d\d)|violates the following Content Security Policy")


@contextmanager
def open_page(browser: Browser, url: str, viewport: Any = chromium.DESKTOP, path: str = "/") -> Iterator[Page]:
    """A fresh browser context on ``url + path``, checked on exit: no foreign host, no script error."""
    with chromium.session(browser, viewport) as session:
        session.page.goto(url + path)
        session.page.wait_for_selector("body[data-ready=true]")
        yield session.page
        assert session.guard.blocked == [], "the page tried to reach another host"
        assert session.page_errors == []
        assert [e for e in session.console_errors if not EXPECTED_CONSOLE.search(e)] == []


def first_model_of(catalogue: Catalogue, provider: str) -> CatalogueModel:
    return next(m for m in catalogue.models if m.provider == provider)


def open_chat(page: Page, model: CatalogueModel) -> None:
    """Pick ``model`` in the catalogue the way a keyboard user would: focus its Chat link, press Enter."""
    link = page.get_by_role("link", name=f"Chat with {model.id}")
    link.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text(model.name)
    expect(page.locator("#prompt")).to_be_focused()


def send(page: Page, text: str) -> None:
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")


def last_reply(page: Page) -> Any:
    return page.locator(".message.assistant").last


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside a decoded JSON value (the prompt sits in a different field per provider)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def wait_until_finished(page: Page) -> Any:
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-outcome", re.compile(r".+"))
    return reply


# --- catalogue ------------------------------------------------------------------------------------


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_catalogue_shows_every_publisher_and_model_of_the_default_catalogue(
    browser: Browser, viewport_name: str
) -> None:
    catalogue = load_catalogue()
    icons = json.loads((STATIC / "icons.json").read_text())["icons"]
    viewport = chromium.DESKTOP if viewport_name == "desktop" else chromium.PHONE
    with serve(Settings(), catalogue) as url, open_page(browser, url, viewport) as page:
        publishers = list(catalogue.document["configurations"])
        assert page.locator("section.publisher").evaluate_all("els => els.map(e => e.dataset.publisher)") == publishers
        expect(page.locator("#catalogue-summary")).to_have_text(
            f"{len(catalogue.models)} models from {len(publishers)} publishers"
        )
        for model in catalogue.declared:
            card = page.locator(f'.card[data-model="{model.id}"]')
            expect(card.locator("h3")).to_have_text(model.name)
            expect(card.locator(".chip").first).to_have_text(model.type)
            expect(card.locator(".chip.provider")).to_have_text(PROVIDER_LABELS[model.provider])
            expect(card.locator(".upstream")).to_have_text(model.upstream_model)
            # The seed's descriptions open with a <strong> headline: it survives sanitizing.
            assert card.locator(".description strong").count() >= 1
            tile = card.locator(".icon")
            expect(tile).to_have_attribute("data-icon", model.icon)
            if model.icon in icons:
                assert tile.locator("svg path").count() == len(icons[model.icon]["paths"])
            else:  # simple-icons:microsoft is not shipped (see LICENSES.md): a monogram instead
                expect(tile).to_have_class(re.compile(r"\bmonogram\b"))
                expect(tile).to_have_text(model.publisher[0].upper())
            params = dict(
                zip(
                    card.locator(".params dt").all_inner_texts(),
                    card.locator(".params dd").all_inner_texts(),
                    strict=True,
                )
            )
            assert params["Max tokens"] == f"{model.parameters.max_new_tokens:,}"
            assert params["Truncate"] == f"{model.parameters.truncate:,}"
            if model.parameters.typical_p == -1:
                assert params["Typical p"] == "default"
            link = card.get_by_role("link", name=f"Chat with {model.id}")
            expect(link).to_have_attribute("href", f"#/chat/{model.publisher}/{model.name}")
        chromium.screenshot(page, f"catalogue-{viewport_name}")
        # The filter narrows the view to matching models and hides emptied publishers.
        page.locator("#filter").fill("openrouter")
        expect(page.locator(".card:visible")).to_have_count(3)
        expect(page.locator("section.publisher:visible")).to_have_count(1)


def test_credits_name_the_icon_authors_and_licences(browser: Browser) -> None:
    with serve(Settings()) as url, open_page(browser, url) as page:
        page.get_by_role("link", name="Credits").click()
        credits = page.locator("#credits-view")
        expect(credits).to_be_visible()
        for text in ("Simple Icons", "CC0 1.0", "Lorc", "Delapouite", "game-icons.net", "CC BY 3.0"):
            expect(credits).to_contain_text(text)
        licences = credits.get_by_role("link", name=re.compile("LICENSES.md"))
        response = page.request.get(url + licences.get_attribute("href"))
        assert response.ok and "CC BY 3.0" in response.text() and "CC0 1.0 Universal" in response.text()


# --- hostile catalogue ------------------------------------------------------------------------------------

HOSTILE = (
    "<strong>Kept bold</strong> and <em>kept</em><br>"
    "<script>window.__pwned=1</script>"
    '<img src=x onerror="window.__pwned=1">'
    '<a href="javascript:window.__pwned=1">js link</a> '
    '<a href="https://example.org/model" onclick="window.__pwned=1" style="color:red">safe link</a>'
    '<svg><script>window.__pwned=1</script></svg><svg onload="window.__pwned=1"></svg>'
    '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe>'
    '<details open ontoggle="window.__pwned=1">toggled</details>'
    '<p style="background:url(https://example.org/x.png)" class="x">paragraph</p>'
)


def hostile_catalogue(tmp_path: Path) -> Catalogue:
    description = json.dumps(HOSTILE)  # a TOML basic string accepts JSON's escapes here
    path = tmp_path / "catalogue.toml"
    path.write_text(
        f"""
[[models]]
publisher = "evil"
name = "mallory-1"
provider = "ollama"
type = "chat"
icon = "unknown:icon"
description = {description}
[models.configuration]
model = "mallory:1b"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = -1
truncate = 2048
return_full_text = false
""",
        encoding="utf-8",
    )
    return load_catalogue(path)


def test_a_hostile_catalogue_description_never_runs(browser: Browser, tmp_path: Path) -> None:
    catalogue = hostile_catalogue(tmp_path)
    assert catalogue.models[0].description == HOSTILE
    with chromium.session(browser, chromium.DESKTOP) as session, serve(Settings(), catalogue) as url:
        page = session.page
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        description = page.locator('.card[data-model="evil/mallory-1"] .description')
        expect(description.locator("strong")).to_have_text("Kept bold")
        expect(description.locator("em")).to_have_text("kept")
        assert description.locator("br").count() == 1
        # Only the allowlisted elements exist, and of attributes only a safe href (plus rel/target).
        tags = description.evaluate("d => [...d.querySelectorAll('*')].map(e => e.localName)")
        assert set(tags) <= {"strong", "em", "br", "a", "p"}
        attributes = description.evaluate(
            "d => [...d.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
        )
        assert set(attributes) <= {"href", "rel", "target"}
        links = description.locator("a")
        expect(links).to_have_count(1)
        expect(links).to_have_attribute("href", "https://example.org/model")
        expect(links).to_have_attribute("rel", "noopener noreferrer")
        expect(description).to_contain_text("js link")  # the javascript: link is unwrapped to its text
        expect(description).not_to_contain_text("__pwned")  # script bodies are dropped, not shown
        # The unknown icon id gets a monogram.
        expect(page.locator('.card[data-model="evil/mallory-1"] .icon')).to_have_text("E")
        # The chat view shows the description too, through the same sanitizer.
        page.get_by_role("link", name="Chat with evil/mallory-1").click()
        expect(page.locator(".empty .description strong")).to_have_text("Kept bold")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert not any(u.endswith("/x") or "x.png" in u for u in requested), requested
        assert session.guard.blocked == []
        assert session.page_errors == []


# --- the JavaScript modules, in the page --------------------------------------------------------------------


def module_url(page: Page, name: str) -> str:
    src: str = page.evaluate("document.querySelector('script[type=module]').src")
    return src.rsplit("/", 1)[0] + "/" + name


SANITIZER_CASES = [
    (
        "<strong>a</strong><b>b</b><i>i</i><em>e</em><code>c</code>",
        "<strong>a</strong><b>b</b><i>i</i><em>e</em><code>c</code>",
    ),
    ("<p>x</p><ul><li>1</li></ul><ol><li>2</li></ol>", "<p>x</p><ul><li>1</li></ul><ol><li>2</li></ol>"),
    ("<div class=x><span style=y>text</span></div>", "text"),
    ("a<script>alert(1)</script>b", "ab"),
    ("<style>*{}</style>s", "s"),
    ('<img src=x onerror="alert(1)">i', "i"),
    ('<a href="javascript:alert(1)">j</a>', "j"),
    ('<a href=" JAVASCRIPT:alert(1)">j</a>', "j"),
    ('<a href="data:text/html,x">d</a>', "d"),
    ('<a href="/relative">r</a>', "r"),
    (
        '<a href="https://e.org/?a=1&amp;b=2" title=t onclick=x>h</a>',
        '<a href="https://e.org/?a=1&amp;b=2" rel="noopener noreferrer" target="_blank">h</a>',
    ),
    ('<a href="mailto:x@e.org">m</a>', '<a href="mailto:x@e.org" rel="noopener noreferrer" target="_blank">m</a>'),
    ("<strong onmouseover=alert(1)>s</strong>", "<strong>s</strong>"),
    ("<!-- c -->t", "t"),
    ("<svg><a href='https://e.org'>s</a></svg>", "s"),
    ("<math><mi xlink:href='javascript:alert(1)'>m</mi></math>", "m"),
    ("&lt;script&gt;", "&lt;script&gt;"),
    ("<br/>x<br>", "<br>x<br>"),
    # Parsed with scripting off, so the <p> escapes the <noscript>: but its title goes, nothing runs.
    ("<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>", "<p></p>"),
    ("a<noscript>n</noscript>b", "ab"),
]


def test_sanitizer_keeps_the_allowlist_and_nothing_else(browser: Browser) -> None:
    with serve(Settings()) as url, open_page(browser, url) as page:
        results = page.evaluate(
            """async ([url, cases]) => {
                const { sanitizeHtml } = await import(url);
                return cases.map(([input]) => {
                    const box = document.createElement("div");
                    box.append(sanitizeHtml(input));
                    return box.innerHTML;  // reading markup back is safe; it is never assigned
                });
            }""",
            [module_url(page, "sanitize.js"), SANITIZER_CASES],
        )
        assert results == [expected for _, expected in SANITIZER_CASES]
        assert page.evaluate("typeof window.__pwned") == "undefined"


MARKDOWN_CASES = [
    ("Hello **bold** and *em* and `code`", "<p>Hello <strong>bold</strong> and <em>em</em> and <code>code</code></p>"),
    (
        "```python\nprint('<b>hi</b>')\n```",
        '<pre data-lang="python"><code class="language-python">print(\'&lt;b&gt;hi&lt;/b&gt;\')</code></pre>',
    ),
    ("```\nunterminated\nfence", "<pre><code>unterminated\nfence</code></pre>"),
    ("- a\n- b\n\n1. one\n2. two", "<ul><li>a</li><li>b</li></ul><ol><li>one</li><li>two</li></ol>"),
    ("- outer\n  - inner", "<ul><li>outer<ul><li>inner</li></ul></li></ul>"),
    ("# Title\ntext", "<h3>Title</h3><p>text</p>"),
    ("> quoted", "<blockquote><p>quoted</p></blockquote>"),
    ("line one\nline two", "<p>line one<br>line two</p>"),
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("[site](https://e.org/a)", '<p><a href="https://e.org/a" rel="noopener noreferrer" target="_blank">site</a></p>'),
    (
        "see https://e.org/x.",
        '<p>see <a href="https://e.org/x" rel="noopener noreferrer" target="_blank">https://e.org/x</a>.</p>',
    ),
    ("**unclosed", "<p>**unclosed</p>"),
    (
        "| a | b |\n|---|--:|\n| 1 | 2 |",
        '<div class="table-wrap"><table><thead><tr><th>a</th><th style="text-align: right;">b</th></tr></thead>'
        '<tbody><tr><td>1</td><td style="text-align: right;">2</td></tr></tbody></table></div>',
    ),
    ("---", "<hr>"),
    ("snake_case_name and 2*3*4", "<p>snake_case_name and 2<em>3</em>4</p>"),
]


def test_markdown_renderer_builds_safe_dom(browser: Browser) -> None:
    with serve(Settings()) as url, open_page(browser, url) as page:
        results = page.evaluate(
            """async ([url, cases]) => {
                const { renderMarkdown } = await import(url);
                return cases.map(([input]) => {
                    const box = document.createElement("div");
                    box.append(renderMarkdown(input));
                    return box.innerHTML;
                });
            }""",
            [module_url(page, "markdown.js"), MARKDOWN_CASES],
        )
        assert results == [expected for _, expected in MARKDOWN_CASES]
        # Every prefix of a reply renders (the page re-renders as tokens arrive).
        reply = "".join(source for source, _ in MARKDOWN_CASES)
        failures = page.evaluate(
            """async ([url, text]) => {
                const { renderMarkdown } = await import(url);
                const failures = [];
                for (let i = 0; i <= text.length; i++) {
                    try { renderMarkdown(text.slice(0, i)); } catch (e) { failures.push([i, String(e)]); }
                }
                return failures;
            }""",
            [module_url(page, "markdown.js"), reply],
        )
        assert failures == []


def test_data_stream_parser_handles_any_chunking(browser: Browser) -> None:
    stream = (
        'f:{"messageId":"msg-1"}\n0:"Grüße 👋"\ng:"think\\nmore"\n0:"\\"quoted\\""\n'
        '8:[{"usageEstimated":true}]\ne:{"finishReason":"stop","isContinued":false}\n'
        'd:{"finishReason":"stop","usage":{"promptTokens":3,"completionTokens":4}}\n'
    ).encode()
    with serve(Settings()) as url, open_page(browser, url) as page:
        result = page.evaluate(
            """async ([url, bytes]) => {
                const { DataStreamParser, parseLine } = await import(url);
                const data = new Uint8Array(bytes);
                const whole = new DataStreamParser();
                const expected = [...whole.feed(data), ...whole.end()];
                const mismatches = [];
                for (let size = 1; size <= 7; size++) {  // every chunk size, so every split point
                    const parser = new DataStreamParser();
                    const parts = [];
                    for (let i = 0; i < data.length; i += size) parts.push(...parser.feed(data.slice(i, i + size)));
                    parts.push(...parser.end());
                    if (JSON.stringify(parts) !== JSON.stringify(expected)) mismatches.push(size);
                }
                const errors = [];
                for (const bad of ['1:"old protocol"', '0:"unterminated', "no colon"]) {
                    try { parseLine(bad); errors.push(null); } catch (e) { errors.push(e.constructor.name); }
                }
                // A last line without its newline still counts.
                const tail = new DataStreamParser();
                const tailParts = [...tail.feed(new TextEncoder().encode('0:"a"\\n0:"b"')), ...tail.end()];
                return { expected, mismatches, errors, tailParts };
            }""",
            [module_url(page, "datastream.js"), list(stream)],
        )
    assert result["mismatches"] == []
    assert result["expected"] == [
        {"code": "f", "value": {"messageId": "msg-1"}},
        {"code": "0", "value": "Grüße 👋"},
        {"code": "g", "value": "think\nmore"},
        {"code": "0", "value": '"quoted"'},
        {"code": "8", "value": [{"usageEstimated": True}]},
        {"code": "e", "value": {"finishReason": "stop", "isContinued": False}},
        {"code": "d", "value": {"finishReason": "stop", "usage": {"promptTokens": 3, "completionTokens": 4}}},
    ]
    assert result["errors"] == ["StreamProtocolError"] * 3
    assert result["tailParts"] == [{"code": "0", "value": "a"}, {"code": "0", "value": "b"}]


# --- chat against the fake upstreams ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["huggingface", "cloudflare", "openrouter", "ollama"])
def test_chat_with_a_model_of_each_provider_shows_the_reply(browser: Browser, fakes: Fakes, provider: str) -> None:
    catalogue = load_catalogue()
    model = first_model_of(catalogue, provider)
    fake = fakes[provider]
    tokens = ["Hello", " from", f" the {provider}", " fake", "."]
    fake.script(Reply(tokens=tokens, usage=(7, 5)))
    with serve(Settings(**fakes.settings_overrides()), catalogue) as url, open_page(browser, url) as page:
        open_chat(page, model)
        # Shift+Enter adds a line; only Enter sends.
        page.locator("#prompt").fill("first line")
        page.locator("#prompt").press("Shift+Enter")
        page.keyboard.type("second line")
        assert page.locator("#prompt").input_value() == "first line\nsecond line"
        assert fake.requests == []
        page.locator("#prompt").press("Enter")
        reply = wait_until_finished(page)
        expect(reply).to_have_attribute("data-outcome", "done")
        expect(reply.locator(".content")).to_have_text("".join(tokens))
        expect(reply).to_have_attribute("data-finish-reason", "stop")
        expect(reply.locator(".meta")).to_contain_text("finish: stop · 7 prompt + 5 completion tokens")
        expect(page.locator(".message.user .bubble")).to_have_text("first line\nsecond line")
        expect(page.locator("#prompt")).to_have_value("")
        expect(page.locator("#prompt")).to_be_focused()
        # Back to the catalogue: focus returns to the model that was open.
        page.get_by_role("link", name="Back to the models").click()
        expect(page.get_by_role("link", name=f"Chat with {model.id}")).to_be_focused()
    assert len(fake.requests) == 1
    assert any("first line\nsecond line" in text for text in strings_in(fake.last.json))


def test_a_finished_chat_renders_markdown_and_reasoning(browser: Browser, fakes: Fakes) -> None:
    catalogue = load_catalogue()
    model = catalogue.get("openrouter/deepseek-chat")
    answer = (
        "Here is a function that adds **two numbers**:\n\n"
        "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```\n\n"
        "Call it as `add(2, 3)`, which returns `5`.\n\n"
        "- works with *any* integers\n- no dependencies"
    )
    chunks = [answer[i : i + 9] for i in range(0, len(answer), 9)]
    first = Reply(tokens=["Sure."], usage=(12, 2))
    second = Reply(tokens=chunks, reasoning=["The user wants", " an addition function."], usage=(40, len(chunks)))
    fakes.openrouter.script(first, second, first, second)
    overrides = fakes.settings_overrides()
    for name, viewport in (("desktop", chromium.DESKTOP), ("phone", chromium.PHONE)):
        with serve(Settings(**overrides), catalogue) as url, open_page(browser, url, viewport) as page:
            open_chat(page, model)
            send(page, "Hello!")
            expect(wait_until_finished(page).locator(".content")).to_have_text("Sure.")
            send(page, "Write a Python function that adds two numbers.")
            reply = wait_until_finished(page)
            expect(reply).to_have_attribute("data-outcome", "done")
            code = reply.locator("pre[data-lang=python] code")
            expect(code).to_have_text("def add(a: int, b: int) -> int:\n    return a + b")
            expect(reply.locator(".content strong")).to_have_text("two numbers")
            expect(reply.locator(".content li")).to_have_count(2)
            reasoning = reply.locator("details.reasoning")
            expect(reasoning).to_be_visible()
            expect(reasoning).not_to_have_attribute("open", "")  # collapsed until asked for
            expect(reasoning.locator(".reasoning-text")).to_be_hidden()
            expect(reply.locator(".meta")).to_contain_text(
                f"finish: stop · 40 prompt + {len(chunks)} completion tokens"
            )
            chromium.screenshot(page, f"chat-{name}")
            reasoning.locator("summary").click()
            expect(reasoning.locator(".reasoning-text")).to_have_text("The user wants an addition function.")
    # The second request carried the whole conversation: the first exchange, then the new message.
    sent = fakes.openrouter.requests[1].json["messages"]
    assert [m["role"] for m in sent][-3:] == ["user", "assistant", "user"]
    assert sent[-2]["content"] == "Sure."


def test_stop_aborts_the_request_and_the_upstream_sees_the_disconnect(browser: Browser, fakes: Fakes) -> None:
    catalogue = load_catalogue()
    model = first_model_of(catalogue, "cloudflare")
    fakes.cloudflare.script(Reply(tokens=["Thinking", " very", " slowly"], fault=Fault.hang(after=2)))
    with serve(Settings(**fakes.settings_overrides()), catalogue) as url, open_page(browser, url) as page:
        open_chat(page, model)
        send(page, "Take your time")
        reply = last_reply(page)
        expect(reply.locator(".content")).to_have_text("Thinking very")
        expect(page.locator("#send")).to_be_hidden()
        page.get_by_role("button", name="Stop").click()
        expect(reply).to_have_attribute("data-outcome", "stopped")
        expect(reply.locator(".meta")).to_contain_text("stopped")
        expect(page.locator("#send")).to_be_visible()
        assert fakes.cloudflare.wait_for_disconnects(1) == 1
        # Esc in the message box stops too.
        fakes.cloudflare.script(Reply(tokens=["Once", " more"], fault=Fault.hang(after=1)))
        send(page, "And again")
        expect(last_reply(page).locator(".content")).to_have_text("Once")
        page.locator("#prompt").press("Escape")
        expect(last_reply(page)).to_have_attribute("data-outcome", "stopped")
        assert fakes.cloudflare.wait_for_disconnects(2) == 2
        # The partial replies stay, and the conversation goes on with them.
        fakes.cloudflare.script(Reply(tokens=["Back", "."]))
        send(page, "Again")
        expect(wait_until_finished(page).locator(".content")).to_have_text("Back.")
    sent = fakes.cloudflare.last.json["messages"]
    assert [m["content"] for m in sent if m["role"] == "assistant"] == ["Thinking very", "Once"]


def test_usage_the_service_estimated_is_marked_as_such(browser: Browser, fakes: Fakes) -> None:
    catalogue = load_catalogue()
    fakes.openrouter.script(Reply(tokens=["No", " usage", " reported"], usage=None, finish="length"))
    with serve(Settings(**fakes.settings_overrides()), catalogue) as url, open_page(browser, url) as page:
        open_chat(page, first_model_of(catalogue, "openrouter"))
        send(page, "Hi")
        reply = wait_until_finished(page)
        expect(reply).to_have_attribute("data-finish-reason", "length")
        expect(reply.locator(".meta")).to_contain_text(
            re.compile(r"finish: length · \d+ prompt \+ 3 completion tokens \(estimated\)")
        )


def test_an_upstream_error_mid_stream_is_shown(browser: Browser, fakes: Fakes) -> None:
    catalogue = load_catalogue()
    model = first_model_of(catalogue, "openrouter")
    fakes.openrouter.script(
        Reply(tokens=["Partial", " answer", " never seen"], fault=Fault.error_after(2, message="Model is overloaded"))
    )
    with serve(Settings(**fakes.settings_overrides()), catalogue) as url, open_page(browser, url) as page:
        open_chat(page, model)
        send(page, "Hi")
        reply = wait_until_finished(page)
        expect(reply).to_have_attribute("data-outcome", "error")
        expect(reply.locator(".content")).to_have_text("Partial answer")  # what arrived stays
        alert = reply.get_by_role("alert")
        expect(alert).to_contain_text("The reply failed")
        expect(alert).to_contain_text("overloaded")
        chromium.screenshot(page, "chat-error-desktop")


def test_a_seed_shaped_error_before_the_stream_is_shown(browser: Browser, fakes: Fakes) -> None:
    catalogue = load_catalogue()
    model = first_model_of(catalogue, "huggingface")
    settings = Settings(base_url_overrides=fakes.base_urls())  # no HF_TOKEN: the service answers 503 itself
    with serve(settings, catalogue) as url, open_page(browser, url) as page:
        open_chat(page, model)
        send(page, "Hi")
        reply = wait_until_finished(page)
        expect(reply).to_have_attribute("data-outcome", "error")
        alert = reply.get_by_role("alert")
        expect(alert).to_contain_text("Error 503")
        expect(alert).to_contain_text("HF_TOKEN")
        assert fakes.huggingface.requests == []
        # Retry sends the same message again (and fails the same way, visibly).
        alert.get_by_role("button", name="Retry").click()
        expect(page.locator(".message.user")).to_have_count(1)
        expect(wait_until_finished(page).get_by_role("alert")).to_contain_text("HF_TOKEN")


def test_an_api_key_is_asked_for_and_kept_only_in_session_storage(browser: Browser, fakes: Fakes) -> None:
    catalogue = load_catalogue()
    model = first_model_of(catalogue, "ollama")
    key = "mg-playground-test-key"
    settings = Settings(**fakes.settings_overrides(), api_keys=(key,))
    fakes.ollama.script(Reply(tokens=["Authorized", "!"]))
    with serve(settings, catalogue) as url, open_page(browser, url) as page:
        sent_headers: list[str | None] = []
        page.on(
            "request",
            lambda request: (
                sent_headers.append(request.headers.get("authorization")) if request.url.endswith("/chat") else None
            ),
        )
        open_chat(page, model)
        send(page, "Hello")
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-reason")).to_contain_text("requires an API key")
        expect(page.locator("#key-input")).to_be_focused()
        # A wrong key is refused, and the dialog says so.
        page.keyboard.type("wrong-key")
        page.keyboard.press("Enter")
        expect(page.locator("#key-reason")).to_contain_text("The key was refused")
        page.locator("#key-input").fill(key)
        page.keyboard.press("Enter")
        reply = wait_until_finished(page)
        expect(reply.locator(".content")).to_have_text("Authorized!")
        assert sent_headers == [None, "Bearer wrong-key", f"Bearer {key}"]
        assert page.evaluate("sessionStorage.getItem('modelgate.apiKey')") == key
        assert page.evaluate("localStorage.length") == 0
        assert page.context.cookies() == []
        # The key button can forget it.
        page.get_by_role("button", name=re.compile("API key")).click()
        page.get_by_role("button", name="Forget key").click()
        assert page.evaluate("sessionStorage.getItem('modelgate.apiKey')") is None
    assert len(fakes.ollama.requests) == 1


# --- usage ----------------------------------------------------------------------------------------


def test_the_usage_view_shows_the_callers_own_usage_with_the_key_it_uses(
    browser: Browser, fakes: Fakes, tmp_path: Path
) -> None:
    """``#/usage`` reads ``GET /api/usage`` with the key the chats use: that key's totals and rows, no one else's."""
    alice, bob = "mg-playground-alice-5e1", "mg-playground-bob-77c"
    catalogue = load_catalogue()
    mine, theirs = first_model_of(catalogue, "ollama"), first_model_of(catalogue, "openrouter")
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    settings = Settings(**fakes.settings_overrides(), api_keys=(alice, bob), database_url=database, probe_interval=0)
    fakes.ollama.script(Reply(tokens=["a", "b"], usage=(10, 2)), Reply(tokens=["c"], usage=(7, 1)))
    fakes.openrouter.script(Reply(tokens=["d"], usage=(500, 300)))
    with serve(settings, catalogue) as url:
        for key, model in ((alice, mine), (alice, mine), (bob, theirs)):
            body = {"messages": [{"role": "user", "content": "Hi"}]}
            answer = httpx.post(url + model.endpoint, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert answer.status_code == 200, answer.text
        with open_page(browser, url) as page:
            usage_requests: list[str | None] = []
            page.on(
                "request",
                lambda request: (
                    usage_requests.append(request.headers.get("authorization")) if "/api/usage" in request.url else None
                ),
            )
            page.get_by_role("link", name="Your usage").click()
            expect(page.locator("#key-dialog")).to_be_visible()
            page.locator("#key-input").fill(alice)
            page.keyboard.press("Enter")
            totals = page.locator("#usage-totals")
            expect(totals).to_contain_text("Requests2")
            expect(totals).to_contain_text("Prompt tokens17")
            expect(totals).to_contain_text("Completion tokens3")
            models = page.locator("#usage-models tbody tr")
            expect(models).to_have_count(1)
            expect(models.first).to_contain_text(mine.id)
            recent = page.locator("#usage-recent tbody tr")
            expect(recent).to_have_count(2)
            expect(page.locator("#usage-view")).not_to_contain_text(theirs.id)
            expect(page.locator("#usage-scope")).to_contain_text("your key")
            assert usage_requests == [None, f"Bearer {alice}"]
            chromium.screenshot(page, "usage-desktop")
