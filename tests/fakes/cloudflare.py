"""Fake Cloudflare Workers AI upstream (REST ``ai/run``), as providers.md §2 describes it.

Framing (§2.4): ``data: {…}`` events, **bare** (no v4 envelope): ``{"response":"…","tool_calls":[],"p":"…"}``
with random-length ``p`` padding, then a separate ``{"response":"","usage":{…}}`` event, then
``data: [DONE]``. No finish reason. Errors use the v4 envelope with numeric codes (§2.5). The body is
schema-checked like the real endpoint: unknown properties (``typical_p``, ``truncate`` …) and
out-of-range values are rejected with 400 / code 5006, so an adapter that sends them fails here too; so are a
``tool_call_id`` off the schema's pattern, and a tool result without one for a Mistral-3 model (``MISTRAL_3``).

An ``error_after(n)`` fault ends the stream after ``n`` tokens without ``[DONE]`` (whether Cloudflare
ever writes an in-stream error event is unconfirmed; §2.4 says to model failure as a close).
``Fault.status(429, code=3036)`` is the daily-quota 429 (default code 3040, capacity); ``code=4006`` is the same
exhaustion in Workers AI's current wording. ``neurons_used_up`` (True): the account's daily free allocation is used
up, and every model answers that 429 (code 4006), as the allocation is the account's. ``account_blocked`` (True): every
model answers the errors page's "Account blocked" (403, code 3023, "Service unavailable for account").
A call without ``stream: true`` gets one v4 envelope ``{"result": {"response", "tool_calls", "usage"},
"success": true, "errors": [], "messages": []}`` once the scripted generation is over, and a failure midway as
an error status (the envelope, code 3043 [illustrative]) (``_base.WholeReply``). Tools and JSON mode as Workers AI
answers them, without streaming: ``result.tool_calls`` is ``[{"name", "arguments": {object}}]`` (no ids), and
with a ``response_format`` the ``response`` is the parsed JSON object rather than text.

``Reply.options``: ``padding`` (False to send old-style ``{"response":…}`` events only); ``openai_format`` (True:
answer as the newer models — Qwen3, gpt-oss — do, in the OpenAI format inside the same transport: Chat Completions
chunks until ``[DONE]``, or a ``chat.completion`` as the envelope's ``result``; the shapes Cloudflare's own
``workers-ai-provider`` reads in ``streaming.ts`` and ``extractContent``).

Models in ``unstreamed`` (by default ``UNSTREAMED``, the GPT-OSS models) do not stream on ``/ai/run/``: a call with
``stream: true`` gets a 200 ``application/json`` envelope with an empty result (``EMPTY_RESULT``), no events, and
consumes no scripted reply; the same call without ``stream`` gets the whole reply as any model's
(``workers-ai-provider`` utils.ts ``createRun``: "Some models (e.g. GPT-OSS) don't support streaming via the
/ai/run/ endpoint and return a JSON response with empty result instead of SSE").

Models in ``unagreed`` (none by default) refuse every call with 5016 under 403 (``AGREEMENT_REFUSAL``) until one
sends ``{"prompt": "agree"}``, as a licensed model (Llama 3.2 vision) does for an account that has not accepted its
licence (the errors page; the model's page: "send an initial request … with "prompt": "agree"").
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes._base import FakeUpstream, Frames, FrameStream, Reply, WholeReply, dumps, json_error
from tests.fakes.openai_compatible import ChatCompletionsServer

ACCOUNT = "acct"
TOKEN = "cf_test"
#: The ``context_window`` property every model of the search carries.
CONTEXT_WINDOW = 24000

#: §2.2: the text-generation input schema (llama-3.3-70b-instruct-fp8-fast); ranges inclusive.
SCHEMA: dict[str, tuple[float, float] | None] = {
    "messages": None,
    "prompt": None,
    "raw": None,
    "stream": None,
    "max_tokens": (1, 1_000_000),
    "temperature": (0, 5),
    "top_p": (0.001, 1),
    "top_k": (1, 50),
    "seed": (1, 9_999_999_999),
    "repetition_penalty": (0, 2),
    "frequency_penalty": (-2, 2),
    "presence_penalty": (-2, 2),
    "response_format": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "lora": None,
}

#: ``tool_choice`` as Workers AI takes it: a mode, or the OpenAI named-function form (``workers-ai-provider`` utils.ts
#: ``prepareToolsAndToolChoice``, sent to every model on ``/ai/run/``; anything else, such as ``"any"``, is
#: "8001: Invalid input" by its 3.x changelog).
TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})


#: The vision models' inputs (@cloudflare/workers-types, types/defines/ai.d.ts): a message's content may be parts
#: ``{"type", "text"?, "image_url"?: {"url"}}``, the url an "image uri with data (e.g. data:image/jpeg;base64,/9j/...).
#: HTTP URL will not be accepted". A text model's content parts are text only.
VISION_MODELS = frozenset(
    {
        "@cf/meta/llama-3.2-11b-vision-instruct",
        "@cf/meta/llama-4-scout-17b-16e-instruct",
        "@cf/mistralai/mistral-small-3.1-24b-instruct",
        "@cf/google/gemma-3-12b-it",
    }
)
#: Only llama-3.2-11b-vision-instruct's input also has a top-level ``image``: the image's bytes as an array of
#: integers 0 to 255, or a "binary string representing the image contents". The others have no such property.
IMAGE_FIELD_MODELS = frozenset({"@cf/meta/llama-3.2-11b-vision-instruct"})

#: Models whose tool results must name their call: the messages' ``tool_call_id`` "Must be supplied for tool calls for
#: Mistral-3" (the model's input schema), as Mistral's tokenizer refuses a tool message without one (mistral-common
#: ``validator.py``: "Tool call id has to be defined.").
MISTRAL_3 = frozenset({"@cf/mistralai/mistral-small-3.1-24b-instruct"})
#: The schema's ``pattern`` for ``tool_call_id``, unanchored as JSON Schema patterns are.
TOOL_CALL_ID = re.compile(r"[a-zA-Z0-9]{9}")

#: Models that answer a streamed call with ``EMPTY_RESULT`` (GPT-OSS, as ``workers-ai-provider``'s ``createRun`` names
#: it; Kimi too, by its changelog).
UNSTREAMED = frozenset({"@cf/openai/gpt-oss-120b", "@cf/openai/gpt-oss-20b"})
#: What such a model answers to ``stream: true`` (the official client reads it as "a JSON response with empty result";
#: its exact fields are [illustrative]).
EMPTY_RESULT = {"result": {"response": None}, "success": True, "errors": [], "messages": []}


#: How Workers AI refuses a model whose licence the account has not accepted (error 5016 under 403, its errors page;
#: the words as users quote them, the licence's text after them [illustrative]).
AGREEMENT_REFUSAL = (
    "5016: Prior to using this model, you must submit the prompt 'agree'. By submitting 'agree', you hereby agree to "
    "the {name} Community License and Acceptable Use Policy."
)


def envelope_error(status: int, code: int, message: str, *, retry_after: float | None = None) -> Response:
    body = {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return json_error(status, body, retry_after=retry_after)


class FakeCloudflare(FakeUpstream):
    name = "cloudflare"
    prefix = "/client/v4"
    listed_by_default = ("@cf/meta/llama-3.3-70b-instruct-fp8-fast", "@cf/meta/llama-3.1-8b-instruct")
    account = ACCOUNT
    token: str | None = TOKEN

    def __init__(self) -> None:
        super().__init__()
        #: Models that do not stream on ``/ai/run/`` (see the module's docstring).
        self.unstreamed: set[str] = set(UNSTREAMED)
        #: Models whose licence the account has not accepted: 5016 until a call with ``"prompt": "agree"``.
        self.unagreed: set[str] = set()
        self.neurons_used_up = False
        self.account_blocked = False

    def reset(self) -> None:
        super().reset()
        self.unstreamed = set(UNSTREAMED)
        self.unagreed = set()
        self.neurons_used_up = False
        self.account_blocked = False

    def routes(self) -> list[BaseRoute]:
        return [
            Route(self.prefix + "/accounts/{account}/ai/run/{model:path}", self.run, methods=["POST"]),
            Route(self.prefix + "/accounts/{account}/ai/models/search", self.search, methods=["GET"]),
        ]

    def _refused(self, request: Request, headers: dict[str, str]) -> Response | None:
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return envelope_error(401, 10000, "Authentication error")
        if request.path_params["account"] != self.account:
            return envelope_error(
                404, 7003, "Could not route to /accounts/…, perhaps your object identifier is invalid?"
            )
        return None

    async def search(self, request: Request) -> Response:
        recorded, _ = await self.record(request, listing=True)
        refused = self._refused(request, dict(recorded.headers))
        if refused is not None:
            return refused
        term = request.query_params.get("search", "")
        found = [
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "name": name,
                "description": f"{name} (fake)",
                "task": {"id": "c329a1f9-323d-4e91-b2aa-582dd4188d34", "name": "Text Generation"},
                "properties": [{"property_id": "context_window", "value": str(CONTEXT_WINDOW)}],
            }
            for name in self.listed()
            if term in name
        ]
        # Paged like every v4 list: ``page`` (from 1) and ``per_page``; a page past the end is empty, which is
        # how the SDK's ``V4PagePaginationArray`` knows to stop. The default page size is [illustrative].
        page, per_page = _positive(request, "page", 1), _positive(request, "per_page", 20)
        result = found[(page - 1) * per_page : page * per_page]
        info = {"count": len(result), "page": page, "per_page": per_page, "total_count": len(found)}
        return JSONResponse({"result": result, "result_info": info, "success": True, "errors": [], "messages": []})

    async def run(self, request: Request) -> Response:
        recorded, epoch = await self.record(request)
        refused = self._refused(request, dict(recorded.headers))
        if refused is not None:
            return refused
        model = request.path_params["model"]
        if not self.serves(model):
            return envelope_error(400, 5007, f"No such model {model} or task")
        if self.neurons_used_up:
            return self.status_error(429, None, 4006, None)
        if self.account_blocked:
            return envelope_error(403, 3023, "Service unavailable for account")
        body = recorded.json
        if model in self.unagreed:
            if isinstance(body, dict) and body.get("prompt") == "agree":  # the model's page: accepted from now on
                self.unagreed.discard(model)
                thanks = {"result": {"response": "Thank you."}, "success": True, "errors": [], "messages": []}
                return JSONResponse(thanks)  # [illustrative]
            return envelope_error(403, 5016, AGREEMENT_REFUSAL.format(name=model.rsplit("/", 1)[-1]))
        problem = validate(
            body, vision=model in VISION_MODELS, image_field=model in IMAGE_FIELD_MODELS, mistral=model in MISTRAL_3
        )
        if problem:
            return envelope_error(400, 5006, f"AiError: Bad input: {problem}")
        assert isinstance(body, dict)
        if body.get("stream") is True and model in self.unstreamed:
            return JSONResponse(EMPTY_RESULT)  # no scripted reply is used up: it is the whole call's
        reply = self.next_reply(model)
        fault = reply.fault
        if fault is not None and fault.kind == "status":
            return self.status_error(fault.http_status, fault.retry_after, fault.code, fault.message)
        if reply.options.get("openai_format"):
            return self._openai_format(reply, body, model, epoch)
        if body.get("stream") is not True:
            usage = self.usage_of(reply, self._generated(reply, body))
            text = "".join(reply.tokens)
            calls = [{"name": c.name, "arguments": json.loads(c.arguments)} for c in reply.tool_calls]
            result: dict[str, Any] = {
                "response": json.loads(text) if "response_format" in body and text else text,
                "tool_calls": calls,
            }
            if usage:
                result["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
            return self._whole(reply, epoch, result)
        return FrameStream(self, epoch, reply, self.render(reply, body), media_type="text/event-stream")

    def _openai_format(self, reply: Reply, body: dict[str, Any], model: str, epoch: int) -> Response:
        chat = ChatCompletionsServer(self, token=None)
        if body.get("stream") is not True:
            return self._whole(reply, epoch, chat.completion(reply, model))
        frames = chat.render(reply, model, include_usage=True)
        return FrameStream(self, epoch, reply, frames, media_type="text/event-stream")

    def _whole(self, reply: Reply, epoch: int, result: dict[str, Any]) -> WholeReply:
        """``result`` in the v4 envelope once the generation is over, or its failure as an error status."""
        answer = JSONResponse({"result": result, "success": True, "errors": [], "messages": []})
        fault = reply.fault
        failure = self.status_error(500, None, fault.code if fault else None, fault.message if fault else None)
        return WholeReply(self, epoch, reply, answer, failure)

    def render(self, reply: Reply, body: dict[str, Any]) -> Frames:
        padded = reply.options.get("padding", True)

        def event(i: int, text: str) -> bytes:
            payload: dict[str, Any] = {"response": text}
            if padded:
                payload |= {"tool_calls": [], "p": "abdefghijklmnopqrstuvwxyz0123456789"[: 3 + (i * 7) % 29]}
            return b"data: " + dumps(payload) + b"\n\n"

        tokens = list(reply.tokens)
        usage = self.usage_of(reply, self._generated(reply, body))
        trailer = []
        if usage is not None:
            counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
            trailer.append(b"data: " + dumps({"response": "", "usage": counts}) + b"\n\n")
        trailer.append(b"data: [DONE]\n\n")
        return Frames(preamble=[], tokens=[event(i, t) for i, t in enumerate(tokens)], trailer=trailer, error=[])

    @staticmethod
    def _generated(reply: Reply, body: dict[str, Any]) -> int:
        """The completion tokens to report: there is no finish reason, only usage == max_tokens tells "length"."""
        return int(body.get("max_tokens", 256)) if reply.finish == "length" else len(reply.tokens)

    def status_error(self, status: int, retry_after: float | None, code: Any, message: str | None) -> Response:
        defaults = {
            400: (5006, "AiError: Bad input: Error: oneOf at '/' not met"),
            401: (10000, "Authentication error"),
            403: (10000, "Authentication error"),
            429: (3040, "3040: Capacity temporarily exceeded, please try again."),
            500: (3043, "Internal server error"),  # [illustrative]
            503: (3050, "Service temporarily unavailable"),  # [illustrative]: no documented code
        }
        if code == 3036:
            default = (3036, "3036: Account limited: you have used up your daily free allocation of 10,000 neurons")
        elif (
            code == 4006
        ):  # the same exhaustion as Workers AI words it now (the HTTP status it comes under: unconfirmed)
            default = (
                4006,
                "4006: you have used up your daily free allocation of 10,000 neurons, please upgrade to Cloudflare's "
                "Workers Paid plan if you would like to continue usage.",
            )
        else:
            default = defaults.get(status, (7000, f"HTTP {status}"))
        return envelope_error(status, code or default[0], message or default[1], retry_after=retry_after)


def _positive(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def _tool_choice(value: Any) -> bool:
    if isinstance(value, str):
        return value in TOOL_CHOICE_MODES
    function = value.get("function") if isinstance(value, dict) else None
    return (
        isinstance(value, dict)
        and value.keys() == {"type", "function"}
        and value["type"] == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
    )


def validate(body: Any, *, vision: bool = False, image_field: bool = False, mistral: bool = False) -> str | None:
    if not isinstance(body, dict):
        return "Error: Type mismatch of '/', 'object' not 'string'"
    if ("messages" in body) == ("prompt" in body):
        return "Error: oneOf at '/' not met, 0 matches: required properties at '/' are 'prompt', 'messages'"
    for key, value in body.items():
        if key == "image" and image_field:  # oneOf: the bytes as integers, or a binary string
            if isinstance(value, str) and value:
                continue
            if not (
                isinstance(value, list)
                and value
                and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value)
            ):
                return "Error: oneOf at '/image' not met: an array of integers between 0 and 255, or a string"
            continue
        if key not in SCHEMA:
            return f"Error: Additional or unevaluated properties '/{key}' are not allowed"
        if key == "tool_choice" and not _tool_choice(value):
            return "Error: oneOf at '/tool_choice' not met: 'auto', 'none', 'required' or a named function"
        bounds = SCHEMA[key]
        if bounds is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"Error: Type mismatch of '/{key}', 'number' not '{type(value).__name__}'"
        if not bounds[0] <= value <= bounds[1]:
            return f"Error: '/{key}' must be between {bounds[0]} and {bounds[1]}"
    messages = body.get("messages")
    if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        return "Error: Type mismatch of '/messages', an array of objects"
    for index, message in enumerate(messages or ()):
        problem = _content_problem(f"/messages/{index}", message, vision=vision)
        if problem:
            return problem
        call_id = message.get("tool_call_id")
        if call_id is not None and not (isinstance(call_id, str) and TOOL_CALL_ID.search(call_id)):
            return f"Error: '/messages/{index}/tool_call_id' does not match pattern '[a-zA-Z0-9]{{9}}'"
        if mistral and message["role"] == "tool" and call_id is None:
            return "Tool call id has to be defined."  # [illustrative] how Workers AI words the tokenizer's refusal
    return None


def _content_problem(where: str, message: dict[str, Any], *, vision: bool) -> str | None:
    """A message's role and content: a string, or parts (text parts; a vision model's ``image_url`` parts too, each a
    ``data:`` URL — "HTTP URL will not be accepted")."""
    content = message.get("content")
    if not message.get("role") or not isinstance(content, str | list):
        return f"Error: Type mismatch of '{where}', a role and a string or an array content"
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        url = (part.get("image_url") or {}).get("url") if kind == "image_url" and vision else None
        if not isinstance(url, str):
            return f"Error: '{where}/content/{j}' is not a text part{' or an image_url part' if vision else ''}"
        if not url.startswith("data:image/"):
            return f"Error: '{where}/content/{j}/image_url/url': HTTP URL will not be accepted"  # [illustrative]
    return None
