"""No silently dropped parameters: every request parameter a route's official client can send, to every provider
kind, is accounted for in exactly one way: it reaches the fake upstream under the kind's wire name with its value,
or it is named in ``X-Modelgate-Dropped-Params``, or the answer is a 400 naming it.

The lists come from the clients: openai-python 3.57's ``CompletionCreateParamsBase``
(``types/chat/completion_create_params.py``) and ``ResponseCreateParamsBase``
(``types/responses/response_create_params.py``) for ``/v1``; for ``/api/ai/...`` the body AI SDK 5's
``useChat`` (``DefaultChatTransport``) posts, whose model parameters are the catalogue's (README, "Chat endpoints").
``test_the_lists_cover_openai_python`` keeps the ``/v1`` lists in step with the installed SDK.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params

from modelgate.app import create_app
from modelgate.catalogue import parse_catalogue
from modelgate.providers.tgi import any_object as any_object_regex
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.fakes import Fakes, Reply
from tests.servers import serve_in_thread

# --- the gateway: one model per provider kind -----------------------------------------------------

HEADER = """
[providers.local]
kind = "openai"
base_url = "{openai}"
[providers.tgi-local]
kind = "huggingface"
api = "tgi"
base_url = "{huggingface}"
"""
EVERYTHING = 'capabilities = ["tools", "json", "vision", "reasoning"]'
#: Catalogue values that differ from every provider's default, so each must be sent or reported.
CATALOGUE_PARAMETERS = {"max_new_tokens": 77, "typical_p": 0.3, "repetition_penalty": 1.2, "truncate": 900}
CATALOGUE_TEMPERATURE = 0.4

#: kind → (the model serving it, the fake it calls, the catalogue entry's provider and upstream id).
KINDS: Mapping[str, tuple[str, str, str, str]] = {
    "router": ("k/router", "huggingface", "huggingface", "Qwen/Qwen2.5-72B-Instruct"),
    "tgi": ("k/tgi", "huggingface", "tgi-local", "Qwen/Qwen2.5-7B-Instruct"),
    "cloudflare": ("k/workers", "cloudflare", "cloudflare", "@cf/meta/llama-3.3-70b-instruct-fp8-fast"),
    "openrouter": ("k/openrouter", "openrouter", "openrouter", "deepseek/deepseek-chat"),
    "ollama": ("k/ollama", "ollama", "ollama", "qwen3:0.6b"),
    "openai": ("k/openai", "openai", "local", "gpt-oss-20b"),
}
CHAT_COMPLETIONS_KINDS = ("router", "openrouter", "openai")


def _model(kind: str) -> str:
    model, _, provider, upstream = KINDS[kind]
    catalogue = CATALOGUE_PARAMETERS
    return (
        model_toml(
            *model.split("/"),
            provider=provider,
            upstream=upstream,
            max_new_tokens=catalogue["max_new_tokens"],
            truncate=catalogue["truncate"],
            extra=EVERYTHING + ('\ntemplate = "chatml"' if kind == "tgi" else ""),
            parameters_extra=f"temperature = {CATALOGUE_TEMPERATURE}",
        )
        .replace("typical_p = -1", f"typical_p = {catalogue['typical_p']}")
        .replace("repetition_penalty = -1", f"repetition_penalty = {catalogue['repetition_penalty']}")
    )


@pytest.fixture(scope="module")
def service(_fake_servers: Fakes) -> Iterator[str]:
    header = HEADER.format(openai=_fake_servers.openai.url, huggingface=_fake_servers.huggingface.url)
    text = header + "".join(_model(kind) for kind in KINDS)
    catalogue = parse_catalogue(tomllib.loads(text), source="accounted.toml")
    settings = Settings(**_fake_servers.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, catalogue)) as url:
        yield url


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http


# --- where each kind carries a parameter ----------------------------------------------------------

_MISSING = object()


def lookup(body: Any, path: str) -> Any:
    """The value at a dotted ``path`` of the upstream body (``_MISSING`` where there is none)."""
    value = body
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def same(got: Any, expected: Any) -> bool:
    """Equal and of the same JSON type: ``1`` for ``1.0`` or ``true`` for ``1`` is mangled, not carried."""
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(same(got[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(same, got, expected))
    return type(got) is type(expected) and got == expected


@dataclass(frozen=True)
class Sent:
    """How one kind shows it carried a parameter: a check on the upstream body (and the client's answer)."""

    what: str
    found: Callable[[Any, str], bool]


def at(path: str, value: Any) -> Sent:
    return Sent(f"{path} = {value!r}", lambda body, _answer: same(lookup(body, path), value))


def anywhere(text: str) -> Sent:
    """Text that must reach the upstream somewhere (a system prompt, TGI's rendered ``inputs``)."""
    return Sent(f"{text!r} in the body", lambda body, _answer: text in orjson.dumps(body).decode())


def answered(text: str) -> Sent:
    """What the gateway itself honours: it shows in the client's answer, not upstream."""
    return Sent(f"{text!r} in the answer", lambda _body, answer: text in answer)


def round_trip_kept() -> Sent:
    """``include: ["reasoning.encrypted_content"]``: the gateway keeps its promise on every reply with round-trip data
    (a reasoning item's encrypted_content, tests/test_responses_round_trip.py), whatever the kind; a reply without
    any, as here, has nothing to include, and a ``reasoning`` item with encrypted_content would be a lie."""
    return Sent("no encrypted_content without round-trip data", lambda _body, answer: "encrypted_content" not in answer)


def tools_absent() -> Sent:
    """``tool_choice: none`` where the protocol has no such field: honoured by offering no tools."""
    return Sent("no tools offered", lambda body, _answer: "tools" not in body)


#: Our parameter → kind → where that kind's upstream body carries it.
WIRE: Mapping[str, Mapping[str, str]] = {
    "max_new_tokens": {
        **dict.fromkeys(CHAT_COMPLETIONS_KINDS, "max_tokens"),
        "tgi": "parameters.max_new_tokens",
        "ollama": "options.num_predict",
        "cloudflare": "max_tokens",
    },
    **{
        name: {
            **dict.fromkeys(CHAT_COMPLETIONS_KINDS, name),
            "tgi": f"parameters.{name}",
            "ollama": f"options.{name}",
            "cloudflare": name,
        }
        for name in ("temperature", "top_p", "seed", "frequency_penalty")
    },
    "stop": {**dict.fromkeys(CHAT_COMPLETIONS_KINDS, "stop"), "tgi": "parameters.stop", "ollama": "options.stop"},
    "presence_penalty": {
        **dict.fromkeys(CHAT_COMPLETIONS_KINDS, "presence_penalty"),
        "ollama": "options.presence_penalty",
        "cloudflare": "presence_penalty",
    },
    "reasoning_effort": {
        "router": "reasoning_effort",
        "openai": "reasoning_effort",
        "openrouter": "reasoning.effort",
        "ollama": "think",
    },
    "typical_p": {"tgi": "parameters.typical_p", "ollama": "options.typical_p"},
    "repetition_penalty": {
        "openrouter": "repetition_penalty",
        "tgi": "parameters.repetition_penalty",
        "ollama": "options.repeat_penalty",
        "cloudflare": "repetition_penalty",
    },
    "truncate": {"tgi": "parameters.truncate", "ollama": "options.num_ctx"},
}


def param(ours: str, value: Any) -> dict[str, Sent]:
    """Where each kind sends our parameter ``ours`` holding ``value`` (as a JSON value)."""
    return {kind: at(path, value) for kind, path in WIRE[ours].items()}


# --- the cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One parameter with a non-default value: ``name`` is how a report or a refusal must name it."""

    name: str
    body: Mapping[str, Any]
    #: kind → how it shows it carried the parameter; a kind not here has no form for it.
    sent: Mapping[str, Sent] = field(default_factory=dict)
    #: Other fields of ``body`` it comes with (``tools`` for ``tool_choice``): a 400 may name one of them.
    needs: tuple[str, ...] = ()
    #: Only meaningful on a stream (``stream_options``).
    streamed_only: bool = False
    #: Sent ids: the case is one of several of the same field.
    label: str = ""
    #: The kinds it runs on, when not all (an image needs a model that reads images upstream too).
    kinds: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        return self.label or self.name


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def _named_tool(kind: str) -> Any:
    return ["weather"] if kind in ("ollama", "cloudflare") else [{"name": "weather"}]


def tools_sent() -> dict[str, Sent]:
    """Tools reach every kind that has them (each in the OpenAI function shape: Ollama and Workers AI too)."""

    def names(body: Any, _answer: str) -> bool:
        return [tool.get("function", tool).get("name") for tool in lookup(body, "tools") or []] == ["weather"]

    return dict.fromkeys(("router", "openrouter", "openai", "ollama", "cloudflare"), Sent("tools: weather", names))


def json_object_sent() -> dict[str, Sent]:
    any_object = {"type": "object"}
    return {
        **dict.fromkeys(CHAT_COMPLETIONS_KINDS, at("response_format", {"type": "json_object"})),
        # TGI takes no schema of any object (router/src/validation.rs): the regex of one (providers/tgi.py).
        "tgi": at("parameters.grammar", {"type": "regex", "value": any_object_regex()}),
        "ollama": at("format", "json"),
        "cloudflare": at("response_format", {"type": "json_schema", "json_schema": any_object}),
    }


def json_schema_sent(spec: Mapping[str, Any]) -> dict[str, Sent]:
    """The whole ``json_schema`` to Chat Completions servers; the schema alone to the rest (README)."""
    return {
        **dict.fromkeys(CHAT_COMPLETIONS_KINDS, at("response_format", {"type": "json_schema", "json_schema": spec})),
        "tgi": at("parameters.grammar", {"type": "json", "value": SCHEMA}),
        "ollama": at("format", SCHEMA),
        # Workers AI's schema carries the name and description as its title and description (as workers-ai-provider
        # builds it, cloudflare/ai#559).
        "cloudflare": at(
            "response_format",
            {
                "type": "json_schema",
                "json_schema": {**SCHEMA, "title": spec["name"], "description": spec["description"]},
            },
        ),
    }


def tool_choice_sent(value: Any) -> dict[str, Sent]:
    """As OpenAI has it, to Workers AI too (as its own AI SDK provider sends it); Ollama has no such field."""
    return dict.fromkeys((*CHAT_COMPLETIONS_KINDS, "cloudflare"), at("tool_choice", value))


def effort_sent(effort: str) -> dict[str, Sent]:
    sent = param("reasoning_effort", effort)
    sent["openrouter"] = at("reasoning", {"effort": effort})
    return sent


SCHEMA_SPEC = {"name": "answer", "description": "One answer", "schema": SCHEMA, "strict": True}
#: A 1x1 PNG (Workers AI's fake decodes it), read at ``detail: low``: a hint of cost the bare-image protocols lack.
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
DETAIL_SENT = dict.fromkeys(CHAT_COMPLETIONS_KINDS, anywhere('"detail":"low"'))
#: Workers AI's model here reads no images (its fake refuses one, as the service does): its loss of ``detail`` is
#: in ``test_cloudflare_vision.py``. TGI refuses images (naming ``messages``).
IMAGE_KINDS = tuple(kind for kind in KINDS if kind != "cloudflare")
SCHEMA_DESCRIPTION_SENT = {
    **dict.fromkeys(CHAT_COMPLETIONS_KINDS, at("response_format.json_schema.description", SCHEMA_SPEC["description"])),
    "cloudflare": at("response_format.json_schema.description", SCHEMA_SPEC["description"]),
}

#: ``/v1/chat/completions``: every field of ``CompletionCreateParamsBase`` but ``model`` and ``messages``.
CHAT_CASES: tuple[Case, ...] = (
    Case("max_tokens", {"max_tokens": 50}, param("max_new_tokens", 50)),
    Case("max_completion_tokens", {"max_completion_tokens": 60}, param("max_new_tokens", 60)),
    Case("temperature", {"temperature": 0.7}, param("temperature", 0.7)),
    Case("top_p", {"top_p": 0.5}, param("top_p", 0.5)),
    Case("stop", {"stop": ["END", "STOP"]}, param("stop", ["END", "STOP"])),
    Case("stop", {"stop": "END"}, param("stop", ["END"]), label="stop-string"),
    Case("seed", {"seed": 42}, param("seed", 42)),
    Case("presence_penalty", {"presence_penalty": 0.5}, param("presence_penalty", 0.5)),
    Case("frequency_penalty", {"frequency_penalty": 0.5}, param("frequency_penalty", 0.5)),
    Case("reasoning_effort", {"reasoning_effort": "high"}, effort_sent("high")),
    Case("logit_bias", {"logit_bias": {"50256": -100}}),
    Case("logprobs", {"logprobs": True}),
    Case("top_logprobs", {"top_logprobs": 2}),
    Case("n", {"n": 2}),
    Case("user", {"user": "user-1234"}),
    Case("response_format", {"response_format": {"type": "json_object"}}, json_object_sent(), label="json_object"),
    Case(
        "response_format",
        {"response_format": {"type": "json_schema", "json_schema": SCHEMA_SPEC}},
        json_schema_sent(SCHEMA_SPEC),
        label="json_schema",
    ),
    Case(
        "response_format.json_schema.description",
        {"response_format": {"type": "json_schema", "json_schema": SCHEMA_SPEC}},
        SCHEMA_DESCRIPTION_SENT,
    ),
    Case(
        "image_url.detail",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Say hi"},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    ],
                }
            ]
        },
        DETAIL_SENT,
        ("messages",),
        kinds=IMAGE_KINDS,
    ),
    Case("tools", {"tools": [WEATHER]}, tools_sent()),
    Case("tool_choice", {"tools": [WEATHER], "tool_choice": "required"}, tool_choice_sent("required"), ("tools",)),
    Case(
        "tool_choice",
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "weather"}}},
        tool_choice_sent({"type": "function", "function": {"name": "weather"}}),
        ("tools",),
        label="tool_choice-named",
    ),
    Case(
        "tool_choice",
        {"tools": [WEATHER], "tool_choice": "none"},
        # TGI has no tools: the tools "none" declines are not sent (a model without tools serves the turn).
        {**tool_choice_sent("none"), **dict.fromkeys(("ollama", "cloudflare", "tgi"), tools_absent())},
        ("tools",),
        label="tool_choice-none",
    ),
    Case(
        "parallel_tool_calls",
        {"tools": [WEATHER], "parallel_tool_calls": False},
        dict.fromkeys(CHAT_COMPLETIONS_KINDS, at("parallel_tool_calls", False)),
        ("tools",),
    ),
    Case(
        "stream_options",
        {"stream_options": {"include_usage": True}},
        dict.fromkeys(KINDS, answered('"usage":{"prompt_tokens"')),
        streamed_only=True,
    ),
    Case(
        "stream_options.include_obfuscation",
        {"stream_options": {"include_obfuscation": True}},
        streamed_only=True,
    ),
    Case("service_tier", {"service_tier": "flex"}),
    Case("store", {"store": True}),
    Case("metadata", {"metadata": {"purpose": "test"}}),
    Case("modalities", {"modalities": ["text", "audio"]}),
    Case("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    Case("prediction", {"prediction": {"type": "content", "content": "Hello there"}}),
    Case("web_search_options", {"web_search_options": {"search_context_size": "low"}}),
    Case("verbosity", {"verbosity": "low"}),
    Case("verbosity", {"verbosity": "medium"}, label="verbosity-default"),
    Case("prompt_cache_key", {"prompt_cache_key": "conversation-7"}),
    Case("prompt_cache_options", {"prompt_cache_options": {"mode": "explicit"}}),
    Case("prompt_cache_retention", {"prompt_cache_retention": "24h"}),
    Case("safety_identifier", {"safety_identifier": "hashed-user"}),
    Case("moderation", {"moderation": {"model": "omni-moderation-latest"}}),
    Case("functions", {"functions": [WEATHER["function"]]}),
    Case("function_call", {"function_call": "auto"}),
)

