"""``GET /v1/models`` and ``GET /v1/models/{id}`` through the official ``openai`` SDK, over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.chat import ChatRequest, StreamEvent
from modelgate.providers import PROVIDERS, Provider
from modelgate.routes.openai import plain_text
from modelgate.settings import Settings
from tests.servers import serve_in_thread


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env({}))) as url:
        yield url


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="test-key", max_retries=0)


def test_listing_has_every_catalogue_model_in_the_models_order(base_url: str) -> None:
    seed = httpx.get(f"{base_url}/models").json()
    listed = list(sdk(base_url).models.list())
    assert [m.id for m in listed] == seed["models"]
    for model in listed:
        publisher, name = model.id.split("/")
        assert model.object == "model"
        assert model.owned_by == publisher
        assert isinstance(model.created, int)
        assert model.model_extra is not None and model.model_extra["name"] == name


def test_listing_is_byte_stable(base_url: str) -> None:
    first = httpx.get(f"{base_url}/v1/models")
    second = httpx.get(f"{base_url}/v1/models")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.content == second.content


def test_entry_carries_the_catalogue_metadata(base_url: str) -> None:
    entry = httpx.get(f"{base_url}/v1/models/qwen/Qwen2.5-72B-Instruct").json()
    assert entry == {
        "id": "qwen/Qwen2.5-72B-Instruct",
        "object": "model",
        "created": entry["created"],
        "owned_by": "qwen",
        "name": "Qwen2.5-72B-Instruct",
        "description": (
            "Qwen2.5 is a state-of-the-art large language model from Alibaba Cloud\n"
            "72.7B parameters with 80 layers and 64 attention heads for queries.\n"
            "Excels at instruction following, long text generation, and structured data handling.\n"
            "(Qwen License)"
        ),
        "type": "instruct",
        "provider": "huggingface",
        "endpoint": "/api/ai/huggingface/Qwen2.5-72B-Instruct/chat",
        "context_length": 32267,
        "max_completion_tokens": 512,
        "supported_parameters": entry["supported_parameters"],
        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
        "default_parameters": {
            "max_new_tokens": 512,
            "typical_p": 0.2,
            "repetition_penalty": 1.1,
            "truncate": 32267,
            "return_full_text": False,
            "temperature": None,
        },
    }


def test_catalogue_minus_one_is_null_and_endpoint_is_the_chat_path(base_url: str) -> None:
    entry = httpx.get(f"{base_url}/v1/models/openrouter/deepseek-chat").json()
    assert entry["default_parameters"]["typical_p"] is None
    assert entry["default_parameters"]["repetition_penalty"] is None
    assert entry["endpoint"] == "/api/ai/openrouter/deepseek-chat/chat"
    # The same path GET /models advertises for the model's provider.
    assert entry["endpoint"] in httpx.get(f"{base_url}/models").json()["endpoints"]["openrouter"]


def test_every_description_is_plain_text(base_url: str) -> None:
    for entry in httpx.get(f"{base_url}/v1/models").json()["data"]:
        assert "<" not in entry["description"], entry["id"]
        assert entry["description"] == entry["description"].strip()


def test_retrieve_through_the_sdk_with_its_percent_encoded_slash(base_url: str) -> None:
    model = sdk(base_url).models.retrieve("cloudflare/llama-3.3-70b-instruct-fp8-fast")
    assert model.id == "cloudflare/llama-3.3-70b-instruct-fp8-fast"
    assert model.owned_by == "cloudflare"
    assert model.model_extra is not None and model.model_extra["provider"] == "cloudflare"


@pytest.mark.parametrize("model_id", ["qwen/Qwen9", "nope", "qwen/Qwen2.5-72B-Instruct/extra"])
def test_unknown_model_is_model_not_found(base_url: str, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(base_url).models.retrieve(model_id)
    assert caught.value.status_code == 404
    assert caught.value.body == {
        "message": f"The model '{model_id}' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_async_sdk_lists_the_same_models(base_url: str) -> None:
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=0) as client:
            return [m.id async for m in client.models.list()]

    assert asyncio.run(main()) == [m.id for m in sdk(base_url).models.list()]


# --- supported_parameters follows the provider's own declaration -------------------------------


class _NarrowProvider(Provider):
    name = "ollama"
    supported_params = frozenset({"max_new_tokens", "temperature", "typical_p", "stop"})

    async def stream(self, model: object, request: ChatRequest) -> AsyncIterator[StreamEvent]:  # type: ignore[override]
        raise NotImplementedError
        yield  # pragma: no cover


def test_supported_parameters_are_the_openai_names_of_what_the_provider_carries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(PROVIDERS, "ollama", _NarrowProvider)
    with serve_in_thread(create_app(Settings.from_env({}))) as url:
        entry = httpx.get(f"{url}/v1/models/ollama/rwkv-6-world").json()
    # typical_p has no OpenAI name (catalogue-only), so it is not listed.
    assert entry["supported_parameters"] == ["max_completion_tokens", "max_tokens", "stop", "temperature"]


def test_registered_providers_report_their_parameters(base_url: str) -> None:
    for entry in httpx.get(f"{base_url}/v1/models").json()["data"]:
        cls = PROVIDERS.get(entry["provider"])
        if cls is None:
            assert entry["supported_parameters"] == []
        else:
            assert "max_tokens" in entry["supported_parameters"], entry["id"]
            assert ("temperature" in entry["supported_parameters"]) == ("temperature" in cls.supported_params)


# --- plain_text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<strong>Bold</strong><br>\nnext line<br>\n(License)", "Bold\nnext line\n(License)"),
        ("SLOWEST MODEL! (high demand)<br><strong>DeepSeek</strong> R1", "SLOWEST MODEL! (high demand)\nDeepSeek R1"),
        ("a &amp; b &lt;tag&gt; &#233;", "a & b <tag> é"),
        ("x <em>y</em>  z", "x y z"),
        ("<p>one</p><p>two</p>", "one\n\ntwo"),
        ("keep 1 < 2 > 0", "keep 1 < 2 > 0"),
        ("a<script>alert(1)</script>b", "ab"),
        ("", ""),
    ],
)
def test_plain_text(html: str, text: str) -> None:
    assert plain_text(html) == text


def test_a_custom_catalogue_is_listed_as_written(tmp_path: Path) -> None:
    config = tmp_path / "catalogue.toml"
    config.write_text(
        """
