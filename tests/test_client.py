"""The Python clients against real servers: the modelgate service, and a scripted data-stream server."""

from __future__ import annotations

import json
import re
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import modelgate
from modelgate import (
    AsyncModelgateClient,
    ModelgateAPIError,
    ModelgateClient,
    ModelgateConnectionError,
    ModelgateStreamError,
    ModelsResponse,
)
from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.client import DataStreamDecoder, ModelgateClientError
from modelgate.settings import Settings
from tests import seed_model
from tests.catalogue_files import broken_copy
from tests.fakes import Fault, Reply
from tests.servers import run, serve_in_thread

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "models.example.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(create_app(Settings())) as base:
        yield base


# --- the public surface -------------------------------------------------------------------------


def test_all_public_names_are_exported_and_sorted() -> None:
    # dir(): the names are resolved lazily (modelgate/__init__.py), so vars() holds them only once used.
    public = [
        name
        for name in dir(modelgate)
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(getattr(modelgate, name), types.ModuleType)
    ]
    assert sorted(modelgate.__all__) == modelgate.__all__
    assert set(modelgate.__all__) == set(public)
    for name in ("ModelParameters", "ModelConfigurationData", "ModelConfiguration", "Endpoints", "ModelsResponse"):
        assert name in modelgate.__all__


# --- catalogue ------------------------------------------------------------------------------------


def test_sync_get_models_matches_the_seed_example(url: str) -> None:
    with ModelgateClient(url) as client:
        models = client.get_models()
    assert isinstance(models, ModelsResponse)
    assert models.model_dump(mode="json", exclude_none=True) == GOLDEN
    assert models.models[0] == "google/gemma-2-27b-it"


def test_the_seeds_own_model_validates_the_live_response(url: str) -> None:
    response = httpx.get(url + "/api/models", headers={"Content-Type": "application/json"})
    response.raise_for_status()
    seed = seed_model.ModelsResponse.model_validate(response.json())
    assert seed.endpoints["openrouter"] == GOLDEN["endpoints"]["openrouter"]
    assert (
        seed.configurations["deepseek-ai"]["DeepSeek-R1-Distill-Qwen-32B"].configuration.parameters.temperature == 0.6
    )


def test_async_get_models_and_endpoints(url: str) -> None:
    async def main() -> tuple[ModelsResponse, list[str]]:
        async with AsyncModelgateClient(url) as client:
            return await client.get_models(), await client.endpoints("openrouter")

    models, openrouter = run(main())
    assert models.model_dump(mode="json", exclude_none=True) == GOLDEN
    assert openrouter == [
        "/api/ai/openrouter/gemini-2.0-pro-exp-02-05/chat",
        "/api/ai/openrouter/deepseek-chat/chat",
        "/api/ai/openrouter/llama-3.3-70b-instruct/chat",
    ]


def test_endpoints_of_each_provider(url: str) -> None:
    with ModelgateClient(url + "/") as client:  # a trailing slash on the base URL is fine
        for provider in ("huggingface", "cloudflare", "openrouter", "ollama"):
            assert client.endpoints(provider) == GOLDEN["endpoints"][provider]
        with pytest.raises(ValueError, match="unknown provider 'openai'"):
            client.endpoints("openai")


def test_non_2xx_raises_with_the_seed_fields(url: str) -> None:
    with ModelgateClient(url + "/nope") as client, pytest.raises(ModelgateAPIError) as info:
        client.get_models()
    error = info.value
    assert error.status_code == error.statusCode == 404
    assert error.statusMessage == "Page not found: /nope/api/models"
    assert str(error) == "404 Page not found: /nope/api/models"


def test_a_500_raises_with_the_opaque_message() -> None:
    good = load_catalogue()
    app = create_app(Settings(), good)
    app.state.gateway.swap_catalogue(broken_copy(good))
    with serve_in_thread(app) as base:

        async def main() -> None:
            async with AsyncModelgateClient(base) as client:
                await client.get_models()

        with pytest.raises(ModelgateAPIError) as info:
            run(main())
    assert info.value.statusCode == 500
    assert info.value.statusMessage == "Internal Server Error"
    assert info.value.data is None


# --- chat, against a scripted server speaking the data stream v1 -----------------------------------