#: ``/v1/responses``: every field of ``ResponseCreateParamsBase`` but ``model``, ``input`` and ``stream``.
RESPONSES_CASES: tuple[Case, ...] = (
    Case("instructions", {"instructions": "Answer like a pirate."}, dict.fromkeys(KINDS, anywhere("like a pirate"))),
    Case("max_output_tokens", {"max_output_tokens": 50}, param("max_new_tokens", 50)),
    Case("temperature", {"temperature": 0.7}, param("temperature", 0.7)),
    Case("top_p", {"top_p": 0.5}, param("top_p", 0.5)),
    Case("reasoning.effort", {"reasoning": {"effort": "high"}}, effort_sent("high")),
    Case("reasoning.summary", {"reasoning": {"summary": "auto"}}),
    Case("text.format", {"text": {"format": {"type": "json_object"}}}, json_object_sent(), label="json_object"),
    Case(
        "text.format",
        {"text": {"format": {"type": "json_schema", **SCHEMA_SPEC}}},
        json_schema_sent(SCHEMA_SPEC),
        label="json_schema",
    ),
    Case(
        "text.format.description",
        {"text": {"format": {"type": "json_schema", **SCHEMA_SPEC}}},
        SCHEMA_DESCRIPTION_SENT,
    ),
    Case(
        "input_image.detail",
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Say hi"},
                        {"type": "input_image", "image_url": PNG, "detail": "low"},
                    ],
                }
            ]
        },
        DETAIL_SENT,
        ("input",),
        kinds=IMAGE_KINDS,
    ),
    Case("text.verbosity", {"text": {"verbosity": "low"}}),
    Case("text.verbosity", {"text": {"verbosity": "medium"}}, label="text.verbosity-default"),
    Case("tools", {"tools": [FLAT_WEATHER]}, tools_sent()),
    Case("tool_choice", {"tools": [FLAT_WEATHER], "tool_choice": "required"}, tool_choice_sent("required"), ("tools",)),
    Case(
        "tool_choice",
        {"tools": [FLAT_WEATHER], "tool_choice": {"type": "function", "name": "weather"}},
        tool_choice_sent({"type": "function", "function": {"name": "weather"}}),
        ("tools",),
        label="tool_choice-named",
    ),
    Case(
        "parallel_tool_calls",
        {"tools": [FLAT_WEATHER], "parallel_tool_calls": False},
        dict.fromkeys(CHAT_COMPLETIONS_KINDS, at("parallel_tool_calls", False)),
        ("tools",),
    ),
    Case("metadata", {"metadata": {"purpose": "echo-me-4711"}}, dict.fromkeys(KINDS, answered("echo-me-4711"))),
    Case("user", {"user": "user-1234"}),
    Case("store", {"store": True}),
    Case("previous_response_id", {"previous_response_id": "resp_123"}),
    Case("conversation", {"conversation": "conv_123"}),
    Case("background", {"background": True}),
    Case("background_options", {"background_options": {"completion_window": "2h"}}),
    Case("prompt", {"prompt": {"id": "pmpt_123"}}),
    Case("include", {"include": ["reasoning.encrypted_content"]}, dict.fromkeys(KINDS, round_trip_kept())),
    Case("include", {"include": ["message.output_text.logprobs"]}, label="include-logprobs"),
    Case("max_tool_calls", {"max_tool_calls": 3}),
    Case("top_logprobs", {"top_logprobs": 2}),
    Case("truncation", {"truncation": "auto"}),
    Case("service_tier", {"service_tier": "flex"}),
    Case("prompt_cache_key", {"prompt_cache_key": "conversation-7"}),
    Case("prompt_cache_options", {"prompt_cache_options": {"mode": "explicit"}}),
    Case("prompt_cache_retention", {"prompt_cache_retention": "24h"}),
    Case("safety_identifier", {"safety_identifier": "hashed-user"}),
    Case(
        "stream_options.include_obfuscation",
        {"stream_options": {"include_obfuscation": True}},
        streamed_only=True,
    ),
    Case("context_management", {"context_management": [{"type": "compaction", "compact_threshold": 1000}]}),
    Case("moderation", {"moderation": {"model": "omni-moderation-latest"}}),
    Case("image", {"image": {"context_compression": "disabled"}}),
    Case("access_programs", {"access_programs": {"cyber": "daybreak_blue"}}),
)

