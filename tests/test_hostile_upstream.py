"""A hostile upstream against a real ``modelgate serve`` process (issue 11: #1, #4, #7, #12).

The upstream (``tests/fakes/hostile.py``) is a raw loopback server sending what no provider should: a
gzip bomb, one line of hundreds of MiB, ``data:`` lines that never dispatch, endless comments, chunks
reflecting our ``Authorization`` header, error texts quoting our key. Each test checks what the caller
gets (an error status before the first token, an error part after it), that the service keeps serving
(``/health``), that its memory stays bounded, and that the upstream was cut off rather than read out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from modelgate.catalogue import default_catalogue_path
from tests.cli_process import Served, serve_subprocess, wait_for
from tests.fakes.hostile import HostileUpstream, Received, gzip_bomb, response_head

MiB = 1 << 20
OPENROUTER_KEY = "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"
HF_KEY = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234567"
CLOUDFLARE_TOKEN = "Zx8Qw7Er6Ty5Ui4Op3As2Df1Gh0JkLmNbVcXzAsD"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}
SSE = {"Content-Type": "text/event-stream"}
NDJSON = {"Content-Type": "application/x-ndjson"}
#: Peak resident memory the service may reach during an attack. An idle service sits near 100 MiB; the
#: attacks below would take it to 1 GiB (gzip) or hundreds of MiB (long lines) if they were buffered.
MAX_PEAK_RSS = 400 * MiB

GEMINI = "/api/ai/openrouter/gemini-2.0-pro-exp-02-05/chat"
DEEPSEEK = "/api/ai/openrouter/deepseek-chat/chat"
LLAMA = "/api/ai/openrouter/llama-3.3-70b-instruct/chat"
OLLAMA = "/api/ai/ollama/rwkv-6-world/chat"
QWEN = "/api/ai/qwen/Qwen2.5-72B-Instruct/chat"


def openrouter_token(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + b"\n\n"


def ollama_token(text: str) -> bytes:
    return orjson.dumps({"message": {"role": "assistant", "content": text}, "done": False}) + b"\n"


async def endless(piece: bytes, total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


# --- fixtures -------------------------------------------------------------------------------------


def service_env(url: str, **extra: str) -> dict[str, str]:
    return {
        **{f"MODELGATE_{name}_BASE_URL": url for name in ("HUGGINGFACE", "CLOUDFLARE", "OPENROUTER", "OLLAMA")},
        "OPENROUTER_API_KEY": OPENROUTER_KEY,
        "HF_TOKEN": HF_KEY,
        "CLOUDFLARE_ACCOUNT_ID": "acct-hostile",
        "CLOUDFLARE_API_TOKEN": CLOUDFLARE_TOKEN,
        "MODELGATE_PROBE_INTERVAL": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def service(hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``modelgate serve`` with every provider pointed at the hostile upstream, default limits."""
    env = service_env(hostile.url)
    with serve_subprocess([], tmp_path_factory.mktemp("hostile"), env=env) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh(hostile: HostileUpstream) -> Iterator[None]:
    hostile.reset()
    yield
    hostile.reset()


def peak_rss(served: Served) -> int:
    """The process's peak resident set (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{served.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def healthy(served: Served) -> None:
    response = httpx.get(served.url + "/health", timeout=5)
    assert response.status_code == 200


def chat(served: Served, path: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(served.url + path, json=BODY, timeout=timeout)


def text_parts(text: str) -> list[str]:
    """The text deltas of the data stream (``0:"…"``)."""
    return [orjson.loads(line[2:]) for line in text.splitlines() if line.startswith("0:")]


def error_parts(text: str) -> list[str]:
    """The messages of the data stream's error parts (``3:"…"``)."""
    return [orjson.loads(line[2:]) for line in text.splitlines() if line.startswith("3:")]


# --- #1: compressed replies -----------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_unread_and_the_worker_keeps_serving(hostile: HostileUpstream, service: Served) -> None:
    async def bomb(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, {**SSE, "Content-Encoding": "gzip"})
        async for piece in gzip_bomb(1024 * MiB):  # 1 GiB of "a", no newline, ~1 MiB on the wire
            yield piece

    hostile.reset(bomb)
    response = chat(service, GEMINI)
    assert response.status_code == 502, response.text
    assert "gzip-encoded" in response.json()["statusMessage"]
    assert hostile.received[0].headers["accept-encoding"] == "identity"
    # Refused from its headers: the connection was closed, not read to the end of the bomb.
    outcome = hostile.outcomes[0]
    assert outcome.done.wait(10) and outcome.cut_by_client
    healthy(service)
    assert peak_rss(service) < MAX_PEAK_RSS