@dataclass
class Script:
    """What the scripted server answers next, and what it received."""

    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    error_body: dict[str, Any] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)


def scripted_server(script: Script) -> Starlette:
    async def chat(request: Request) -> Response:
        script.received.append(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "json": await request.json(),
            }
        )
        if script.status != 200:
            return JSONResponse(script.error_body, status_code=script.status)

        async def body() -> AsyncIterator[bytes]:
            for chunk in script.chunks:
                yield chunk

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

    return Starlette(routes=[Route("/api/ai/{publisher}/{name}/chat", chat, methods=["POST"])])


FINISH = b'e:{"finishReason":"stop","isContinued":false}\nd:{"finishReason":"stop"}\n'


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def chat_url(script: Script) -> Iterator[str]:
    with serve_in_thread(scripted_server(script)) as base:
        yield base


def test_chat_yields_text_skips_reasoning_and_sends_the_request(chat_url: str, script: Script) -> None:
    # Parts split mid-line and mid-UTF-8 character; U+2028 inside a string must not split a line.
    stream = 'f:{"messageId":"m1"}\ng:"thinking"\n0:"Hel"\n0:"lo \u2028 wörld"\n'.encode() + FINISH
    script.chunks = [stream[:5], stream[5:31], stream[31:52], stream[52:]]
    with ModelgateClient(chat_url, api_key="mg-key") as client:
        chunks = list(client.chat("qwen/Qwen2.5-72B-Instruct", "Hi", temperature=0.5))
    assert chunks == ["Hel", "lo \u2028 wörld"]
    (request,) = script.received
    assert request["path"] == "/api/ai/qwen/Qwen2.5-72B-Instruct/chat"
    assert request["query"] == {"protocol": "data"}
    assert request["headers"]["authorization"] == "Bearer mg-key"
    assert request["json"] == {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.5}


def test_chat_text_async_with_a_message_list(chat_url: str, script: Script) -> None:
    script.chunks = [b'0:"a"\n0:"b"\n', b'0:"c"\n' + FINISH]
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]

    async def main() -> str:
        async with AsyncModelgateClient(chat_url) as client:
            return await client.chat_text("openrouter/deepseek-chat", messages)

    assert run(main()) == "abc"
    assert script.received[0]["json"] == {"messages": messages}
    assert "authorization" not in script.received[0]["headers"]


def test_chat_error_part_raises_after_the_text_before_it(chat_url: str, script: Script) -> None:
    script.chunks = [b'0:"partial"\n3:"Upstream provider error (huggingface): overloaded"\n']
    seen: list[str] = []
    with ModelgateClient(chat_url) as client, pytest.raises(ModelgateStreamError) as info:
        for chunk in client.chat("qwen/Qwen2.5-72B-Instruct", "Hi"):
            seen.append(chunk)
    assert seen == ["partial"]
    assert info.value.message == "Upstream provider error (huggingface): overloaded"


def test_chat_stream_without_finish_raises(chat_url: str, script: Script) -> None:
    script.chunks = [b'0:"cut short"\n']

    async def main() -> str:
        async with AsyncModelgateClient(chat_url) as client:
            return await client.chat_text("qwen/Qwen2.5-72B-Instruct", "Hi")

    with pytest.raises(ModelgateStreamError, match="without a finish part"):
        run(main())


def test_chat_non_2xx_raises_with_the_seed_fields(chat_url: str, script: Script) -> None:
    script.status = 503
    script.error_body = {
        "statusCode": 503,
        "statusMessage": "Provider 'huggingface' is not configured: set HF_TOKEN",
        "data": {"provider": "huggingface", "missing": ["HF_TOKEN"]},
    }
    with ModelgateClient(chat_url) as client, pytest.raises(ModelgateAPIError) as info:
        client.chat_text("qwen/Qwen2.5-72B-Instruct", "Hi")
    assert info.value.status_code == 503
    assert info.value.statusMessage == "Provider 'huggingface' is not configured: set HF_TOKEN"
    assert info.value.data == {"provider": "huggingface", "missing": ["HF_TOKEN"]}


