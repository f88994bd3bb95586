"""A 200 to a streamed call whose body is no event stream (found from outside, a hostile upstream).

The fallback for llama.cpp's refusal (an *empty* 200, then the same request not streamed for the server's
reason) also fired for any body without events: a whole ``chat.completion``, a quota error under a 200, an HTML
page. Each made a second, billed generation, and the client got "truncated" instead of what the upstream said.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from tests.fakes.hostile import HostileUpstream, Received, response_head

WHOLE = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
)


@pytest.fixture
def service(hostile_openai_service: str) -> str:
    return hostile_openai_service


def answering(body: bytes, content_type: str) -> object:
    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, {"Content-Type": content_type})
        yield body

    return script


def stream(url: str) -> httpx.Response:
    body = {"model": "h/m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_a_whole_completion_is_read_as_one(hostile: HostileUpstream, service: str) -> None:
    hostile.reset(answering(WHOLE, "application/json"))  # type: ignore[arg-type]
    response = stream(service)
    assert response.status_code == 200
    chunks = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello whole"
    assert response.text.rstrip().endswith("data: [DONE]")
    assert len(hostile.received) == 1  # no second call


def test_an_error_body_under_a_200_is_the_error_it_says(hostile: HostileUpstream, service: str) -> None:
    hostile.reset(answering(b'{"error":{"message":"quota exceeded","code":429}}', "application/json"))  # type: ignore[arg-type]
    response = stream(service)
    assert response.status_code == 429, response.text
    assert "quota exceeded" in response.json()["error"]["message"]
    # A 429 is retried as any is (the retry policy), but never as the not-streamed second call.
    assert all(orjson.loads(r.body)["stream"] is True for r in hostile.received)


#: Lists 300 deep: JSON orjson reads (up to 1024 levels) but does not write (255).
DEEP = b"[" * 300 + b"]" * 300


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":[1,"two"]}',
        b'{"error":7}',
        b'{"error":{"message":"m","metadata":"s"}}',
        b'{"error":' + DEEP + b"}",
        b'{"error":{"message":"Provider returned error","metadata":{"raw":' + DEEP + b"}}}",
    ],
    ids=["list", "number", "text-metadata", "deep-list", "deep-raw"],
)
def test_an_error_body_of_no_shape_under_a_200_is_a_502(hostile: HostileUpstream, service: str, body: bytes) -> None:
    """A hostile server's ``error`` that is a list or a number (or whose ``metadata`` is text) raised an
    AttributeError out of the parser's end, and one nested deeper than orjson writes (as the error, or as
    OpenRouter's ``metadata.raw``) a TypeError: a 500 to the client."""
    hostile.reset(answering(body, "application/json"))  # type: ignore[arg-type]
    response = stream(service)
    assert response.status_code == 502, response.text
    assert "local" in response.json()["error"]["message"]  # the upstream named, the request not blamed
    assert httpx.get(service + "/health", timeout=5).status_code == 200


def test_a_page_is_quoted_not_called_again(hostile: HostileUpstream, service: str) -> None:
    hostile.reset(answering(b"<html><body>Service maintenance</body></html>", "text/html"))  # type: ignore[arg-type]
    response = stream(service)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "no event stream" in message and "Service maintenance" in message
    assert len(hostile.received) == 1


def test_an_empty_200_still_asks_once_more_for_the_servers_reason(hostile: HostileUpstream, service: str) -> None:
    """llama.cpp's refusal of a streamed request: the one case a second call is for."""
    calls = []

    async def script(received: Received) -> AsyncIterator[bytes]:
        calls.append(orjson.loads(received.body).get("stream"))
        if len(calls) == 1:
            yield response_head(200, {"Content-Type": "text/event-stream"})
        else:
            error = b'{"error":{"message":"the prompt is too long","code":400}}'
            yield response_head(400, {"Content-Type": "application/json"}) + error

    hostile.reset(script)
    response = stream(service)
    assert calls == [True, False]
    assert response.status_code == 400 and "the prompt is too long" in response.json()["error"]["message"]


@pytest.mark.parametrize("head", [b'data: {"id":"chatcmpl-1","choices":[{"ind', b": OPENROUTER PROCESSING\n\n"])
def test_an_event_stream_cut_inside_its_first_event_is_truncated_not_no_stream(
    hostile: HostileUpstream, service: str, head: bytes
) -> None:
    """Found by the stream-endings matrix: the error was right (502) but said the reply was no event stream."""
    hostile.reset(answering(head, "text/event-stream"))  # type: ignore[arg-type]
    response = stream(service)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "truncated" in message and "no event stream" not in message, message
    assert len(hostile.received) == 1
