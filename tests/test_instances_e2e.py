"""End to end: provider instances served over loopback — the HF router by default, an ``openai`` instance,
a self-hosted TGI beside the router — with the fakes as their upstreams.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from modelgate import ModelgateClient
from modelgate.app import create_app
from modelgate.catalogue import PROVIDER_NAMES, Catalogue, load_catalogue, parse_catalogue
from modelgate.settings import Settings
from tests.fakes import CREDENTIALS, Fakes, Fault, Reply
from tests.fakes.contract import free_port_url
from tests.servers import serve_in_thread

MESSAGES = [{"role": "user", "content": "Say hi"}]
CONTEXT_EXCEEDED = "This model's maximum context length is 2048 tokens. However, you requested 9000 tokens"


def _model(name: str, provider: str, upstream: str, extra: str = "") -> str:
    return f"""
[[models]]
publisher = "local"
name = "{name}"
provider = "{provider}"
type = "chat"
{extra}
[models.configuration]
model = "{upstream}"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = 1.2
truncate = 2048
"""


def instances_catalogue(fakes: Fakes, *, llama_url: str | None = None, llama_extra: str = "") -> Catalogue:
    text = f"""
[providers.llama]
kind = "openai"
base_url = "{llama_url or fakes.openai.url}"
{llama_extra}
[providers.tgi-local]
kind = "huggingface"
api = "tgi"
base_url = "{fakes.huggingface.url}"

