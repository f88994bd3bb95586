"""Fake Ollama server (``/api/chat``, ``/api/tags``), as providers.md §4 describes it.

Framing (§4.2): NDJSON (``application/x-ndjson``), one object per line, the last with ``done: true``,
``done_reason`` and the metrics (``prompt_eval_count``/``eval_count`` omitted when zero or when the
reply's usage is None, as Go's ``omitempty`` does). JSON is written the way Go's encoder writes it:
``<``, ``>`` and ``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``. No authentication, as a local Ollama;
with a ``token`` set it is ollama.com's API or an Ollama behind an authenticating proxy: a call without
``Authorization: Bearer <token>`` is a 401 ``{"error": "unauthorized"}``, the body ollama.com answers a missing or
wrong key with (docs/api/authentication.mdx: the key goes as ``Authorization: Bearer $OLLAMA_API_KEY``). With a
``signin_url`` set it is a local Ollama not signed in to ollama.com asked for a cloud model: 401
``{"error": "unauthorized", "signin_url": …}`` (server/routes.go ChatHandler, server/cloud_proxy.go).
Errors are ``{"error":"…"}`` with a real status before the stream, or one more line under HTTP 200
after lines were sent (``error_after``), with no ``done`` line (§4.5). ``stream: false`` is answered with one
``ChatResponse`` (the final line's shape, the whole message in it) once the scripted generation is over, and a
failure as an error status, as Ollama's ``collectChatResponse`` does (``_base.WholeReply``).

Thinking follows Ollama's ``ChatHandler`` (server/routes.go): a model with the thinking capability
(``thinking_models``) thinks unless the request says ``think: false``, and only then does
``message.thinking`` appear; ``think`` asked of any other model is a 400
``{"error": "\"<model>\" does not support thinking"}``, and such a model never sends ``thinking``
(a scripted ``Reply.reasoning`` is not sent). ``think`` is a bool or a level, ``"low"``, ``"medium"``, ``"high"`` or
``"max"`` (api/types.go ``ThinkValue``, "max" since Ollama 0.22); any other value is refused with a 400 before
anything else, as Go's JSON binding does (``ThinkValue.UnmarshalJSON``).

Tool calls (``Reply.tool_calls``) as Ollama sends them: whole, in one line's ``message.tool_calls``
(``{"id", "function": {"index", "name", "arguments": {object}}}``: api/types.go ``ToolCall``, the id minted by
server/routes.go ``toolCallId``), and ``done_reason`` stays ``"stop"``.
Images must be plain base64 (Ollama answers 400 "illegal base64 data at input byte N" otherwise).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes._base import (
    FakeUpstream,
    Frames,
    FrameStream,
    RecordedRequest,
    Reply,
    WholeReply,
    dumps,
    json_error,
)

CREATED_AT = "2025-02-20T10:00:00.123456789Z"
#: What a runner failing mid-generation reports (a late NDJSON line, or a non-streamed reply's 500).
RUNNER_ERROR = "an error was encountered while running the model"

_ERRORS = {
    400: "invalid character 'x' looking for beginning of value",
    401: "unauthorized",
    403: "forbidden",
    429: "too many requests",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it (HTML-safe escapes)."""
    return dumps(value).replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


#: The first bytes of the images Ollama decodes (PNG, JPEG; WebP is RIFF….WEBP): its OpenAI layer takes no others.
READABLE_IMAGES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
UNREADABLE_IMAGE = "Failed to create new sequence: failed to process inputs: image: unknown format"
#: The levels ``think`` takes besides a bool (api/types.go ``ThinkValue.UnmarshalJSON``); before Ollama 0.22, not "max".
THINK_LEVELS = ("high", "medium", "low", "max")


