"""End to end: the service on a loopback port, providers pointed at the fake upstreams.

Every endpoint ``GET /models`` advertises (and both alias forms) answers with the fake's text, read by
the AI SDK's own data stream parser; the fake received the catalogue's parameters under its own
names; each fault of the fakes reaches the client as the documented error.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, default_catalogue_path, load_catalogue, parse_catalogue
from modelgate.errors import BadRequest
from modelgate.routes.chat import parse_chat_body
from modelgate.settings import Settings
from modelgate.templates import get_template
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.node_parsers import parse_data_stream, parse_ui_stream, requires_node_parsers, run_chat_session
from tests.servers import serve_in_thread

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]
TOKENS = ["It", " is", " 4", "."]


def short_timeouts_catalogue(seconds: float = 0.5) -> Catalogue:
    raw = tomllib.loads(default_catalogue_path().read_text(encoding="utf-8"))
    for name in ("huggingface", "cloudflare", "openrouter", "ollama"):
        raw["providers"].setdefault(name, {}).update(first_token_timeout=seconds, idle_timeout=seconds)
    return parse_catalogue(raw, source="short-timeouts.toml")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, short_timeouts_catalogue())) as url:
        yield url


def post(url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, json={"messages": MESSAGES} if body is None else body, timeout=30, **kwargs)


def data_lines(text: str) -> list[tuple[str, str]]:
    return [(line[0], line[2:]) for line in text.splitlines()]


def reply_text(text: str, code: str = "0") -> str:
    return "".join(json.loads(value) for part, value in data_lines(text) if part == code)


# --- listed means callable --------------------------------------------------------------------------


def _check_parameters(catalogue: Catalogue, model_id: str, fakes: Fakes) -> None:
    model = catalogue.get(model_id)
    p = model.parameters
    # The last chat call (a background health probe may have listed the models since).
    call = [r for r in fakes[model.provider].requests if r.method == "POST"][-1]
    sent = call.json
    if model.provider == "huggingface":
        # The HF router: Chat Completions with the hub id; the router applies the chat template itself.
        assert call.path == "/v1/chat/completions"
        assert sent["model"] == model.upstream_model
        assert sent["messages"] == MESSAGES
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        assert sent["max_tokens"] == p.max_new_tokens
        assert sent.get("temperature") == p.temperature
        # TGI's parameters do not cross the router: reported as dropped, never sent.
        assert not {"typical_p", "repetition_penalty", "truncate", "inputs", "parameters"} & set(sent)
    elif model.provider == "cloudflare":
        assert sent["stream"] is True
        assert sent["messages"] == MESSAGES
        assert sent["max_tokens"] == p.max_new_tokens
        assert sent["repetition_penalty"] == p.repetition_penalty
        assert "typical_p" not in sent and "truncate" not in sent
    elif model.provider == "openrouter":
        assert sent["model"] == model.upstream_model
        assert sent["messages"] == MESSAGES
        assert sent["max_tokens"] == p.max_new_tokens
        # -1 in the catalogue means "the provider's default": the field is not sent at all.
        assert "repetition_penalty" not in sent and "typical_p" not in sent
    elif model.provider == "ollama":
        assert sent["model"] == model.upstream_model
        assert sent["messages"] == MESSAGES
        options = sent["options"]
        assert options["num_predict"] == p.max_new_tokens
        assert options["num_ctx"] == p.truncate
        assert "typical_p" not in options and "repeat_penalty" not in options
    else:  # pragma: no cover - a new provider needs its expectations here
        raise AssertionError(model.provider)


@requires_node_parsers
def test_every_advertised_endpoint_and_alias_answers(service: str, fakes: Fakes, catalogue: Catalogue) -> None:
    document = httpx.get(service + "/models").json()
    advertised = [path for paths in document["endpoints"].values() for path in paths]
    assert len(advertised) == len(document["models"]) == 12
    for model_id in document["models"]:
        model = catalogue.get(model_id)
        paths = [
            model.endpoint,
            f"/api/ai/{model.publisher}/{model.name}/chat",
            f"/api/ai/{model.provider}/{model.publisher}/{model.name}/chat",
        ]
        assert model.endpoint in advertised
        # DeepSeek-R1 reasons first: its serving provider sends the <think> block in the text.
        thinks = model.template is not None and get_template(model.template).starts_in_reasoning
        script = ["<think>", "Add.", "</think>", *TOKENS] if thinks else TOKENS
        for path in paths:
            fakes[model.provider].script(Reply(tokens=script))
            summary = parse_data_stream(service + path, {"id": "chat-1", "messages": MESSAGES})
            assert summary["status"] == 200, (path, summary)
            assert summary["text"] == "".join(TOKENS), path
            assert summary["reasoning"] == ("Add." if thinks else "")
            assert summary["errors"] == []
            finish = summary["finishMessage"]
            assert finish["finishReason"] == "stop"
            assert finish["usage"] == {"promptTokens": PROMPT_TOKENS, "completionTokens": len(script)}
            assert summary["useChat"]["message"]["content"] == "".join(TOKENS)
            assert summary["headers"]["x-vercel-ai-data-stream"] == "v1"
            assert summary["headers"]["x-modelgate-model"] == model_id
            _check_parameters(catalogue, model_id, fakes)


def test_dropped_parameters_are_reported(service: str, fakes: Fakes) -> None:
    response = post(service + "/api/ai/cloudflare/llama-3.3-70b-instruct-fp8-fast/chat")
    assert response.status_code == 200
    assert set(response.headers["x-modelgate-dropped-params"].split(",")) == {"truncate", "typical_p"}
    # The HF router carries the standard Chat Completions fields only: TGI's three are named, not lost.
    response = post(service + "/api/ai/huggingface/Qwen2.5-72B-Instruct/chat")
    assert response.headers["x-modelgate-dropped-params"] == "repetition_penalty,truncate,typical_p"
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat")
    assert "x-modelgate-dropped-params" not in response.headers


def test_query_parameters_of_the_original_are_accepted(service: str, fakes: Fakes) -> None:
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat?chat_id=abc&is_playground=true")
    assert response.status_code == 200
    assert ("0", '"Hello"') in data_lines(response.text)


def test_ai_sdk_5_parts_body(service: str, fakes: Fakes) -> None:
    body = {
        "id": "chat",
        "trigger": "submit-message",
        "messages": [
            {
                "id": "u1",
                "role": "user",
                "parts": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}],
            }
        ],
    }
    response = post(service + "/api/ai/openrouter/deepseek-chat/chat", body)
    assert response.status_code == 200
    assert fakes.openrouter.last.json["messages"] == [{"role": "user", "content": "What is 2+2?"}]


def test_ai_sdk_5_data_parts_are_skipped_as_the_sdk_skips_them(service: str, fakes: Fakes) -> None:
    # An app's own data parts (``data-*``) are never prompt text: convertToModelMessages drops them by default.
    parts = [{"type": "data-weather", "data": {"city": "Oslo"}}, {"type": "text", "text": "Hi"}]
    body = {"trigger": "submit-message", "messages": [{"id": "u1", "role": "user", "parts": parts}]}
    response = post(service + "/api/ai/openrouter/deepseek-chat/chat", body)
    assert response.status_code == 200
    assert fakes.openrouter.last.json["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "tool-weather", "toolCallId": "c1", "state": "output-available", "input": {}, "output": "sunny"},
        {"type": "dynamic-tool", "toolName": "weather", "toolCallId": "c1", "state": "input-available", "input": {}},
    ],
)
def test_ai_sdk_5_tool_parts_are_a_400_pointing_to_the_v1_tools(service: str, fakes: Fakes, part: dict) -> None:
    messages = [*AI_SDK_5_MESSAGES, {"id": "a1", "role": "assistant", "parts": [part]}]
    response = post(service + "/api/ai/openrouter/deepseek-chat/chat", {"messages": messages})
    assert response.status_code == 400
    assert "/v1/chat/completions with tools" in response.json()["statusMessage"]
    assert fakes.openrouter.requests == []


@pytest.mark.parametrize("kind", [["text"], {"a": 1}, None, 3])
def test_a_part_type_that_is_not_a_string_is_a_400(kind: Any) -> None:
    raw = json.dumps({"messages": [{"role": "user", "parts": [{"type": kind, "text": "x"}]}]}).encode()
    with pytest.raises(BadRequest, match=r"messages\[0\]\.parts\[0\] needs a string type"):
        parse_chat_body(raw, max_messages=10)


@pytest.mark.parametrize(
    ("last", "continues"),
    [
        ({"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "Once"}]}, "a1"),
        ({"id": "u2", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}, None),
        # Echoed in the stream and named in log lines: only a plain id is reused.
        ({"id": "a1\nforged log line", "role": "assistant", "parts": []}, None),
        ({"id": 7, "role": "assistant", "parts": []}, None),
        ({"role": "assistant", "content": "Once"}, None),
    ],
)
def test_a_reply_continuing_an_assistant_message_keeps_its_id(last: dict[str, Any], continues: str | None) -> None:
    raw = json.dumps({"messages": [*AI_SDK_5_MESSAGES, last]}).encode()
    assert parse_chat_body(raw, max_messages=10).continues == continues


# --- output protocols ---------------------------------------------------------------------------------


@requires_node_parsers
def test_ui_message_stream_through_the_ai_sdk_5_parser(service: str, fakes: Fakes) -> None:
    fakes.openrouter.script(Reply(tokens=TOKENS))
    url = service + "/api/ai/openrouter/deepseek-chat/chat?protocol=ui-strict"
    summary = parse_ui_stream(url, {"messages": MESSAGES}, sdk="ai5")
    assert summary["status"] == 200
    assert summary["text"] == "".join(TOKENS)


@requires_node_parsers
def test_a_refusal_reaches_an_ai_sdk_client_as_text(service: str, fakes: Fakes) -> None:
    # The AI SDK streams have no refusal part: the words of the model's refusal are the reply's text, not nothing.
    fakes.openrouter.script(Reply(tokens=["I can't", " help."], options={"refusal": True}))
    summary = parse_ui_stream(
        service + "/api/ai/openrouter/deepseek-chat/chat?protocol=ui-strict", {"messages": MESSAGES}, sdk="ai5"
    )
    assert (summary["status"], summary["text"]) == (200, "I can't help.")


#: What AI SDK 5+ ``useChat`` posts (``DefaultChatTransport``): messages with ``parts`` only, and a trigger.
AI_SDK_5_MESSAGES = [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "What is 2+2?"}]}]


@requires_node_parsers
def test_ai_sdk_5_on_the_advertised_endpoint_gets_the_ui_stream_unasked(service: str, fakes: Fakes) -> None:
    fakes.openrouter.script(Reply(tokens=TOKENS))
    summary = parse_ui_stream(
        service + "/api/ai/openrouter/deepseek-chat/chat", {"messages": AI_SDK_5_MESSAGES}, sdk="ai5latest"
    )
    assert summary["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert summary["text"] == "".join(TOKENS)
    assert summary["finish"]["finishReason"] == "stop"
    assert set(summary["message"]["metadata"]["usage"]) == {"inputTokens", "outputTokens", "totalTokens"}


def _shown(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """A conversation as a ``useChat`` page shows it: each message's role and text."""
    return [(m["role"], "".join(p.get("text", "") for p in m["parts"] if p["type"] == "text")) for m in messages]


