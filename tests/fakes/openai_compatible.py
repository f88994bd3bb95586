"""Fake OpenAI-compatible servers: Chat Completions as vLLM, llama.cpp's server, OpenAI and the HF router speak it.

``ChatCompletionsServer`` serves ``POST …/chat/completions`` and ``GET …/models`` for any fake (the HF fake
uses it for its router routes); ``FakeOpenAI`` is a stand-alone server at ``/v1`` (the ``openai`` kind).

Framing (OpenAI API reference, chat completion chunk object): ``data: {chat.completion.chunk}`` events, a
first chunk with ``delta.role``, one chunk per token (``delta.content``; reasoning in ``delta.reasoning_content``,
vLLM's and DeepSeek's name), ``finish_reason`` on the last choice chunk, then — **only when the request asked
with ``stream_options.include_usage``**, as real servers do — a chunk with ``choices: []`` and ``usage``,
then ``data: [DONE]``. A mid-stream failure (``error_after``) is ``data: {"error": {...}}`` then ``[DONE]``.
Errors before the stream are OpenAI's ``{"error": {"message", "type", "param", "code"}}``; a fault's ``code``
goes into ``code`` (e.g. ``context_length_exceeded`` with HTTP 400, as llama-cpp-python's server says it).

Tool calls (``Reply.tool_calls``): streamed as ``delta.tool_calls`` pieces (``tool_call_pieces``), whole in
``message.tool_calls`` (``content`` null when there is no text) otherwise.

``Reply.options``: ``never_usage`` (True: no usage even when asked, as llama.cpp's server on a stream);
``extra_content`` (any JSON value: the first tool call's ``extra_content``, in place of a Gemini signature).

``FakeOpenAI.gemini``: speak as Google's OpenAI compatibility API does for Gemini 3 models
(``generativelanguage.googleapis.com/v1beta/openai``). The first tool call of a reply carries the turn's thought
signature, ``extra_content: {"google": {"thought_signature": "<base64>"}}`` (ai.google.dev/gemini-api/docs/
thought-signatures: with parallel calls only the first has one; the shape @ai-sdk/openai-compatible's
``openai-compatible-chat-language-model.ts`` reads), and a streamed call comes whole in one delta, without ``index``
("google does not send index", its chunk schema). A request whose history holds a call the fake signed, without that
signature on it, is refused as Gemini 3 refuses it: HTTP 400, the body a JSON *array* of one error
(discuss.ai.google.dev "OpenAI API compatibility broken due to thought_signature on gemini-3-pro-preview").
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes._base import FakeUpstream, Frames, FrameStream, Reply, dumps, json_error

#: The context window the listing states for every model (vLLM's ``max_model_len``).
CONTEXT_WINDOW = 8192

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "payment_required",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_MESSAGES = {
    400: "Invalid request",
    401: "Invalid credentials in Authorization header",
    402: "You have exceeded your monthly included credits for Inference Providers",
    404: "The model does not exist",
    429: "Rate limit reached",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def error_response(
    status: int, message: str | None, code: Any = None, *, param: str | None = None, retry_after: float | None = None
) -> Response:
    error = {
        "message": message or _MESSAGES.get(status, f"HTTP {status}"),
        "type": _TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }
    return json_error(status, {"error": error}, retry_after=retry_after)


class ChatCompletionsServer:
    """Chat Completions for ``fake``: its scripts, records and faults; ``token`` None accepts any key."""

    def __init__(
        self, fake: FakeUpstream, *, token: str | None, owned_by: str = "fake", listing: Mapping[str, Any] = {}
    ) -> None:
        self.fake = fake
        self.token = token
        self.owned_by = owned_by
        #: Fields each entry of the model listing adds (the context window, as each server family names it).
        self.listing = dict(listing)
        #: Speak as Gemini 3 on Google's OpenAI compatibility API (the module docstring; ``FakeOpenAI.gemini``).
        self.gemini = False
        #: call id → the thought signature the fake gave it (Gemini mode).
        self.signatures: dict[str, str] = {}

    async def chat(self, request: Request, *, model: str | None = None) -> Response:
        """``model``: the model a per-model route names (the HF router's ``/models/{id}/v1/...``)."""
        recorded, epoch = await self.fake.record(request)
        if self.token is not None and recorded.headers.get("authorization") != f"Bearer {self.token}":
            return error_response(401, None)
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return error_response(400, "messages: field required", "invalid_request_error")
        name = model or body.get("model")
        if not isinstance(name, str) or not self.fake.serves(name.split(":", 1)[0]):
            return error_response(404, f"The model `{name}` does not exist", "model_not_found")
        if self.gemini and (unsigned := self.unsigned_call(body["messages"])) is not None:
            return unsigned
        reply = self.fake.next_reply(name)
        fault = reply.fault
        if fault is not None and fault.kind == "status":
            return error_response(fault.http_status, fault.message, fault.code, retry_after=fault.retry_after)
        if body.get("stream") is not True:
            return JSONResponse(self.completion(reply, name))
        options = body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        include_usage = asked and not reply.options.get("never_usage")
        return FrameStream(
            self.fake,
            epoch,
            reply,
            self.render(reply, name, include_usage=include_usage),
            media_type="text/event-stream",
        )

    async def list_models(self, request: Request) -> Response:
        await self.fake.record(request, listing=True)
        data = [
            {"id": model, "object": "model", "created": 1730000000, "owned_by": self.owned_by, **self.listing}
            for model in self.fake.listed()
        ]
        return JSONResponse({"object": "list", "data": data})

    @staticmethod
    def _head(model: str, kind: str) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": kind, "created": 1730000000, "model": model}

    def unsigned_call(self, messages: list[Any]) -> Response | None:
        """Gemini 3's 400 for a history whose signed call came back without its signature, else None."""
        for position, message in enumerate(messages):
            calls = message.get("tool_calls") if isinstance(message, dict) else None
            if not calls or calls[0].get("id") not in self.signatures:
                continue
            signature = ((calls[0].get("extra_content") or {}).get("google") or {}).get("thought_signature")
            if signature != self.signatures[calls[0]["id"]]:
                name = calls[0].get("function", {}).get("name")
                text = (
                    "Function call is missing a thought_signature in functionCall parts. This is required for tools "
                    "to work correctly, and missing thought_signature may lead to degraded model performance. "
                    f"Additional data, function call `default_api:{name}` , position {position + 1}. Please refer to "
                    "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                )
                return JSONResponse([{"error": {"code": 400, "message": text, "status": "INVALID_ARGUMENT"}}], 400)
        return None

    def wire_calls(self, reply: Reply) -> list[dict[str, Any]]:
        """``message.tool_calls``; the first call's ``extra_content`` as the reply (or Gemini) has it."""
        calls: list[dict[str, Any]] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
        if "extra_content" in reply.options:
            calls[0]["extra_content"] = reply.options["extra_content"]
        elif self.gemini:
            signature = base64.b64encode(f"gemini-3 thought before {calls[0]['id']}".encode()).decode()
            self.signatures[calls[0]["id"]] = signature
            calls[0]["extra_content"] = {"google": {"thought_signature": signature}}
        return calls

    def completion(self, reply: Reply, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.tokens) or None}
        if reply.tool_calls:
            message["tool_calls"] = self.wire_calls(reply)
        if reply.reasoning:
            message["reasoning_content"] = "".join(reply.reasoning)
        usage = self.fake.usage_of(reply, len(reply.tokens) + len(reply.reasoning))
        return {
            **self._head(model, "chat.completion"),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
            if usage
            else None,
        }

    def render(self, reply: Reply, model: str, *, include_usage: bool) -> Frames:
        head = self._head(model, "chat.completion.chunk")
        # With include_usage every chunk carries "usage": null until the usage chunk (OpenAI's reference).
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + dumps({**head, "choices": [choice], **extra}) + b"\n\n"

        preamble = [chunk({"role": "assistant", "content": ""})]
        tokens = [chunk({"reasoning_content": t}) for t in reply.reasoning]
        tokens += [chunk({"content": t}) for t in reply.tokens]
        if self.gemini or "extra_content" in reply.options:  # whole calls, one a delta, as Gemini streams them
            whole = self.wire_calls(reply) if reply.tool_calls else []
            tokens += [
                chunk({"tool_calls": [call if self.gemini else {"index": i, **call}]}) for i, call in enumerate(whole)
            ]
        else:
            tokens += [chunk({"tool_calls": [piece]}) for piece in tool_call_pieces(reply)]
        trailer = [chunk({}, reply.finish)]
        usage = self.fake.usage_of(reply, len(reply.tokens) + len(reply.reasoning))
        if include_usage and usage is not None:
            counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
            trailer.append(b"data: " + dumps({**head, "choices": [], "usage": counts}) + b"\n\n")
        trailer.append(b"data: [DONE]\n\n")
        fault = reply.fault
        error = {
            "message": (fault.message if fault else None) or "the engine failed during generation",
            "type": "server_error",
            "param": None,
            "code": (fault.code if fault else None) or 500,
        }
        error_frames = [b"data: " + dumps({"error": error}) + b"\n\n", b"data: [DONE]\n\n"]
        return Frames(preamble=preamble, tokens=tokens, trailer=trailer, error=error_frames)


def _field(body: bytes, name: str) -> Any:
    """Field ``name`` of a JSON object body, else None (the server's own checks answer a body that is not one)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get(name) if isinstance(parsed, dict) else None


def tool_call_pieces(reply: Reply) -> list[dict[str, Any]]:
    """``delta.tool_calls`` entries as OpenAI streams them (openai-python ``ChoiceDeltaToolCall``): a call's first
    piece has ``id``, ``type`` and ``function.name`` with empty arguments, the next ones argument fragments."""
    pieces: list[dict[str, Any]] = []
    for index, call in enumerate(reply.tool_calls):
        first = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        pieces.append(first)
        pieces += [{"index": index, "function": {"arguments": part}} for part in call.fragments()]
    return pieces


class FakeOpenAI(FakeUpstream):
    """A stand-alone OpenAI-compatible server (vLLM-like) at ``/v1``; no key unless ``token`` is set."""

    name = "openai"
    prefix = "/v1"
    listed_by_default = ("HuggingFaceTB/SmolLM2-135M-Instruct",)
    token: str | None = None
    #: Answer ``max_tokens`` as OpenAI's reasoning models (o-series, GPT-5) do: a 400 naming the field to use.
    refuses_max_tokens = False
    #: Refuse more ``stop`` sequences than this as api.openai.com does (None: any number, as llama.cpp's server).
    max_stop_sequences: int | None = None
    #: Speak as Gemini 3 on Google's OpenAI compatibility API (the module docstring).
    gemini = False

    def __init__(self) -> None:
        # vLLM's listing states the served context window as max_model_len.
        self.server = ChatCompletionsServer(self, token=None, listing={"max_model_len": CONTEXT_WINDOW})
        super().__init__()

    def routes(self) -> list[BaseRoute]:
        return [
            Route(self.prefix + "/chat/completions", self.chat, methods=["POST"]),
            Route(self.prefix + "/models", self.server.list_models, methods=["GET"]),
        ]

    async def chat(self, request: Request) -> Response:
        self.server.token = self.token
        self.server.gemini = self.gemini
        if self.refuses_max_tokens and b'"max_tokens"' in await request.body():
            await self.record(request)
            message = "Unsupported parameter: 'max_tokens' is not supported with this model. "
            message += "Use 'max_completion_tokens' instead."
            return error_response(400, message, "unsupported_parameter", param="max_tokens")
        limit = self.max_stop_sequences
        stop = _field(await request.body(), "stop") if limit is not None else None
        if limit is not None and isinstance(stop, list) and len(stop) > limit:
            await self.record(request)
            # api.openai.com's answer, word for word (continuedev/continue issue 2461 quotes it).
            message = f"Invalid 'stop': array too long. Expected an array with maximum length {limit}, "
            message += f"but got an array with length {len(stop)} instead."
            return error_response(400, message, "array_above_max_length", param="stop")
        return await self.server.chat(request)

    def reset(self) -> None:
        super().reset()
        self.token = None
        self.refuses_max_tokens = False
        self.max_stop_sequences = None
        self.gemini = False
        self.server.signatures.clear()