class FakeOllama(FakeUpstream):
    name = "ollama"
    listed_by_default = ("mollysama/rwkv-6-world:1.6b", "llama3.2:latest")
    #: Models with Ollama's "thinking" capability (the rest refuse ``think``).
    thinking_by_default: frozenset[str] = frozenset({"deepseek-r1:1.5b", "qwen3:0.6b"})

    def __init__(self) -> None:
        super().__init__()
        self.thinking_models: set[str] = set(self.thinking_by_default)
        #: The API key every call must carry as a bearer token (ollama.com, a proxy); None: no authentication.
        self.token: str | None = None
        #: Where a local Ollama not signed in to ollama.com sends its owner (in its 401 for a cloud model).
        self.signin_url: str | None = None
        #: The ``think`` levels the server takes (``THINK_LEVELS[:3]``: a server older than 0.22).
        self.think_levels: tuple[str, ...] = THINK_LEVELS

    def reset(self) -> None:
        super().reset()
        self.thinking_models = set(self.thinking_by_default)
        self.token = None
        self.think_levels = THINK_LEVELS
        self.signin_url = None

    def refused(self, recorded: RecordedRequest) -> Response | None:
        if self.token is not None and recorded.headers.get("authorization") != f"Bearer {self.token}":
            return self.error(401)
        if self.signin_url is not None and recorded.path == "/api/chat":
            return json_error(401, {"error": "unauthorized", "signin_url": self.signin_url})
        return None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.root_page, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/chat", self.chat, methods=["POST"]),
        ]

    async def root_page(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "0.5.12"})

    async def tags(self, request: Request) -> Response:
        recorded, _ = await self.record(request, listing=True)
        if (refusal := self.refused(recorded)) is not None:
            return refusal
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-02-18T08:06:48.639712648Z",
                "size": 3210000000,
                "digest": "0a8c266910232fd3291e71e5ba1e058cc5af9d411192cf88b6d30e92b6e73163",
                "details": {"format": "gguf", "family": "fake", "parameter_size": "1.6B", "quantization_level": "F16"},
            }
            for name in self.listed()
        ]
        return Response(go_json({"models": models}), media_type="application/json; charset=utf-8")

    async def chat(self, request: Request) -> Response:
        recorded, epoch = await self.record(request)
        if (refusal := self.refused(recorded)) is not None:
            return refusal
        body = recorded.json
        if not isinstance(body, dict):
            return self.error(400, "missing request body")
        think = body.get("think")
        if not (think is None or isinstance(think, bool) or think in self.think_levels):
            # Go's binding fails on the field before the handler runs (server/routes.go ChatHandler: a 400).
            choices = ", ".join(json.dumps(level) for level in self.think_levels)
            return self.error(400, f"invalid think value: {json.dumps(think)} (must be {choices}, true, or false)")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self.error(400, "model is required")
        if not self.serves(model):
            return self.error(404, f'model "{model}" not found, try pulling it first')
        for message in body.get("messages") or ():
            for image in message.get("images") or ():
                try:
                    data = base64.b64decode(image, validate=True)
                except (binascii.Error, TypeError):
                    return self.error(400, "illegal base64 data at input byte 4")
                if not data.startswith(READABLE_IMAGES) and data[8:12] != b"WEBP":
                    # The Go runner (runner/ollamarunner/runner.go before 9db4bdb): image.Decode fails, a 500.
                    return self.error(500, UNREADABLE_IMAGE)
        asked = think is True or think in self.think_levels
        if model in self.thinking_models:
            thinks = think is None or asked  # a thinking model thinks unless told not to
        elif asked:
            return self.error(400, f"{json.dumps(model, ensure_ascii=False)} does not support thinking")
        else:
            thinks = False
        reply = self.next_reply(model)
        fault = reply.fault
        if fault is not None and fault.kind == "status":
            return self.error(fault.http_status, fault.message, retry_after=fault.retry_after)
        if not thinks:
            reply = replace(reply, reasoning=())
        if body.get("stream") is False:
            final = self._final(model, reply)
            final["message"]["content"] = "".join(reply.tokens)
            if reply.reasoning:
                final["message"]["thinking"] = "".join(reply.reasoning)
            if reply.tool_calls:
                final["message"]["tool_calls"] = _tool_calls(reply)
            answer = Response(go_json(final), media_type="application/json; charset=utf-8")
            # A runner failing mid-generation: the error status ``collectChatResponse`` (server/routes.go) answers.
            failure = self.error(500, (fault.message if fault else None) or RUNNER_ERROR)
            return WholeReply(self, epoch, reply, answer, failure)
        return FrameStream(self, epoch, reply, self.render(reply, model), media_type="application/x-ndjson")

    def _final(self, model: str, reply: Reply) -> dict[str, Any]:
        final: dict[str, Any] = {
            "model": model,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop" if reply.finish == "tool_calls" else reply.finish,
            "total_duration": 212000000,
            "load_duration": 1500000,
        }
        usage = self.usage_of(reply, len(reply.tokens) + len(reply.reasoning))
        if usage is not None:
            for key, count, duration in (("prompt_eval", usage[0], 40000000), ("eval", usage[1], 60000000)):
                if count:  # omitempty
                    final[f"{key}_count"] = count
                    final[f"{key}_duration"] = duration
        return final

    def render(self, reply: Reply, model: str) -> Frames:
        def line(message: dict[str, Any]) -> bytes:
            return go_json({"model": model, "created_at": CREATED_AT, "message": message, "done": False}) + b"\n"

        tokens = [line({"role": "assistant", "content": "", "thinking": t}) for t in reply.reasoning]
        tokens += [line({"role": "assistant", "content": t}) for t in reply.tokens]
        if reply.tool_calls:
            tokens.append(line({"role": "assistant", "content": "", "tool_calls": _tool_calls(reply)}))
        message = (reply.fault.message if reply.fault else None) or RUNNER_ERROR
        return Frames(
            preamble=[],
            tokens=tokens,
            trailer=[go_json(self._final(model, reply)) + b"\n"],
            error=[go_json({"error": message}) + b"\n"],
        )

    def error(self, status: int, message: str | None = None, *, retry_after: float | None = None) -> Response:
        return json_error(status, {"error": message or _ERRORS.get(status, f"HTTP {status}")}, retry_after=retry_after)


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    # api.ToolCall: an ``id`` (server/routes.go ``toolCallId``: "call_" and 8 random characters) and the function
    # with its ``index`` (not omitempty).
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": json.loads(c.arguments)}}
        for i, c in enumerate(reply.tool_calls)
    ]