#: ``/api/ai/...``: the catalogue's parameters are this route's (the seed's contract), each non-default here.
CATALOGUE_CASES: tuple[Case, ...] = (
    Case("max_new_tokens", {}, param("max_new_tokens", CATALOGUE_PARAMETERS["max_new_tokens"])),
    Case("temperature", {}, param("temperature", CATALOGUE_TEMPERATURE)),
    Case("typical_p", {}, param("typical_p", CATALOGUE_PARAMETERS["typical_p"])),
    Case("repetition_penalty", {}, param("repetition_penalty", CATALOGUE_PARAMETERS["repetition_penalty"])),
    Case("truncate", {}, param("truncate", CATALOGUE_PARAMETERS["truncate"])),
)
#: Model parameters a ``useChat({ body })`` may add beside the messages: this route takes the catalogue's, so
#: they must be reported, not lost.
AI_SDK_BODY_CASES: tuple[Case, ...] = (
    Case("temperature", {"temperature": 0.9}),
    Case("max_tokens", {"max_tokens": 20}),
    Case("top_p", {"top_p": 0.2}),
)


# --- the requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    dropped: frozenset[str]
    #: The field a 400 names (OpenAI's ``param``, the seed shape's ``data.field``) and its message.
    refused: str = ""
    message: str = ""


