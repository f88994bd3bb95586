"""``stop`` on ``/v1/chat/completions`` end to end: as many sequences as the answering upstream takes.

modelgate is not api.openai.com: Continue sends every stop word of its templates to an OpenAI-compatible server that
is not OpenAI (core/llm/llms/OpenAI.ts ``getMaxStopWords``: ``Infinity`` unless the host is api.openai.com or Groq),
twelve for a Qwen coder's autocomplete. Ollama and llama.cpp's server take any number; TGI takes
``--max-stop-sequences`` (4 by default) and answers more with a 422, OpenRouter's schema says 4, api.openai.com 4.
A known limit is a 400 naming it and the model before any upstream call; no sequence is ever dropped.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, parse_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.fakes import Fakes, Fault, Reply
from tests.servers import serve_in_thread

MESSAGES = [{"role": "user", "content": "def fib(n):"}]
#: What Continue's autocomplete sends a Qwen coder (core/autocomplete/templating: the template's nine stop words,
#: then ``getStopTokens``' three common ones).
CONTINUE_STOPS = [
    *("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>"),
    *("<|file_sep|>", "<|im_start|>", "<|im_end|>", "/src/", "#- coding: utf-8", "```"),
]


def _model(name: str, provider: str, upstream: str, extra: str = "") -> str:
    return model_toml(
        "local", name, provider=provider, upstream=upstream, max_new_tokens=64, truncate=2048, extra=extra
    )


def stop_catalogue(fakes: Fakes) -> Catalogue:
    text = f"""
[providers.llama]
kind = "openai"
base_url = "{fakes.openai.url}"

[providers.vllm]
kind = "openai"
base_url = "{fakes.openai.url}"
max_stop_sequences = 4

[providers.tgi-local]
kind = "huggingface"
api = "tgi"
base_url = "{fakes.huggingface.url}"

[providers.tgi-wide]
kind = "huggingface"
api = "tgi"
base_url = "{fakes.huggingface.url}"
max_stop_sequences = 8
""" + "".join(
        (
            _model("smol", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            _model("smol-vllm", "vllm", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            _model("qwen-tgi", "tgi-local", "Qwen/Qwen2.5-72B-Instruct", 'template = "chatml"'),
            _model("qwen-tgi-wide", "tgi-wide", "Qwen/Qwen2.5-72B-Instruct", 'template = "chatml"'),
            _model("rwkv", "ollama", "mollysama/rwkv-6-world:1.6b"),
            _model("rwkv-falls", "ollama", "llama3.2:latest", 'fallbacks = ["local/qwen-tgi", "local/smol"]'),
            _model("deepseek", "openrouter", "deepseek/deepseek-chat"),
        )
    )
    return parse_catalogue(tomllib.loads(text), source="stop.toml")


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, stop_catalogue(fakes))) as url:
        yield url


def complete(url: str, model: str, stop: list[str], **fields: Any) -> httpx.Response:
    body = {"model": f"local/{model}", "messages": MESSAGES, "stop": stop, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def sent_stop(fakes: Fakes, model: str) -> Any:
    """The ``stop`` the model's upstream received, where its protocol puts it."""
    if model == "rwkv":
        return fakes.ollama.last.json["options"]["stop"]
    if model.startswith("qwen-tgi"):
        return fakes.tgi.last.json["parameters"]["stop"]
    fake = fakes.openrouter if model == "deepseek" else fakes.openai
    return fake.last.json["stop"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["rwkv", "smol"])
def test_a_server_without_a_limit_gets_every_stop_sequence(
    service: str, fakes: Fakes, model: str, stream: bool
) -> None:
    response = complete(service, model, CONTINUE_STOPS, stream=stream)
    assert response.status_code == 200, response.text
    assert sent_stop(fakes, model) == CONTINUE_STOPS


@pytest.mark.parametrize(("model", "limit"), [("qwen-tgi", 4), ("qwen-tgi-wide", 8), ("smol-vllm", 4), ("deepseek", 4)])
def test_up_to_a_known_limit_every_sequence_is_sent(service: str, fakes: Fakes, model: str, limit: int) -> None:
    fakes.tgi.max_stop_sequences = 8  # tgi-wide's server, launched with --max-stop-sequences 8
    fakes.openai.max_stop_sequences = 4  # vllm's (VLLM_MAX_STOP_STRINGS, 4 by default)
    response = complete(service, model, CONTINUE_STOPS[:limit])
    assert response.status_code == 200, response.text
    assert sent_stop(fakes, model) == CONTINUE_STOPS[:limit]


@pytest.mark.parametrize(
    ("model", "limit", "upstream"),
    [("qwen-tgi", 4, "tgi"), ("qwen-tgi-wide", 8, "tgi"), ("smol-vllm", 4, "openai"), ("deepseek", 4, "openrouter")],
)
@pytest.mark.parametrize("stream", [False, True])
def test_above_a_known_limit_the_call_is_a_400_naming_it_and_the_model_and_never_sent(
    service: str, fakes: Fakes, model: str, limit: int, upstream: str, stream: bool
) -> None:
    fakes.tgi.max_stop_sequences = 8
    response = complete(service, model, CONTINUE_STOPS[: limit + 1], stream=stream)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "stop"
    assert f"local/{model}" in error["message"]
    assert f"at most {limit} stop sequences" in error["message"]
    assert f"got {limit + 1}" in error["message"]
    assert fakes[upstream].requests == []


def test_an_upstream_that_refuses_more_than_modelgate_was_told_is_heard_not_silenced(
    service: str, fakes: Fakes
) -> None:
    """tgi-wide says 8 but its server still takes TGI's default 4: TGI's own 422 reaches the caller as a 400."""
    response = complete(service, "qwen-tgi-wide", CONTINUE_STOPS[:6])
    assert response.status_code == 400, response.text
    assert "`stop` supports up to 4 stop sequences. Given: 6" in response.json()["error"]["message"]
    assert fakes.tgi.last.json["parameters"]["stop"] == CONTINUE_STOPS[:6]  # sent whole, refused upstream


def test_a_fallback_that_takes_fewer_is_passed_over_for_one_that_takes_them_all(service: str, fakes: Fakes) -> None:
    fakes.ollama.default = Reply(fault=Fault.status(503))
    response = complete(service, "rwkv-falls", CONTINUE_STOPS[:6])
    assert response.status_code == 200, response.text
    assert response.headers["x-modelgate-model"] == "local/smol"
    assert fakes.tgi.requests == []  # qwen-tgi (4 at most) was never asked
    assert fakes.openai.last.json["stop"] == CONTINUE_STOPS[:6]


def test_v1_models_states_each_known_limit_and_none_where_there_is_none(service: str) -> None:
    listed = {entry["id"]: entry for entry in httpx.get(f"{service}/v1/models", timeout=10).json()["data"]}
    limits = {model: entry.get("max_stop_sequences") for model, entry in listed.items()}
    assert limits == {
        "local/smol": None,
        "local/smol-vllm": 4,
        "local/qwen-tgi": 4,
        "local/qwen-tgi-wide": 8,
        "local/rwkv": None,
        "local/rwkv-falls": None,
        "local/deepseek": 4,
    }
    assert all("stop" in entry["supported_parameters"] for entry in listed.values())