def test_chat_stops_reading_a_line_without_end(chat_url: str, script: Script) -> None:
    # A broken or hostile server sending one endless line must not make the caller buffer it all.
    script.chunks = [b'0:"' + b"x" * (1024 * 1024) for _ in range(9)]
    with ModelgateClient(chat_url) as client, pytest.raises(ModelgateStreamError, match="longer than 8388608 bytes"):
        client.chat_text("qwen/Qwen2.5-72B-Instruct", "Hi")


def test_chat_reads_only_the_head_of_a_huge_error_body(chat_url: str, script: Script) -> None:
    script.status = 502
    script.error_body = {"statusCode": 502, "statusMessage": "y" * (4 * 1024 * 1024)}

    async def main() -> str:
        async with AsyncModelgateClient(chat_url) as client:
            return await client.chat_text("qwen/Qwen2.5-72B-Instruct", "Hi")

    with pytest.raises(ModelgateAPIError) as info:
        run(main())
    assert info.value.status_code == 502
    # Cut at 64 KiB the JSON no longer parses: the message is the clipped text, not 4 MiB.
    assert info.value.statusMessage.startswith('{"statusCode":502')
    assert len(info.value.statusMessage) == 500


def test_decoder_refuses_a_complete_line_over_its_limit() -> None:
    with pytest.raises(ModelgateStreamError, match="longer than 16 bytes"):
        DataStreamDecoder(max_line_bytes=16).feed(b'0:"' + b"z" * 20 + b'"\n')
    assert DataStreamDecoder(max_line_bytes=16).feed(b'0:"' + b"z" * 10 + b'"\n') == [("0", "z" * 10)]


def test_chat_rejects_a_model_that_is_not_publisher_slash_name() -> None:
    with ModelgateClient("http://127.0.0.1:9") as client:
        for model in ("no-slash", "a/b/c", "/x", "x/", "../v1", "../..", "a/.."):
            with pytest.raises(ValueError, match="publisher/name"):
                list(client.chat(model, "Hi"))


@pytest.mark.parametrize("model", ["a/b#x", "a/b?x=1"])
def test_a_model_name_is_sent_as_path_segments_never_as_url_syntax(chat_url: str, script: Script, model: str) -> None:
    """Found from outside: "a/b#x" was sent to /api/ai/a/b (the fragment dropped), "a/b?x=1" with a query."""
    script.chunks = [b'0:"ok"\n' + FINISH]
    with ModelgateClient(chat_url) as client:
        list(client.chat(model, "Hi"))
    publisher, _, name = model.partition("/")
    assert unquote(script.received[-1]["path"]) == f"/api/ai/{publisher}/{name}/chat"  # all of it, in the path


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        (b"0:null\n" + FINISH, "a text part that is not text: null"),
        (b'0:{"a":1}\n' + FINISH, 'a text part that is not text: {"a": 1}'),
        (b'3:{"message":"boom"}\n', 'an error part: {"message": "boom"}'),
        (FINISH + b'0:"more"\n', "went on after its finish part"),
    ],
)
def test_parts_that_break_the_protocol_raise_instead_of_showing_python_values(
    chat_url: str, script: Script, chunks: bytes, message: str
) -> None:
    """Found from outside: "0:null" was yielded as the text "None", an error object as its Python repr."""
    script.chunks = [chunks]
    with ModelgateClient(chat_url) as client, pytest.raises(ModelgateStreamError, match=re.escape(message)):
        list(client.chat("qwen/Qwen2.5-72B-Instruct", "Hi"))


def test_an_error_page_is_one_line() -> None:
    response = httpx.Response(500, content=b"<html><body><h1>500</h1>\n<p>oops</p>\n</body></html>")
    assert str(ModelgateAPIError.from_response(response)) == "500 <html><body><h1>500</h1> <p>oops</p> </body></html>"
    nested = httpx.Response(400, json={"error": {"message": "nope\nsecond line"}})
    assert ModelgateAPIError.from_response(nested).statusMessage == "nope second line"


def test_an_injected_http_client_is_used_and_left_open(chat_url: str, script: Script) -> None:
    script.chunks = [b'0:"ok"\n' + FINISH]
    with httpx.Client(headers={"X-Trace": "t-1"}) as http:
        with ModelgateClient(chat_url, http_client=http) as client:
            assert client.chat_text("a/b", "Hi") == "ok"
        assert not http.is_closed
    assert script.received[0]["headers"]["x-trace"] == "t-1"