def answer_of(response: httpx.Response) -> Answer:
    dropped = frozenset(filter(None, response.headers.get("x-modelgate-dropped-params", "").split(",")))
    refused, message = "", ""
    if response.status_code == 400:
        body = response.json()
        error = body.get("error") or {}
        refused = error.get("param") or (body.get("data") or {}).get("field") or ""
        message = error.get("message") or body.get("statusMessage") or ""
    return Answer(response.status_code, response.text, dropped, refused, message)


def post_v1(
    client: httpx.Client, url: str, route: str, model: str, *, stream: bool, fields: Mapping[str, Any]
) -> Answer:
    opening = {"messages": [{"role": "user", "content": "Say hi"}]} if route == "chat" else {"input": "Say hi"}
    path = "/v1/chat/completions" if route == "chat" else "/v1/responses"
    body = {"model": model, **opening, "stream": stream, **fields}
    return answer_of(client.post(f"{url}{path}", json=body))


#: What AI SDK 5 ``useChat`` (``DefaultChatTransport``) posts: the chat's id, the UI messages, the trigger.
AI_SDK_5_BODY = {
    "id": "chat-1",
    "messages": [
        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Say hi"}], "metadata": {"sentAt": 1}}
    ],
    "trigger": "submit-message",
    "messageId": None,
}