@requires_node_parsers
def test_use_chat_conversation_send_continue_and_regenerate(service: str, fakes: Fakes) -> None:
    # A whole conversation with AI SDK 5's own Chat (useChat): its second request posts back the assistant
    # message it assembled (step-start, reasoning and text parts); sendMessage() without a message continues a
    # reply cut for length, which must grow that same message (under a new id useChat shows a second copy).
    fakes.openrouter.script(
        Reply(reasoning=["Let me", " think"], tokens=["It", " is", " 4."]),
        Reply(tokens=["Once", " upon"], finish="length"),
        Reply(tokens=[" a", " time."]),
        Reply(tokens=["Another."]),
    )
    steps = run_chat_session(
        service + "/api/ai/openrouter/deepseek-chat/chat",
        [{"send": "What is 2+2?"}, {"send": "Tell a story"}, {"continue": True}, {"regenerate": True}],
    )
    assert [(step["status"], step["error"]) for step in steps] == [("ready", None)] * 4
    asked, story, continued, regenerated = steps
    first_reply = asked["messages"][1]
    assert [p["type"] for p in first_reply["parts"]] == ["step-start", "reasoning", "text"]
    assert story["body"]["messages"][1] == first_reply  # posted back as useChat holds it ...
    assert fakes.openrouter.requests[-3].json["messages"][:2] == [  # ... and reached the provider as text
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
    ]
    assert continued["body"]["messages"][-1]["role"] == "assistant"
    assert continued["finishes"] == ["stop"]
    assert _shown(continued["messages"]) == [
        ("user", "What is 2+2?"),
        ("assistant", "It is 4."),
        ("user", "Tell a story"),
        ("assistant", "Once upon a time."),
    ]
    assert continued["messages"][-1]["id"] == story["messages"][-1]["id"]
    assert regenerated["body"]["trigger"] == "regenerate-message"
    assert _shown(regenerated["messages"])[-1] == ("assistant", "Another.")
    assert len(regenerated["messages"]) == 4