def test_a_gzip_error_body_is_not_inflated_either(hostile: HostileUpstream, service: Served) -> None:
    async def bomb(_: Received) -> AsyncIterator[bytes]:
        yield response_head(429, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        async for piece in gzip_bomb(256 * MiB):
            yield piece

    hostile.reset(bomb)
    response = chat(service, QWEN)
    assert response.status_code == 429, response.text
    assert "gzip-encoded error body, not read" in response.json()["statusMessage"]
    healthy(service)
    assert peak_rss(service) < MAX_PEAK_RSS


# --- #4: unbounded lines, events and records --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "first", "flood"),
    [
        pytest.param(DEEPSEEK, openrouter_token("Hi"), b"x" * MiB, id="one-200MiB-sse-line"),
        pytest.param(DEEPSEEK, openrouter_token("Hi"), b"data: x\n" * (MiB // 8), id="data-lines-never-dispatched"),
        pytest.param(OLLAMA, ollama_token("Hi"), b'{"message":' + b" " * MiB, id="one-200MiB-ndjson-record"),
    ],
)
def test_an_endless_frame_after_the_first_token_ends_the_stream_with_an_error_part(
    hostile: HostileUpstream, service: Served, path: str, first: bytes, flood: bytes
) -> None:
    content_type = NDJSON if path == OLLAMA else SSE

    async def flooding(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, content_type)
        yield first
        async for piece in endless(flood, 200 * MiB):
            yield piece

    hostile.reset(flooding)
    response = chat(service, path)
    assert response.status_code == 200
    assert text_parts(response.text)[:1] == ["Hi"], response.text[:200]
    [message] = error_parts(response.text)
    assert f"more than {4 * MiB} bytes without completing an event" in message
    outcome = hostile.outcomes[0]
    assert outcome.done.wait(10) and outcome.cut_by_client
    assert outcome.written < 64 * MiB  # cut off near the limit, not read out
    healthy(service)
    assert peak_rss(service) < MAX_PEAK_RSS


def test_an_endless_line_before_the_first_token_is_an_error_status(hostile: HostileUpstream, service: Served) -> None:
    async def flooding(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        async for piece in endless(b"data: " + b"y" * MiB, 200 * MiB):
            yield piece

    hostile.reset(flooding)
    response = chat(service, LLAMA)
    assert response.status_code == 502, response.text
    assert "without completing an event" in response.json()["statusMessage"]
    assert hostile.outcomes[0].done.wait(10) and hostile.outcomes[0].cut_by_client
    healthy(service)


def test_health_answers_while_an_upstream_floods_a_stream(hostile: HostileUpstream, service: Served) -> None:
    """A liveness check, not a speed claim: /health keeps answering while one reply floods tokens."""
    token = openrouter_token("z" * 1024)
    release = threading.Event()

    async def flooding(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        while not release.is_set():  # tokens as fast as they are taken, until the test has checked
            yield token * 64

    hostile.reset(flooding)
    results: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: results.append(chat(service, LLAMA, timeout=120)))
    caller.start()
    try:
        wait_for(lambda: hostile.outcomes, "the flood to start")
        for _ in range(5):
            healthy(service)
        assert not hostile.outcomes[0].done.is_set()  # the flood was running all along
    finally:
        release.set()
        caller.join(timeout=120)
    assert results and text_parts(results[0].text)[0].startswith("zzz")


# --- #12: non-data bytes after the first token ------------------------------------------------------


def test_endless_comments_after_the_first_token_end_the_stream(hostile: HostileUpstream, service: Served) -> None:
    async def chatter(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        yield openrouter_token("Hi")
        async for piece in endless(b": keep-alive\n\n" * 4096, 1024 * MiB):
            yield piece

    hostile.reset(chatter)
    response = chat(service, LLAMA)
    assert text_parts(response.text)[:1] == ["Hi"], response.text[:200]
    [message] = error_parts(response.text)
    assert "without completing an event" in message
    assert hostile.outcomes[0].done.wait(10) and hostile.outcomes[0].cut_by_client


# --- #7: credentials in upstream text ---------------------------------------------------------------


def assert_no_key(text: str, key: str) -> None:
    assert key not in text
    assert key[:12] not in text  # nor a prefix long enough to narrow the key down


def test_a_reflected_authorization_never_reaches_the_client(hostile: HostileUpstream, service: Served) -> None:
    async def reflect(request: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        if request.body and b"after" in request.body:
            yield openrouter_token("Hi")
        yield b"data: {broken " + request.headers["authorization"].encode() + b"\n\n"

    hostile.reset(reflect)
    before = chat(service, GEMINI)  # the broken chunk is the first: an error status
    assert before.status_code == 502
    assert "unreadable stream chunk" in before.text and "[REDACTED]" in before.text
    assert_no_key(before.text, OPENROUTER_KEY)
    after = httpx.post(
        service.url + GEMINI, json={"messages": [{"role": "user", "content": "after"}]}, timeout=60
    )  # after a token: an error part
    [message] = error_parts(after.text)
    assert "unreadable stream chunk" in message and "[REDACTED]" in message
    assert_no_key(after.text, OPENROUTER_KEY)
    status = httpx.get(service.url + "/api/status", timeout=10).text
    assert_no_key(status, OPENROUTER_KEY)


def test_a_reflected_authorization_never_reaches_an_openai_client(hostile: HostileUpstream, service: Served) -> None:
    async def reflect(request: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE) + b"data: {broken " + request.headers["authorization"].encode() + b"\n\n"

    hostile.reset(reflect)
    response = httpx.post(
        service.url + "/v1/chat/completions",
        json={"model": "cloudflare/llama-3.3-70b-instruct-fp8-fast", **BODY},
        timeout=60,
    )
    assert response.status_code == 502, response.text
    assert "[REDACTED]" in response.json()["error"]["message"]
    assert_no_key(response.text, CLOUDFLARE_TOKEN)
    assert_no_key(httpx.get(service.url + "/api/status", timeout=10).text, CLOUDFLARE_TOKEN)


@pytest.mark.parametrize(
    ("path", "key", "body"),
    [
        pytest.param(
            DEEPSEEK,
            OPENROUTER_KEY,
            {"error": {"code": 403, "message": f"Key {OPENROUTER_KEY[:20]}… is disabled"}},
            id="openrouter",
        ),
        pytest.param(QWEN, HF_KEY, {"error": f"Token {HF_KEY[:14]}... lacks permission for this model"}, id="hf"),
    ],
)
def test_a_partial_key_in_upstream_error_text_is_redacted(
    hostile: HostileUpstream, service: Served, path: str, key: str, body: dict[str, object]
) -> None:
    async def refuse(_: Received) -> AsyncIterator[bytes]:
        yield response_head(403, {"Content-Type": "application/json"}) + orjson.dumps(body)

    hostile.reset(refuse)
    response = chat(service, path)
    assert response.status_code == 502, response.text
    assert "[REDACTED]" in response.text
    assert_no_key(response.text, key)
    assert_no_key(httpx.get(service.url + "/api/status", timeout=10).text, key)


# --- #12: stream duration and idle gaps (a service with tighter limits) -----------------------------


@pytest.fixture(scope="module")
def tight_service(hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """OpenRouter with a 1 s idle timeout; every stream limited to 3 s."""
    folder = tmp_path_factory.mktemp("tight")
    catalogue = default_catalogue_path().read_text(encoding="utf-8")
    catalogue = catalogue.replace("[providers.openrouter]\n", "[providers.openrouter]\nidle_timeout = 1\n", 1)
    (folder / "catalogue.toml").write_text(catalogue, encoding="utf-8")
    env = service_env(
        hostile.url,
        MODELGATE_CONFIG=str(folder / "catalogue.toml"),
        MODELGATE_UPSTREAM_MAX_STREAM_SECONDS="3",
    )
    with serve_subprocess([], folder, env=env) as served:
        yield served


async def slowly(first: bytes, filler: bytes) -> AsyncIterator[bytes]:
    yield first
    for _ in range(600):  # a minute of filler, a piece every 0.1 s
        await asyncio.sleep(0.1)
        yield filler


def test_slow_comments_do_not_reset_the_idle_timeout(hostile: HostileUpstream, tight_service: Served) -> None:
    async def chatter(_: Received) -> AsyncIterator[bytes]:
        async for piece in slowly(response_head(200, SSE) + openrouter_token("Hi"), b": still here\n\n"):
            yield piece

    hostile.reset(chatter)
    response = chat(tight_service, DEEPSEEK)
    assert text_parts(response.text)[:1] == ["Hi"], response.text[:200]
    [message] = error_parts(response.text)
    assert "no data for 1s mid-stream" in message


def test_the_maximum_stream_duration_ends_a_reply_that_never_finishes(
    hostile: HostileUpstream, tight_service: Served
) -> None:
    async def trickle(_: Received) -> AsyncIterator[bytes]:
        async for piece in slowly(response_head(200, NDJSON) + ollama_token("Hi"), ollama_token(".")):
            yield piece

    hostile.reset(trickle)
    response = chat(tight_service, OLLAMA)
    assert text_parts(response.text)[:1] == ["Hi"], response.text[:200]
    [message] = error_parts(response.text)
    assert "maximum stream duration of 3s" in message
    healthy(tight_service)


def test_the_maximum_stream_duration_bounds_a_whole_reply_and_says_so(
    hostile: HostileUpstream, tight_service: Served
) -> None:
    """A non-streamed call waits for a status line that only comes once everything is generated: the shorter of
    ``whole_reply_timeout`` (600 s) and the maximum stream duration (3 s) applies, and the error names that one."""

    async def silent(_: Received) -> AsyncIterator[bytes]:
        await asyncio.sleep(30)
        yield b""

    hostile.reset(silent)
    response = httpx.post(
        tight_service.url + "/v1/chat/completions",
        json={"model": "ollama/rwkv-6-world", "stream": False, **BODY},
        timeout=60,
    )
    assert response.status_code == 504, response.text
    message = response.json()["error"]["message"]
    assert "maximum stream duration of 3s" in message
    assert "whole-reply timeout" not in message
    healthy(tight_service)


# --- account blocks -------------------------------------------------------------------------------


def test_a_far_off_free_quota_reset_blocks_a_minute_at_most_and_status_shows_no_body(hostile: HostileUpstream) -> None:
    """A hostile OpenRouter's 429 "free-models-per-min" with an X-RateLimit-Reset thousands of years ahead blocked
    every ``:free`` model for a day (``MAX_RETRY_AFTER``). Its body's other fields never reach ``/api/status``."""
    import tomllib

    from modelgate.app import create_app
    from modelgate.catalogue import parse_catalogue
    from modelgate.settings import Settings
    from tests.catalogue_files import model_toml
    from tests.servers import serve_in_thread

    marker = "SECRET-IN-THE-BODY"
    error = {
        "code": 429,
        "message": "Rate limit exceeded: free-models-per-min.",
        "metadata": {"headers": {"X-RateLimit-Reset": str(10**17)}, "user": marker},
    }

    async def refusing(_: Received) -> AsyncIterator[bytes]:
        yield response_head(429, {"Content-Type": "application/json"})
        yield orjson.dumps({"error": error, "user_id": marker})

    hostile.reset(refusing)
    header = f'[providers.openrouter]\nkind = "openrouter"\nbase_url = "{hostile.url}"\n'
    toml = header + model_toml("h", "free", provider="openrouter", upstream="x/y:free")
    catalogue = parse_catalogue(tomllib.loads(toml), source="hostile.toml")
    settings = Settings(probe_interval=0, credentials={"openrouter": {"OPENROUTER_API_KEY": OPENROUTER_KEY}})
    body = {"model": "h/free", "messages": BODY["messages"]}
    with serve_in_thread(create_app(settings, catalogue)) as url:
        refused = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        blocked = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        status = httpx.get(url + "/api/status", timeout=10).text
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) <= 60, refused.headers
    assert blocked.status_code == 503 and int(blocked.headers["Retry-After"]) <= 60, blocked.headers
    assert "its :free models blocked" in blocked.json()["error"]["message"]
    assert len(hostile.received) == 1  # the block held: the second request was not sent
    assert "blocked for" in status and marker not in status and OPENROUTER_KEY not in status


# --- a whole reply's size, reasoning blocks among its parts -------------------------------------------


def _chunk(delta: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n"


@pytest.mark.parametrize("field", ["reasoning_details", "content"])
def test_a_whole_chat_completion_past_the_event_limit_is_a_502_and_the_upstream_is_cut(
    hostile: HostileUpstream, hostile_openai_service: str, field: str
) -> None:
    """A non-streamed /v1/chat/completions is asked of the upstream whole, one body read up to ``max_event_bytes``:
    reasoning blocks of almost 1 MiB each (``wire.MAX_OPAQUE_BYTES``, 1024 of them allowed per reply) or text sent
    without end, even as a stream, are not held past it."""
    piece = "r" * 900_000
    delta = {"reasoning_details": [{"type": "reasoning.text", "text": piece}]} if field != "content" else {field: piece}

    async def flooding(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        for _ in range(40):  # 36 MB
            yield _chunk(delta)
        yield b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    hostile.reset(flooding)
    body = {"model": "h/m", "messages": BODY["messages"]}
    response = httpx.post(hostile_openai_service + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 502, response.text[:200]
    assert f"the reply is larger than {4 * MiB} bytes" in response.json()["error"]["message"]
    assert hostile.outcomes[0].done.wait(10) and hostile.outcomes[0].cut_by_client