def post_ai_sdk(client: httpx.Client, url: str, model: str, fields: Mapping[str, Any]) -> Answer:
    provider, name = model.split("/")
    return answer_of(client.post(f"{url}/api/ai/{provider}/{name}/chat", json={**AI_SDK_5_BODY, **fields}))


def assert_accounted(case: Case, kind: str, answer: Answer, upstream: Any) -> str:
    """Exactly one of: carried (as the kind carries it), reported as dropped, or a 400 naming it."""
    sent = case.sent.get(kind)
    if answer.status == 400:
        named = answer.refused in (case.name, *case.needs) or f"{case.name}:" in answer.message
        assert named, f"a 400 that does not name {case.name}: {answer.refused!r} {answer.message!r}"
        return "refused"
    assert answer.status == 200, answer.text[:500]
    carried = sent is not None and upstream is not None and sent.found(upstream, answer.text)
    if case.name in answer.dropped:
        assert not carried, f"{case.name} was carried ({sent and sent.what}) and reported as dropped"
        return "dropped"
    assert sent is not None, f"{case.name} vanished on {kind}: not carried, not reported, not refused"
    assert carried, f"{case.name} on {kind}: expected {sent.what}, upstream got {upstream}"
    return "carried"


#: A reply that is also valid structured output (Workers AI's fake parses it when a schema was asked for).
JSON_REPLY = Reply(tokens=['{"answer": "hi"}'])