[providers.huggingface]
routing = "fastest"
""" + "".join(
        (
            _model("smol", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            _model("qwen-tgi", "tgi-local", "Qwen/Qwen2.5-72B-Instruct", 'template = "chatml"'),
            _model("qwen-router", "huggingface", "Qwen/Qwen2.5-72B-Instruct", 'routing = "cheapest"'),
            _model("qwen-fast", "huggingface", "Qwen/Qwen2.5-7B-Instruct"),
        )
    )
    return parse_catalogue(tomllib.loads(text), source="instances.toml")


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, instances_catalogue(fakes))) as url:
        yield url


def chat(url: str, path: str) -> httpx.Response:
    return httpx.post(f"{url}/api/ai/{path}/chat", json={"messages": MESSAGES}, timeout=30)


def test_the_default_catalogues_seven_hf_models_reach_the_router_as_chat_completions(fakes: Fakes) -> None:
    catalogue = load_catalogue()
    hf_models = [m for m in catalogue.models if m.provider == "huggingface"]
    assert len(hf_models) == 7
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, catalogue)) as url:
        for model in hf_models:
            response = chat(url, f"huggingface/{model.name}")
            assert response.status_code == 200, response.text
            assert '0:"Hello"' in response.text
            sent = fakes.huggingface.last
            assert sent.path == "/v1/chat/completions"
            assert sent.headers["authorization"] == f"Bearer {CREDENTIALS['huggingface']['HF_TOKEN']}"
            assert sent.json["model"] == model.upstream_model  # the hub id, no suffix (routing auto)
            assert sent.json["messages"] == MESSAGES
            assert sent.json["stream"] is True and sent.json["stream_options"] == {"include_usage": True}
            assert sent.json["max_tokens"] == model.parameters.max_new_tokens
    assert len(fakes.huggingface.requests) == 7


def test_models_lists_the_further_instances_after_the_seeds_four_keys(service: str) -> None:
    document = httpx.get(service + "/models").json()
    assert list(document["endpoints"]) == [*PROVIDER_NAMES, "llama", "tgi-local"]
    assert document["endpoints"]["llama"] == ["/api/ai/llama/smol/chat"]
    assert document["endpoints"]["tgi-local"] == ["/api/ai/tgi-local/qwen-tgi/chat"]
    assert document["endpoints"]["huggingface"] == [
        "/api/ai/huggingface/qwen-router/chat",
        "/api/ai/huggingface/qwen-fast/chat",
    ]
    assert document["endpoints"]["cloudflare"] == []
    assert "fastest" not in str(document) and "cheapest" not in str(document)


def test_the_typed_client_reads_the_further_keys(service: str) -> None:
    with ModelgateClient(service) as client:
        assert client.endpoints("llama") == ["/api/ai/llama/smol/chat"]
        assert client.get_models().endpoints["cloudflare"] == []


def test_each_instance_answers_from_its_own_upstream(service: str, fakes: Fakes) -> None:
    response = chat(service, "llama/smol")
    assert response.status_code == 200 and '0:"Hello"' in response.text
    assert fakes.openai.last.json["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "authorization" not in fakes.openai.last.headers
    # repetition_penalty is not a Chat Completions field: named, not sent.
    assert "repetition_penalty" not in fakes.openai.last.json
    assert response.headers["x-modelgate-dropped-params"] == "repetition_penalty,truncate"

    response = chat(service, "tgi-local/qwen-tgi")
    assert response.status_code == 200 and '0:"Hello"' in response.text
    tgi = fakes.huggingface.last
    assert tgi.path == "/generate_stream" and tgi.json["inputs"].startswith("<|im_start|>system")
    assert tgi.json["parameters"]["repetition_penalty"] == 1.2  # TGI carries it
    assert "x-modelgate-dropped-params" not in response.headers

    assert chat(service, "huggingface/qwen-router").status_code == 200
    assert fakes.huggingface.last.json["model"] == "Qwen/Qwen2.5-72B-Instruct:cheapest"  # the model's routing
    assert chat(service, "huggingface/qwen-fast").status_code == 200
    assert fakes.huggingface.last.json["model"] == "Qwen/Qwen2.5-7B-Instruct:fastest"  # the instance's


def test_usage_a_server_does_not_report_is_estimated_and_marked(service: str, fakes: Fakes) -> None:
    # No usage on a stream (llama.cpp's server), nor in a whole reply (a non-streamed call asks for one now, and
    # llama.cpp's server reports usage there: ``usage=None`` is a server that reports none at all).
    fakes.openai.default = Reply(tokens=["Hi", "!"], usage=None, options={"never_usage": True})
    response = chat(service, "llama/smol")
    assert '8:[{"usageEstimated":true}]' in response.text

    client = openai.OpenAI(base_url=service + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(model="local/smol", messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["x-modelgate-usage"] == "estimated"
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.model_extra == {"estimated": True}
    stream = client.chat.completions.create(
        model="local/smol",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usages) == 1 and usages[0].completion_tokens == 2
    assert usages[0].model_extra == {"estimated": True}

    fakes.openai.default = Reply(tokens=["Hi"], usage=(31, 1))  # reported: presented as reported, unmarked
    raw = client.chat.completions.with_raw_response.create(model="local/smol", messages=MESSAGES)  # type: ignore[arg-type]
    assert "x-modelgate-usage" not in raw.headers
    usage = raw.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (31, 1)
    assert not usage.model_extra


def test_a_prompt_over_the_context_window_is_a_clear_400_with_the_servers_reason(service: str, fakes: Fakes) -> None:
    fault = Fault.status(400, message=CONTEXT_EXCEEDED, code="context_length_exceeded")
    fakes.openai.script(Reply(fault=fault), Reply(fault=fault))
    response = chat(service, "llama/smol")
    assert response.status_code == 400
    assert CONTEXT_EXCEEDED in response.json()["statusMessage"]
    client = openai.OpenAI(base_url=service + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="local/smol", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert CONTEXT_EXCEEDED in str(info.value)


def test_v1_lists_and_calls_every_instance(service: str, fakes: Fakes) -> None:
    client = openai.OpenAI(base_url=service + "/v1", api_key="unused")
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert set(listed) == {"local/smol", "local/qwen-tgi", "local/qwen-router", "local/qwen-fast"}
    assert listed["local/smol"] is not None and listed["local/smol"]["provider"] == "llama"
    assert "repetition_penalty" not in str(listed["local/smol"]["supported_parameters"])
    for model_id in listed:
        completion = client.chat.completions.create(model=model_id, messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "Hello, world!", model_id


def test_an_instances_environment_variables_win(fakes: Fakes) -> None:
    """``MODELGATE_LLAMA_BASE_URL`` overrides the file; ``api_key_env`` names the key, unset = unconfigured."""
    catalogue = instances_catalogue(fakes, llama_url=free_port_url(), llama_extra='api_key_env = "LLAMA_KEY"')
    fakes.openai.token = "sk-llama"
    unset = Settings.from_env({"MODELGATE_LLAMA_BASE_URL": fakes.openai.url})
    with serve_in_thread(create_app(unset, catalogue)) as url:
        response = chat(url, "llama/smol")
        assert response.status_code == 503
        assert "set LLAMA_KEY" in response.json()["statusMessage"]
        status = httpx.get(url + "/api/status")
        assert status.status_code == 200
        llama = status.json()["providers"]["llama"]
        assert (llama["status"], llama["reason"]) == ("unconfigured", "set LLAMA_KEY")
        assert status.json()["models"]["local/smol"]["provider"] == "llama"
    assert fakes.openai.requests == []
    configured = Settings.from_env({"MODELGATE_LLAMA_BASE_URL": fakes.openai.url, "LLAMA_KEY": "sk-llama"})
    with serve_in_thread(create_app(configured, catalogue)) as url:
        response = chat(url, "llama/smol")
        assert response.status_code == 200 and '0:"Hello"' in response.text
        status = httpx.get(url + "/api/status")
    assert status.status_code == 200 and "sk-llama" not in status.text
    assert fakes.openai.last.headers["authorization"] == "Bearer sk-llama"


def test_a_server_that_refuses_max_tokens_is_callable_with_the_limit_renamed(fakes: Fakes) -> None:
    """OpenAI's reasoning models answer ``max_tokens`` with a 400: such a model was listed but never callable. The
    catalogue's ``extra_params`` now renames ``max_new_tokens``; the fake refuses ``max_tokens`` as OpenAI does."""
    fakes.openai.refuses_max_tokens = True
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, instances_catalogue(fakes))) as url:
        refused = chat(url, "llama/smol")
        assert refused.status_code == 400 and "Use 'max_completion_tokens' instead" in refused.text, refused.text
    renamed = instances_catalogue(fakes, llama_extra='extra_params = { max_new_tokens = "max_completion_tokens" }')
    with serve_in_thread(create_app(settings, renamed)) as url:
        response = chat(url, "llama/smol")
        assert response.status_code == 200 and '0:"Hello"' in response.text, response.text
        assert fakes.openai.last.json["max_completion_tokens"] == 64 and "max_tokens" not in fakes.openai.last.json
        with openai.OpenAI(base_url=url + "/v1", api_key="unused") as client:
            reply = client.chat.completions.create(
                model="local/smol", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=9
            )
        assert reply.choices[0].message.content == "Hello, world!"  # the fake's default reply, whole
        assert fakes.openai.last.json["max_completion_tokens"] == 9


def test_ollama_behind_a_proxy_at_a_path_is_reached_through_ollama_host(fakes: Fakes) -> None:
    """``OLLAMA_HOST=host:port/path`` (a proxy serving Ollama under a path) is ``http://host:port/path`` to Ollama's
    own clients (envconfig.Host, ollama-python ``_parse_host``); modelgate made it ``http://host/path:port``."""
    proxy = Starlette(routes=[Mount("/ollama", app=fakes.ollama.app)])
    with serve_in_thread(proxy) as proxied:
        host = proxied.removeprefix("http://") + "/ollama/"
        with serve_in_thread(create_app(Settings.from_env({"OLLAMA_HOST": host}), load_catalogue())) as url:
            response = chat(url, "ollama/rwkv-6-world")
    assert response.status_code == 200 and '0:"Hello"' in response.text, response.text
    assert fakes.ollama.last.json["model"] == "mollysama/rwkv-6-world:1.6b"
