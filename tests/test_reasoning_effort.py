"""Reasoning effort end to end: ``reasoning_effort`` on ``/v1/chat/completions`` and ``reasoning.effort`` on
``/v1/responses`` reach each provider kind's fake upstream in that kind's own wire form, or are named in
``X-Modelgate-Dropped-Params`` where the kind has none; an effort openai-python's types do not allow is a 400."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, parse_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.fakes import Fakes, FakeUpstream, Reply
from tests.servers import serve_in_thread

HEADER = """
[providers.llama]
kind = "openai"
base_url = "{openai}"
[providers.tgi-local]
kind = "huggingface"
api = "tgi"
base_url = "{huggingface}"
"""
#: One model per provider kind (two for Ollama: one that thinks, one that cannot).
CATALOGUE = "".join(
    (
        model_toml("t", "router", provider="huggingface", upstream="openai/gpt-oss-120b"),
        model_toml("t", "openrouter", provider="openrouter", upstream="openai/gpt-oss-20b"),
        model_toml("t", "llama", provider="llama", upstream="gpt-oss-20b"),
        model_toml("t", "thinker", provider="ollama", upstream="qwen3:0.6b", extra='capabilities = ["reasoning"]'),
        model_toml("t", "plain", provider="ollama", upstream="tiny:1b"),
        model_toml("t", "workers", provider="cloudflare", upstream="@cf/meta/llama-3.3-70b-instruct-fp8-fast"),
        model_toml("t", "tgi", provider="tgi-local", upstream="Qwen/Qwen2.5-7B-Instruct", extra='template = "chatml"'),
    )
)
MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]


def _catalogue(fakes: Fakes) -> Catalogue:
    header = HEADER.format(openai=fakes.openai.url, huggingface=fakes.huggingface.url)
    return parse_catalogue(tomllib.loads(header + CATALOGUE), source="reasoning.toml")


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, _catalogue(fakes))) as url:
        yield url


def chat(url: str, model: str, *, stream: bool, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream, **fields}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert b"[DONE]" in response.content if stream else response.json()["choices"][0]["message"]["content"]
    return response


def dropped(response: httpx.Response) -> set[str]:
    return set(filter(None, response.headers.get("x-modelgate-dropped-params", "").split(",")))


#: model → (its fake, what that fake received in place of the effort, the effort sent).
FORWARDED: dict[str, tuple[Callable[[Fakes], FakeUpstream], Callable[[dict[str, Any]], Any], str]] = {
    # OpenAI Chat Completions' own field, as the HF router and any OpenAI-compatible server take it.
    "t/router": (lambda f: f.huggingface, lambda sent: sent.get("reasoning_effort"), "high"),
    "t/llama": (lambda f: f.openai, lambda sent: sent.get("reasoning_effort"), "minimal"),
    # OpenRouter's documented reasoning object.
    "t/openrouter": (lambda f: f.openrouter, lambda sent: sent.get("reasoning"), "xhigh"),
    # Ollama's think level.
    "t/thinker": (lambda f: f.ollama, lambda sent: sent.get("think"), "low"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", list(FORWARDED))
def test_the_effort_reaches_each_kind_in_its_own_wire_form(
    service: str, fakes: Fakes, model: str, stream: bool
) -> None:
    fake, received, effort = FORWARDED[model]
    response = chat(service, model, stream=stream, reasoning_effort=effort)
    sent = fake(fakes).last.json
    expected: Any = {"effort": effort} if model == "t/openrouter" else effort
    assert received(sent) == expected
    assert "reasoning_effort" not in dropped(response)
    if model == "t/openrouter":
        assert "reasoning_effort" not in sent  # the documented form only, not the shorthand beside it


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "fake"), [("t/workers", "cloudflare"), ("t/tgi", "huggingface")])
def test_kinds_without_a_form_for_it_report_it_as_dropped(
    service: str, fakes: Fakes, model: str, fake: str, stream: bool
) -> None:
    response = chat(service, model, stream=stream, reasoning_effort="high", seed=3)
    assert dropped(response) == {"reasoning_effort"}
    sent = fakes[fake].last
    assert "reasoning" not in orjson.dumps(sent.json).decode()  # Workers AI refuses unknown properties
    if fake == "huggingface":
        assert sent.path == ("/generate_stream" if stream else "/generate")  # TGI, not the router


@pytest.mark.parametrize(
    ("model", "effort", "think", "reported"),
    [
        ("t/thinker", "medium", "medium", False),
        ("t/thinker", "max", "max", False),  # a level since Ollama 0.22 (api/types.go ThinkValue)
        ("t/thinker", "none", False, False),  # Ollama's switch off
        ("t/plain", "none", False, False),  # taken by any model (Ollama refuses only a think that is on)
        # No such level in Ollama (the fake refuses it with Ollama's 400): the model thinks as it would unasked, and
        # the caller is told.
        ("t/thinker", "minimal", True, True),
        ("t/thinker", "xhigh", True, True),
        # A model that cannot think: a level would be refused by Ollama ("does not support thinking").
        ("t/plain", "high", None, True),
        ("t/plain", "max", None, True),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_ollama_gets_the_think_values_it_has_and_the_rest_is_reported(
    service: str, fakes: Fakes, model: str, effort: str, think: bool | str | None, reported: bool, stream: bool
) -> None:
    fakes.ollama.script(Reply(tokens=["hi"], reasoning=["hmm"]))
    response = chat(service, model, stream=stream, reasoning_effort=effort)
    assert fakes.ollama.last.json.get("think") == think
    assert dropped(response) == ({"reasoning_effort"} if reported else set())
    if think is False:
        assert "hmm" not in response.text  # it did not think


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_ollama_older_than_max_refuses_it_and_the_caller_hears_so(service: str, fakes: Fakes, stream: bool) -> None:
    """Ollama before 0.22 has no "max" level: its 400 reaches the caller, never a level it did not ask for."""
    fakes.ollama.think_levels = ("high", "medium", "low")
    body = {"model": "t/thinker", "messages": MESSAGES, "stream": stream, "reasoning_effort": "max"}
    response = httpx.post(f"{service}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert 'rejected the request: invalid think value: "max"' in response.json()["error"]["message"]
    assert [sent.json["think"] for sent in fakes.ollama.requests] == ["max"]


def test_supported_parameters_list_it_where_it_is_carried(service: str) -> None:
    listing = httpx.get(f"{service}/v1/models", timeout=10).json()["data"]
    carried = {m["id"] for m in listing if "reasoning_effort" in m["supported_parameters"]}
    assert carried == {"t/router", "t/openrouter", "t/llama", "t/thinker"}


@pytest.mark.parametrize("value", ["extreme", "HIGH", 3, ""])
def test_an_effort_outside_openais_values_is_a_400_naming_it(service: str, fakes: Fakes, value: object) -> None:
    body = {"model": "t/llama", "messages": MESSAGES, "reasoning_effort": value}
    response = httpx.post(f"{service}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "reasoning_effort"
    assert "'none', 'minimal', 'low', 'medium', 'high', 'xhigh' or 'max'" in error["message"]
    assert fakes.openai.requests == []


def test_the_openai_sdk_sends_it_and_it_is_forwarded(service: str, fakes: Fakes) -> None:
    with openai.OpenAI(base_url=f"{service}/v1", api_key="k", max_retries=0) as client:
        completion = client.chat.completions.create(model="t/llama", messages=MESSAGES, reasoning_effort="low")
        assert completion.choices[0].message.content
        assert fakes.openai.last.json["reasoning_effort"] == "low"
        response = client.responses.create(model="t/openrouter", input="Say hi", reasoning={"effort": "high"})
    assert response.output_text
    assert fakes.openrouter.last.json["reasoning"] == {"effort": "high"}
    assert response.reasoning is not None and response.reasoning.effort == "high"  # echoed, as OpenAI does


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_reasoning_effort_is_forwarded_or_reported_under_its_own_name(
    service: str, fakes: Fakes, stream: bool
) -> None:
    def respond(model: str) -> httpx.Response:
        body = {"model": model, "input": "Say hi", "reasoning": {"effort": "medium"}, "stream": stream}
        response = httpx.post(f"{service}/v1/responses", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response

    def echoed(response: httpx.Response) -> Any:
        """``Response.reasoning`` as the reply states it (streamed: in every event carrying the response)."""
        if not stream:
            return response.json()["reasoning"]
        events = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        states = [event["response"]["reasoning"] for event in events if "response" in event]
        assert len(states) >= 2 and all(state == states[0] for state in states)
        return states[0]

    forwarded = respond("t/router")
    assert fakes.huggingface.last.json["reasoning_effort"] == "medium"
    assert "x-modelgate-dropped-params" not in forwarded.headers
    assert echoed(forwarded) == {"effort": "medium", "summary": None}
    not_sent = respond("t/workers")
    assert dropped(not_sent) == {"reasoning.effort"}
    assert "reasoning" not in fakes.cloudflare.last.json
    assert echoed(not_sent) is None  # the reply states the effort applied: none was sent