def scripted(fakes: Fakes, kind: str) -> None:
    fakes[KINDS[kind][1]].script(JSON_REPLY)


def upstream_body(fakes: Fakes, kind: str) -> Any:
    fake = fakes[KINDS[kind][1]]
    return fake.last.json if fake.requests else None


ROUTES = [("chat", False), ("chat", True), ("responses", False), ("responses", True)]


def _v1_params() -> list[Any]:
    return [
        pytest.param(route, stream, case, kind, id=f"{route}-{'stream' if stream else 'whole'}-{case.id}-{kind}")
        for route, stream in ROUTES
        for case in (CHAT_CASES if route == "chat" else RESPONSES_CASES)
        if stream or not case.streamed_only
        for kind in KINDS
        if case.kinds is None or kind in case.kinds
    ]


@pytest.mark.parametrize(("route", "stream", "case", "kind"), _v1_params())
def test_v1_parameters_are_carried_reported_or_refused(
    service: str, client: httpx.Client, fakes: Fakes, route: str, stream: bool, case: Case, kind: str
) -> None:
    scripted(fakes, kind)
    answer = post_v1(client, service, route, KINDS[kind][0], stream=stream, fields=case.body)
    assert_accounted(case, kind, answer, upstream_body(fakes, kind))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", CATALOGUE_CASES, ids=lambda case: case.id)
