"""The Hugging Face router adapter (huggingface kind, api = "router") against the fake router over loopback HTTP.

The request is what both official clients send a chat model (huggingface_hub ``_providers/_common.py``
``BaseConversationalTask`` → ``/v1/chat/completions``; ``@huggingface/inference`` ``AutoRouterConversationalTask``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.chat import ChatRequest, GenerationParams, Usage
from modelgate.errors import UpstreamError
from modelgate.providers import PROVIDERS, new_session
from modelgate.providers._http import estimate_tokens
from modelgate.providers.huggingface import HuggingFaceRouter
from modelgate.settings import Settings
from modelgate.templates import render_prompt
from tests.catalogue_files import model_toml, write_catalogue
from tests.fakes import Fakes, Fault, Reply
from tests.fakes._base import FakeUpstream
from tests.fakes.contract import MESSAGES, ProviderContract, catalogue_model, collect
from tests.fakes.hostile import Received, response_head
from tests.fakes.huggingface import ROUTER_CONTEXT_WINDOWS
from tests.servers import serve_in_thread

#: The fields every request carries; the rest are the parameters.
_ENVELOPE = ("model", "messages", "stream", "stream_options")


class TestHuggingFaceRouter(ProviderContract):
    provider = HuggingFaceRouter
    model_id = "qwen/Qwen2.5-72B-Instruct"
    # The catalogue: max_new_tokens 512 (typical_p 0.2, repetition_penalty 1.1, truncate 32267 cannot cross).
    expected_params: ClassVar[dict[str, Any]] = {"max_tokens": 512}

    def base_url(self, fake: FakeUpstream) -> str:
        return fake.url + "/v1"

    def sent_params(self, recorded_json: Any) -> dict[str, Any]:
        return {k: v for k, v in recorded_json.items() if k not in _ENVELOPE}

    async def stream_with(self, fakes: Fakes, model: Any, request: ChatRequest) -> Any:
        async with new_session() as http:
            return await collect(self.make(http, fakes.huggingface.url + "/v1").stream(model, request))

    @pytest.mark.anyio
    async def test_request_is_chat_completions_with_the_hub_id(self, fakes: Fakes) -> None:
        await self.run(fakes)
        sent = fakes.huggingface.last
        assert sent.method == "POST" and sent.path == "/v1/chat/completions"
        assert sent.headers["authorization"] == "Bearer hf_test"
        assert sent.json["model"] == "Qwen/Qwen2.5-72B-Instruct"
        assert sent.json["messages"] == [{"role": m.role, "content": m.content} for m in MESSAGES]
        assert sent.json["stream"] is True
        assert sent.json["stream_options"] == {"include_usage": True}

    @pytest.mark.anyio
    async def test_tgi_parameters_are_dropped_and_reported_never_sent(self, fakes: Fakes) -> None:
        params = GenerationParams(
            max_new_tokens=64, temperature=0.7, top_p=0.9, typical_p=0.5, repetition_penalty=1.2, truncate=9, seed=3
        )
        async with new_session() as http:
            provider = self.make(http, fakes.huggingface.url + "/v1")
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request(params)))
            assert provider.dropped_params(params) == ["repetition_penalty", "truncate", "typical_p"]
        assert got.error is None
        sent = self.sent_params(fakes.huggingface.last.json)
        assert sent == {"max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "seed": 3}

    @pytest.mark.anyio
    @pytest.mark.parametrize(("routing", "sent"), [("fastest", ":fastest"), ("together", ":together"), ("auto", "")])
    async def test_routing_is_a_suffix_on_the_model_id(self, fakes: Fakes, routing: str, sent: str) -> None:
        model = dataclasses.replace(catalogue_model(self.model_id), routing=routing)
        got = await self.stream_with(fakes, model, self.request())
        assert got.text
        assert fakes.huggingface.last.json["model"] == "Qwen/Qwen2.5-72B-Instruct" + sent

    @pytest.mark.anyio
    async def test_usage_is_reported_because_it_was_asked_for(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], usage=(40, 2)))
        assert got.finish.usage == Usage(40, 2)

    @pytest.mark.anyio
    async def test_without_usage_the_estimate_renders_the_models_template(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c"], options={"never_usage": True}))
        assert got.finish.usage == Usage(estimate_tokens(render_prompt("chatml", MESSAGES)), 3, estimated=True)

    @pytest.mark.anyio
    async def test_reasoning_content_deltas_are_reasoning(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(reasoning=["Six", " it is."], tokens=["6"]))
        assert got.reasoning == "Six it is."
        assert got.text == "6"

    @pytest.mark.anyio
    async def test_a_think_block_in_the_text_is_reasoning(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["<th", "ink>", "3+3", "</think>", "\n\n6"]))
        assert got.reasoning == "3+3"
        assert got.text == "6"  # the blank lines after </think> are not part of the answer

    @pytest.mark.anyio
    async def test_402_payment_required_keeps_the_routers_message(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(402)))
        assert type(got.error) is UpstreamError
        assert got.error.status == 502 and not got.error.transient
        assert "payment required" in got.error.message and "monthly included credits" in got.error.message

    @pytest.mark.anyio
    async def test_a_model_no_provider_serves_is_not_available_upstream(self, fakes: Fakes) -> None:
        fakes.huggingface.models = {"google/gemma-2-27b-it"}
        got = await self.run(fakes)
        assert type(got.error) is UpstreamError
        assert "Qwen/Qwen2.5-72B-Instruct" in got.error.message and "not available upstream" in got.error.message

    @pytest.mark.anyio
    async def test_model_not_supported_400_is_a_model_not_served_not_a_bad_request(self, fakes: Fakes) -> None:
        """The router answers a model none of the account's enabled providers serves with HTTP 400
        ``{"error": {"message": "The requested model 'x' is not supported by any provider you have enabled.",
        "code": "model_not_supported", "type": "invalid_request_error", "param": "model"}}``: the catalogue's model
        is not served, the caller's request is not wrong. As the router's 404 for an unknown model: not available
        upstream, which a fallback may serve (never the client's 400)."""
        message = "The requested model 'Qwen/Qwen2.5-72B-Instruct' is not supported by any provider you have enabled."
        got = await self.run(fakes, Reply(fault=Fault.status(400, message=message, code="model_not_supported")))
        assert type(got.error) is UpstreamError and not got.error.transient
        assert got.error.upstream_status == 404
        assert "not available upstream" in got.error.message and message in got.error.message

    @pytest.mark.anyio
    async def test_in_stream_error_event_after_tokens(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.error_after(1, code=503, message="busy")))
        assert got.text == "a"
        assert got.error is not None and got.error.status == 503 and "busy" in got.error.message

    @pytest.mark.anyio
    async def test_probe_reads_the_routers_free_listing(self, fakes: Fakes) -> None:
        async with new_session() as http:
            result = await self.make(http, fakes.huggingface.url + "/v1").probe([catalogue_model(self.model_id)])
        assert result is not None and result.reachable
        assert result.available_models is not None and "Qwen/Qwen2.5-72B-Instruct" in result.available_models
        # The smallest window of the serving providers: the router may pick any of them.
        assert result.context_lengths["Qwen/Qwen2.5-72B-Instruct"] == min(ROUTER_CONTEXT_WINDOWS)
        assert fakes.huggingface.listings[-1].path == "/v1/models"
        assert fakes.huggingface.requests == []