# --- the decoder ------------------------------------------------------------------------------------


def test_decoder_handles_every_split_point() -> None:
    stream = 'f:{"messageId":"m"}\r\n0:"a\\nb"\n0:"\u00e9\U0001f600"\n8:[{"usageEstimated":true}]\nd:{}'.encode()
    expected = [
        ("f", {"messageId": "m"}),
        ("0", "a\nb"),
        ("0", "\u00e9\U0001f600"),
        ("8", [{"usageEstimated": True}]),
        ("d", {}),
    ]
    for cut in range(len(stream) + 1):
        decoder = DataStreamDecoder()
        parts = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) + decoder.flush()
        assert parts == expected, cut


def test_decoder_rejects_a_malformed_line() -> None:
    with pytest.raises(ModelgateStreamError, match="malformed"):
        DataStreamDecoder().feed(b"not a part\n")
    with pytest.raises(ModelgateStreamError, match="malformed"):
        DataStreamDecoder().feed(b"0:{broken\n")


# --- chat, end to end: the real service over the fake upstreams ---------------------------------------


@pytest.fixture
def gateway_url(fakes: Any) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides(), api_keys=("mg-test-key-1",))
    with serve_in_thread(create_app(settings)) as base:
        yield base


def test_chat_end_to_end_through_openrouter(gateway_url: str, fakes: Any) -> None:
    fakes.openrouter.script(Reply(tokens=["Hel", "lo", " there"]))
    with ModelgateClient(gateway_url, api_key="mg-test-key-1") as client:
        chunks = list(client.chat("openrouter/deepseek-chat", "Hi"))
    assert "".join(chunks) == "Hello there"
    sent = fakes.openrouter.last.json
    assert sent["model"] == "deepseek/deepseek-chat:free"
    assert sent["messages"][-1] == {"role": "user", "content": "Hi"}


def test_chat_end_to_end_skips_reasoning(gateway_url: str, fakes: Any) -> None:
    fakes.ollama.script(Reply(tokens=["4"], reasoning=["2+2 ", "is 4"]))

    async def main() -> str:
        async with AsyncModelgateClient(gateway_url, api_key="mg-test-key-1") as client:
            return await client.chat_text("ollama/rwkv-6-world", [{"role": "user", "content": "2+2?"}])

    assert run(main()) == "4"


def test_chat_end_to_end_mid_stream_error(gateway_url: str, fakes: Any) -> None:
    fakes.openrouter.script(Reply(tokens=["a", "b", "c"], fault=Fault.error_after(1, message="boom")))
    seen: list[str] = []
    with ModelgateClient(gateway_url, api_key="mg-test-key-1") as client, pytest.raises(ModelgateStreamError):
        for chunk in client.chat("openrouter/deepseek-chat", "Hi"):
            seen.append(chunk)
    assert seen == ["a"]


def test_chat_end_to_end_needs_the_api_key(gateway_url: str) -> None:
    with ModelgateClient(gateway_url) as client, pytest.raises(ModelgateAPIError) as info:
        client.chat_text("openrouter/deepseek-chat", "Hi")
    assert info.value.statusCode == 401
    assert "API key" in info.value.statusMessage


def test_chat_end_to_end_unknown_model_is_404(gateway_url: str) -> None:
    with ModelgateClient(gateway_url, api_key="mg-test-key-1") as client, pytest.raises(ModelgateAPIError) as info:
        client.chat_text("acme/none", "Hi")
    assert info.value.status_code == 404


def test_an_answer_that_is_no_models_document_is_a_client_error(hostile: Any) -> None:
    """Found from outside: pydantic's ValidationError escaped ``get_models`` (the README names the client's own)."""
    from tests.fakes.hostile import response_head

    async def script(_: Any) -> AsyncIterator[bytes]:
        yield response_head(200, {"Content-Type": "application/json"}) + b'{"models": [1]}'

    hostile.reset(script)
    with ModelgateClient(hostile.url) as client, pytest.raises(ModelgateClientError, match="not a GET /models"):
        client.get_models()