[[models]]
publisher = "acme"
name = "tiny"
provider = "ollama"
type = "chat"
description = "Tiny <b>fast</b> model"
context_length = 4096
[models.configuration]
model = "tiny:1b"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = 1.2
truncate = 2000
temperature = 0.5
"""
    )
    catalogue = load_catalogue(config)
    with serve_in_thread(create_app(Settings.from_env({}), catalogue)) as url:
        listed = httpx.get(f"{url}/v1/models").json()
    assert [e["id"] for e in listed["data"]] == ["acme/tiny"]
    entry = listed["data"][0]
    assert entry["description"] == "Tiny fast model"
    assert entry["context_length"] == 4096
    assert entry["max_completion_tokens"] == 64
    assert entry["default_parameters"] == {
        "max_new_tokens": 64,
        "typical_p": None,
        "repetition_penalty": 1.2,
        "temperature": 0.5,
        "truncate": 2000,
        "return_full_text": False,
    }


def test_supported_parameters_follow_the_capabilities(base_url: str) -> None:
    """Tools and structured output only where the catalogue declares them and the provider carries them;
    image input only for the vision model."""
    models = {m["id"]: m for m in httpx.get(f"{base_url}/v1/models").json()["data"]}
    qwen = models["qwen/Qwen2.5-72B-Instruct"]["supported_parameters"]
    assert {"tools", "tool_choice", "parallel_tool_calls", "response_format", "structured_outputs"} <= set(qwen)
    coder = models["qwen/Qwen2.5-Coder-32B-Instruct"]["supported_parameters"]
    assert "response_format" in coder
    assert "tools" not in coder
    gemma = models["google/gemma-2-27b-it"]["supported_parameters"]
    assert not {"tools", "tool_choice", "response_format", "structured_outputs"} & set(gemma)
    assert models["openrouter/gemini-2.0-pro-exp-02-05"]["architecture"]["input_modalities"] == ["text", "image"]
    assert models["openrouter/deepseek-chat"]["architecture"]["input_modalities"] == ["text"]