@pytest.mark.parametrize(
    ("body", "protocol_header"),
    [
        # AI SDK 5: parts without content; or a trigger (its transport always sends one)
        ({"messages": AI_SDK_5_MESSAGES}, "x-vercel-ai-ui-message-stream"),
        ({"trigger": "submit-message", "messages": MESSAGES}, "x-vercel-ai-ui-message-stream"),
        # AI SDK 4 (content strings), and AI SDK 4.2+ (parts beside the content string): still v4
        ({"messages": MESSAGES}, "x-vercel-ai-data-stream"),
        (
            {"messages": [{"role": "user", "content": "Hi", "parts": [{"type": "text", "text": "Hi"}]}]},
            "x-vercel-ai-data-stream",
        ),
    ],
    ids=["v5-parts", "v5-trigger", "v4", "v4.2-parts-beside-content"],
)
def test_the_body_shape_picks_the_stream(service: str, body: dict[str, Any], protocol_header: str) -> None:
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat", body)
    assert response.status_code == 200
    assert response.headers[protocol_header] == "v1"


def test_query_and_accept_still_decide_over_the_body_shape(service: str) -> None:
    v5 = {"trigger": "submit-message", "messages": AI_SDK_5_MESSAGES}
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat?protocol=data", v5)
    assert response.headers["x-vercel-ai-data-stream"] == "v1"
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat", v5, headers={"Accept": "text/event-stream;q=0"})
    assert response.headers["x-vercel-ai-data-stream"] == "v1"
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat", headers={"Accept": "text/event-stream"})
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"