def test_the_per_model_route_is_the_routers_not_tgis(fakes: Fakes) -> None:
    """``/models/{id}/v1/chat/completions`` answers Chat Completions; TGI's ``/models/{id}`` does not take it."""
    body = {"model": "ignored", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    response = httpx.post(
        fakes.huggingface.url + "/models/Qwen/Qwen2.5-72B-Instruct/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer hf_test"},
    )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert response.json()["model"] == "Qwen/Qwen2.5-72B-Instruct"


def test_registered() -> None:
    assert PROVIDERS["huggingface"] is HuggingFaceRouter


def test_a_model_the_router_serves_nowhere_falls_back_instead_of_refusing_the_client(
    fakes: Fakes, tmp_path: Path
) -> None:
    """End to end: the router's 400 ``model_not_supported`` for the requested model sends the request to its
    fallback (another provider's model), not a 400 "rejected the request" back to a client whose request is fine;
    and a 4xx about our configuration does not count against the router's breaker."""
    fallback = 'fallbacks = ["acme/elsewhere"]'
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "qwen", provider="huggingface", upstream="Qwen/Qwen2.5-72B-Instruct", extra=fallback),
        model_toml("acme", "elsewhere", provider="openrouter", upstream="meta-llama/llama-3.3-70b-instruct:free"),
        header="[providers.huggingface]\nbreaker_threshold = 1\n",
    )
    message = "The requested model 'Qwen/Qwen2.5-72B-Instruct' is not supported by any provider you have enabled."
    fakes.huggingface.default = Reply(fault=Fault.status(400, message=message, code="model_not_supported"))
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), load_catalogue(path))
    body = {"model": "acme/qwen", "messages": [{"role": "user", "content": "hi"}]}
    with serve_in_thread(app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-modelgate-model"] == "acme/elsewhere"
        assert len(fakes.huggingface.requests) == 1  # not retried: a retry gets the same answer
        # With a breaker that opens on one failure, the next request still reaches the router.
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        assert len(fakes.huggingface.requests) == 2


def test_a_cold_model_503_hands_on_estimated_time_and_is_not_retried_sooner(
    hostile: Any, fakes: Fakes, tmp_path: Path
) -> None:
    """The hosted service's cold start: HTTP 503 ``{"error": "Model <id> is currently loading", "estimated_time": s}``
    with the hint in the body only, no Retry-After (providers.md §1.6; the TGI adapter reads it). Retrying within
    the retry cap cannot help when the model needs two minutes: the client gets the 503 at once with the
    ``Retry-After`` the router promised, not after two futile retries without one."""
    loading = b'{"error":"Model Qwen/Qwen2.5-72B-Instruct is currently loading","estimated_time":120.0}'

    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(503, {"Content-Type": "application/json", "Content-Length": str(len(loading))})
        yield loading

    hostile.reset(script)
    overrides = fakes.settings_overrides()
    overrides["base_url_overrides"] = {**overrides["base_url_overrides"], "huggingface": hostile.url}  # type: ignore[dict-item]
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "qwen", provider="huggingface", upstream="Qwen/Qwen2.5-72B-Instruct"),
    )
    app = create_app(Settings(**overrides, probe_interval=0), load_catalogue(path))  # type: ignore[arg-type]
    body = {"model": "acme/qwen", "messages": [{"role": "user", "content": "hi"}]}
    with serve_in_thread(app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 503, response.text
    assert "currently loading" in response.json()["error"]["message"]
    assert response.headers.get("retry-after") == "120"
    assert len(hostile.received) == 1