def test_a_reply_cut_mid_body_is_a_stream_error(hostile: Any) -> None:
    """httpx's RemoteProtocolError escaped ``chat`` (sync and async) for a body cut before its length."""
    from tests.fakes.hostile import response_head

    async def script(_: Any) -> AsyncIterator[bytes]:
        yield response_head(200, {"Content-Length": "100"}) + b'0:"partial"\n'

    hostile.reset(script)
    seen: list[str] = []
    with ModelgateClient(hostile.url) as client, pytest.raises(ModelgateStreamError, match="was cut") as cut:
        seen.extend(client.chat("a/b", "Hi"))
    assert seen == ["partial"]
    assert isinstance(cut.value.__cause__, httpx.RemoteProtocolError)  # the cause is kept

    async def main() -> str:
        async with AsyncModelgateClient(hostile.url) as client:
            return await client.chat_text("a/b", "Hi")

    with pytest.raises(ModelgateStreamError, match="was cut"):
        run(main())


# --- transport failures: the client's own error, cause chained, no credential --------------------------------

SECRET_KEY = "mg-client-secret-key-0123456789"


def _down_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago), with a password in it."""
    from tests.redis_server import free_port

    return f"http://admin:s3cr3t-pw@127.0.0.1:{free_port()}"


def _assert_transport_error(error: BaseException, cause: type[BaseException]) -> None:
    assert isinstance(error, ModelgateConnectionError) and isinstance(error, ModelgateClientError)
    assert isinstance(error.__cause__, cause), repr(error.__cause__)
    message = str(error)
    assert "127.0.0.1" in message and "admin:***@" in message
    assert "s3cr3t-pw" not in message and SECRET_KEY not in message


def test_a_server_that_is_down_raises_the_clients_own_error() -> None:
    """httpx's ConnectError escaped every method (sync and async, ``get_models`` and ``chat``) when nothing listened:
    a caller catching ``ModelgateClientError``, as the README says to, got a traceback instead."""
    url = _down_url()
    with ModelgateClient(url, api_key=SECRET_KEY) as client:
        with pytest.raises(ModelgateClientError) as caught:
            client.get_models()
        _assert_transport_error(caught.value, httpx.ConnectError)
        with pytest.raises(ModelgateClientError) as caught:
            list(client.chat("a/b", "Hi"))
        _assert_transport_error(caught.value, httpx.ConnectError)

    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with AsyncModelgateClient(url, api_key=SECRET_KEY) as client:
            for call in (client.get_models(), client.chat_text("a/b", "Hi")):
                try:
                    await call
                except ModelgateClientError as exc:
                    errors.append(exc)
        return errors

    errors = run(main())
    assert len(errors) == 2
    for error in errors:
        _assert_transport_error(error, httpx.ConnectError)


def test_no_answer_within_the_timeout_raises_the_clients_own_error(hostile: Any) -> None:
    """A server that takes the request and never answers: httpx's ReadTimeout escaped."""
    import asyncio

    async def silent(_: Any) -> AsyncIterator[bytes]:
        await asyncio.sleep(30)
        yield b""

    hostile.reset(silent)
    url = hostile.url.replace("//", "//admin:s3cr3t-pw@")
    with ModelgateClient(url, api_key=SECRET_KEY, timeout=0.2) as client, pytest.raises(ModelgateClientError) as caught:
        list(client.chat("a/b", "Hi"))
    _assert_transport_error(caught.value, httpx.ReadTimeout)

    async def main() -> None:
        async with AsyncModelgateClient(url, api_key=SECRET_KEY, timeout=0.2) as client:
            await client.get_models()

    with pytest.raises(ModelgateClientError) as caught:
        run(main())
    _assert_transport_error(caught.value, httpx.ReadTimeout)


def test_an_error_answer_cut_before_its_end_raises_the_clients_own_error(hostile: Any) -> None:
    """The connection broke while the client read a 500's body (or the catalogue): httpx's error escaped."""
    from tests.fakes.hostile import response_head

    async def script(_: Any) -> AsyncIterator[bytes]:
        yield response_head(500, {"Content-Length": "100"}) + b'{"statusCode": 500'

    hostile.reset(script)
    with ModelgateClient(hostile.url) as client:
        for call in (client.get_models, lambda: list(client.chat("a/b", "Hi"))):
            with pytest.raises(ModelgateConnectionError) as caught:
                call()
            assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