def test_text_protocol_and_accept_header(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS))
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat?protocol=text")
    assert response.text == "".join(TOKENS)
    assert response.headers["content-type"].startswith("text/plain")
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat", headers={"Accept": "text/event-stream"})
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.text.endswith("data: [DONE]\n\n")


def test_streaming_headers(service: str, fakes: Fakes) -> None:
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_reasoning_of_deepseek_r1_goes_out_as_reasoning_parts(service: str, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=["<think>", "Add", " them", ".", "</think>", "\n\n", "4"]))
    response = post(service + "/api/ai/huggingface/DeepSeek-R1-Distill-Qwen-32B/chat")
    assert reply_text(response.text, "g") == "Add them."
    assert reply_text(response.text).strip() == "4"


# --- faults of the upstream -----------------------------------------------------------------------------


PATHS = {
    "huggingface": "/api/ai/huggingface/Qwen2.5-72B-Instruct/chat",
    "cloudflare": "/api/ai/cloudflare/llama-3.3-70b-instruct-fp8-fast/chat",
    "openrouter": "/api/ai/openrouter/deepseek-chat/chat",
    "ollama": "/api/ai/ollama/rwkv-6-world/chat",
}


def _ends_with_error_after_two_tokens(response: httpx.Response) -> None:
    assert response.status_code == 200
    lines = data_lines(response.text)
    codes = [code for code, _ in lines]
    assert codes.count("0") == 2 and codes[-1] == "3", lines
    assert "d" not in codes  # an error, not a finish