def test_ai_sdk_catalogue_parameters_are_carried_or_reported(
    service: str, client: httpx.Client, fakes: Fakes, case: Case, kind: str
) -> None:
    scripted(fakes, kind)
    answer = post_ai_sdk(client, service, KINDS[kind][0], {})
    assert assert_accounted(case, kind, answer, upstream_body(fakes, kind)) != "refused"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", AI_SDK_BODY_CASES, ids=lambda case: case.id)
def test_ai_sdk_body_parameters_are_reported(
    service: str, client: httpx.Client, fakes: Fakes, case: Case, kind: str
) -> None:
    scripted(fakes, kind)
    answer = post_ai_sdk(client, service, KINDS[kind][0], case.body)
    assert assert_accounted(case, kind, answer, upstream_body(fakes, kind)) == "dropped"


def _fields(params: type) -> set[str]:
    return set(typing.get_type_hints(params, include_extras=False))


def test_the_lists_cover_openai_python() -> None:
    """Every request field of the installed openai-python has a case (a new SDK field must get one)."""
    chat = {case.name.split(".")[0] for case in CHAT_CASES}
    responses = {case.name.split(".")[0] for case in RESPONSES_CASES}
    assert _fields(completion_create_params.CompletionCreateParamsBase) - {"model", "messages"} <= chat
    assert _fields(response_create_params.ResponseCreateParamsBase) - {"model", "input"} <= responses


@pytest.mark.parametrize(("route", "stream"), ROUTES)
def test_unknown_fields_are_named_as_dropped_never_sent(
    service: str, client: httpx.Client, fakes: Fakes, route: str, stream: bool
) -> None:
    """A server's own sampling fields sent with openai-python's ``extra_body`` (vLLM's ``top_k``, ``min_p``) were
    ignored without a word ("unknown fields are ignored"): a client tuning a model saw no effect and no reason.
    The header names the first 16 (sorted) that it can carry."""
    extra: dict[str, Any] = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "bad name\u00e9": 1}
    extra |= {f"x_vendor_{number:02}": number for number in range(20)}
    scripted(fakes, "openai")
    answer = post_v1(client, service, route, KINDS["openai"][0], stream=stream, fields=extra)
    assert answer.status == 200, answer.text[:300]
    assert {"min_p", "repetition_penalty", "top_k"} <= answer.dropped and len(answer.dropped) == 16, answer.dropped
    assert "x_vendor_12" in answer.dropped and "x_vendor_13" not in answer.dropped
    sent = upstream_body(fakes, "openai")
    assert not {"top_k", "min_p", "repetition_penalty"} & set(sent), sent


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_unknown_stream_options_are_named_as_dropped(
    service: str, client: httpx.Client, fakes: Fakes, route: str
) -> None:
    """``stream_options`` fields other than OpenAI's, such as vLLM's ``continuous_usage_stats`` (usage in every
    chunk), were ignored without a word (the object dropped unknown keys): the client waited for usage that never
    came and was told nothing. They are named under their dotted path, as ``include_obfuscation`` is."""
    scripted(fakes, "openai")
    options = {"include_usage": True, "continuous_usage_stats": True}
    answer = post_v1(client, service, route, KINDS["openai"][0], stream=True, fields={"stream_options": options})
    assert answer.status == 200, answer.text[:300]
    assert answer.dropped == {"stream_options.continuous_usage_stats"}
    assert "continuous_usage_stats" not in orjson.dumps(upstream_body(fakes, "openai")).decode()
