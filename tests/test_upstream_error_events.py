"""Errors real Chat Completions servers send inside a 200 event stream, in the bytes they really write.

Found from outside, against the servers' source: each came to the client as a 502 (a failure of the provider,
retried) or as an empty successful reply, where the server had said the request itself was refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from tests.fakes.hostile import HostileUpstream, Received, response_head

#: TGI's own text for a prompt over its window (router/src/validation.rs ``MaxTotalTokens``).
TGI_TOO_LONG = (
    "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
    "Given: 3900 `inputs` tokens and 500 `max_new_tokens`"
)


@pytest.fixture
def service(hostile_openai_service: str) -> str:
    return hostile_openai_service


def streaming(body: bytes) -> object:
    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, {"Content-Type": "text/event-stream"})
        yield body

    return script


def ask(url: str) -> httpx.Response:
    body = {"model": "h/m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


@pytest.mark.parametrize(
    "event",
    [
        # TGI >= 2.4.1 on /v1/chat/completions (router/src/infer/mod.rs ``into_openai_event``): 422 whatever failed.
        orjson.dumps({"error": {"message": TGI_TOO_LONG, "http_status_code": 422}}),
        # TGI before it, and its native form (router/src/server.rs ``impl From<InferError> for Event``).
        orjson.dumps({"error": TGI_TOO_LONG, "error_type": "validation"}),
    ],
)
def test_a_tgi_validation_error_in_the_stream_is_the_clients_error(
    hostile: HostileUpstream, service: str, event: bytes
) -> None:
    """TGI validates a streamed chat request after its 200 (the validation runs inside the stream): a prompt over
    the window came to the client as a 502 "failed with status 502", a provider failure worth retrying."""
    hostile.reset(streaming(b"data:" + event + b"\n\ndata:[DONE]\n\n"))  # type: ignore[arg-type]
    response = ask(service)
    assert response.status_code in (400, 422), response.text
    assert "must be <= 4096" in response.json()["error"]["message"]
    assert len(hostile.received) == 1  # the same prompt again would be refused again


def test_a_tgi_overload_in_the_stream_stays_an_unavailability(hostile: HostileUpstream, service: str) -> None:
    """TGI's 422 is fixed: an overload (its queue full) says 422 too, and only its message tells it apart."""
    event = orjson.dumps({"error": {"message": "Model is overloaded", "http_status_code": 422}})
    hostile.reset(streaming(b"data:" + event + b"\n\ndata:[DONE]\n\n"))  # type: ignore[arg-type]
    response = ask(service)
    assert response.status_code == 503, response.text
    assert "Model is overloaded" in response.json()["error"]["message"]


def test_a_llama_cpp_error_line_is_the_error_it_says_not_an_empty_reply(hostile: HostileUpstream, service: str) -> None:
    """llama.cpp's server (builds of 2025, tools/server/server.cpp ``server_sent_event(sink, "error", error_data)``
    then ``data: [DONE]``) writes a failure as an ``error:`` line, a field the SSE spec does not know. A prompt over
    its context came to the client as a successful, empty reply."""
    error = {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 4400,
        "n_ctx": 4096,
    }
    hostile.reset(streaming(b"error: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n"))  # type: ignore[arg-type]
    response = ask(service)
    assert response.status_code == 400, response.text
    assert "exceeds the available context size" in response.json()["error"]["message"]


def test_a_reply_the_server_aborted_is_not_presented_as_complete(hostile: HostileUpstream, service: str) -> None:
    """vLLM (v1 ``FinishReason.ABORT``: "aborted for another reason", e.g. its ``POST /pause`` aborting in-flight
    requests) and SGLang (``FINISH_ABORT``, ``/abort_request``) end a cut reply with ``finish_reason: "abort"`` and
    ``[DONE]``. It reached the client as a normal ``"stop"``: half an answer, presented as the whole."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "The answer is"}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "abort"}]},
    ]
    body = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    hostile.reset(streaming(body))  # type: ignore[arg-type]
    response = ask(service)
    events = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    reasons = [c["choices"][0].get("finish_reason") for c in events if c.get("choices")]
    assert "stop" not in reasons, response.text
    assert any("error" in event for event in events), response.text