@pytest.mark.parametrize("provider", sorted(PATHS))
class TestFaultsReachTheClient:
    """Each fault of the fake (one fresh service per case, so breakers start closed)."""

    def test_split_utf8_character(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(Reply(tokens=["Grüße", " 🌍", " done"], fault=Fault.split_utf8()))
        assert reply_text(post(service + PATHS[provider]).text) == "Grüße 🌍 done"

    def test_split_line(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(Reply(tokens=TOKENS, fault=Fault.split_line()))
        assert reply_text(post(service + PATHS[provider]).text) == "".join(TOKENS)

    def test_error_after_first_tokens(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(Reply(tokens=TOKENS, fault=Fault.error_after(2)))
        _ends_with_error_after_two_tokens(post(service + PATHS[provider]))

    def test_dropped_connection_mid_stream(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(Reply(tokens=TOKENS, fault=Fault.drop_after(2)))
        _ends_with_error_after_two_tokens(post(service + PATHS[provider]))

    def test_hang_mid_stream_hits_the_idle_timeout(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(Reply(tokens=TOKENS, fault=Fault.hang(after=2)))
        _ends_with_error_after_two_tokens(post(service + PATHS[provider]))

    def test_slow_first_token_is_504(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(*[Reply(fault=Fault.slow_first(3))] * 5)
        response = post(service + PATHS[provider])
        assert response.status_code == 504
        assert response.json()["statusCode"] == 504

    def test_upstream_401_is_502_naming_the_provider(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(Reply(fault=Fault.status(401)))
        response = post(service + PATHS[provider])
        assert response.status_code == 502
        body = response.json()
        assert body["statusCode"] == 502 and provider in body["statusMessage"]
        for secret in ("hf_", "sk-or", "cf_test"):
            assert secret not in response.text

    def test_upstream_500_is_502(self, service: str, fakes: Fakes, provider: str) -> None:
        fakes[provider].script(*[Reply(fault=Fault.status(500))] * 10)
        response = post(service + PATHS[provider])
        assert response.status_code == 502
        assert response.json()["statusCode"] == 502

    def test_long_healthy_stream_outlives_the_timeouts(self, service: str, fakes: Fakes, provider: str) -> None:
        # 12 tokens 0.2 s apart: 2.4 s in all, 4x the 0.5 s idle timeout, never idle for 0.5 s.
        fakes[provider].script(Reply(tokens=["x"] * 12, delay=0.2))
        response = post(service + PATHS[provider])
        assert reply_text(response.text) == "x" * 12
        assert data_lines(response.text)[-1][0] == "d"


def test_upstream_rate_limit_is_a_429_with_retry_after(service: str, fakes: Fakes) -> None:
    fakes.openrouter.script(*[Reply(fault=Fault.status(429, retry_after=1))] * 10)
    response = post(service + "/api/ai/openrouter/deepseek-chat/chat")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["statusCode"] == 429


def test_client_disconnect_cancels_the_upstream(service: str, fakes: Fakes) -> None:
    fakes.openrouter.script(Reply(tokens=["tick"] * 400, delay=0.02))
    with httpx.stream("POST", service + "/api/ai/openrouter/deepseek-chat/chat", json={"messages": MESSAGES}) as r:
        for line in r.iter_lines():
            if line.startswith("0:"):
                break
    assert fakes.openrouter.wait_for_disconnects(1) >= 1


# --- requests the gateway refuses before the upstream -------------------------------------------------


def test_provider_without_credentials_is_503_without_contacting_it(fakes: Fakes) -> None:
    settings = Settings(base_url_overrides=fakes.base_urls())
    with serve_in_thread(create_app(settings)) as url:
        response = post(url + "/api/ai/openrouter/deepseek-chat/chat")
    assert response.status_code == 503
    assert "OPENROUTER_API_KEY" in response.json()["statusMessage"]
    assert fakes.openrouter.requests == []


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": []}', "must not be empty"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "must be a string"),
        (b'{"messages": [{"role": "user", "parts": [{"type": "file", "url": "x"}]}]}', "not supported"),
        (b'{"nothing": 1}', "messages"),
    ],
)
def test_bad_bodies_are_400_with_what_is_wrong(service: str, fakes: Fakes, body: bytes, fragment: str) -> None:
    response = httpx.post(
        service + "/api/ai/ollama/rwkv-6-world/chat", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["statusCode"] == 400
    assert fragment in payload["statusMessage"]
    assert fakes.ollama.requests == []


def test_too_many_messages_and_oversized_body(fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides(), max_messages=5, max_body_bytes=2_000)  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings)) as url:
        many = post(url + "/api/ai/ollama/rwkv-6-world/chat", {"messages": [{"role": "user", "content": "x"}] * 6})
        assert many.status_code == 400 and many.json()["data"]["limit"] == 5
        big = post(url + "/api/ai/ollama/rwkv-6-world/chat", {"messages": [{"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and big.json()["data"]["limit"] == 2_000
        assert post(url + "/api/ai/ollama/rwkv-6-world/chat").status_code == 200  # still serving


def test_unknown_models_and_protocols(service: str) -> None:
    for path in (
        "/api/ai/huggingface/nope/chat",
        "/api/ai/qwen/nope/chat",
        "/api/ai/ollama/qwen/Qwen2.5-72B-Instruct/chat",
    ):
        response = post(service + path)
        assert response.status_code == 404, path
        assert response.json()["statusCode"] == 404
    response = post(service + "/api/ai/ollama/rwkv-6-world/chat?protocol=smoke-signals")
    assert response.status_code == 400
