"""Fake OpenRouter upstream (``/api/v1``), as providers.md §3 describes it.

Framing (§3.4): ``: OPENROUTER PROCESSING`` comments (before the first token, and once more after it),
``data: {chat.completion.chunk}`` events with ``delta.content`` (``delta.reasoning`` for reasoning
tokens), ``finish_reason`` on the last chunk together with ``usage``, then ``data: [DONE]``.
A mid-stream failure (``error_after``) is a chunk with a top-level ``error`` and
``finish_reason: "error"``, then ``[DONE]`` (§3.5). Pre-stream errors are ``{"error":{code,message}}``
with the HTTP status in ``code``; a 429 carries ``metadata.headers.X-RateLimit-Reset`` (epoch ms).

Tool calls (``Reply.tool_calls``) stream as OpenAI's ``delta.tool_calls`` pieces with the arguments in
fragments (``content: null`` beside them), ``finish_reason: "tool_calls"``.

``Reply.options``: ``separate_usage`` (True: usage comes in its own final chunk with ``choices: []``);
``reasoning_tokens`` (an int: reported as ``usage.completion_tokens_details.reasoning_tokens``, an extra
key OpenRouter's usage may carry, §3.3; absent otherwise); ``cached_tokens`` (an int: reported as
``usage.prompt_tokens_details.cached_tokens``, as openai-python's ``CompletionUsage`` has it); ``refusal``
(True: the tokens are the model's refusal, ``refusal`` beside a null ``content``, as OpenAI's models refuse);
``flagged`` (a list of categories: the input is refused by the moderation the model requires, HTTP 403 with
OpenRouter's ``ModerationErrorMetadata``: ``reasons``, ``flagged_input`` — the last message's text, at most 100
characters, cut in the middle with ``...`` — ``provider_name`` and ``model_slug``; api_reference/errors-and-debugging);
``guardrail`` (a list of phrases: the request is blocked by the account's prompt-injection guardrail, HTTP 403
``Request blocked: …`` with the phrases found in its messages as ``metadata.patterns``); ``cost`` (any JSON value:
sent as ``usage.cost``, what OpenRouter charged in USD credits, with ``is_byok: false`` and
``cost_details.upstream_inference_cost`` equal to it, as real replies carry them), and with it ``byok_cost`` (the
request ran on the account's own provider key: ``is_byok: true``, ``cost`` is OpenRouter's fee and this the
provider's own charge, ``cost_details.upstream_inference_cost``; use-cases/usage-accounting, "Cost Breakdown");
``reasoning_details`` (a list of reasoning blocks, OpenRouter's ``ReasoningDetailUnion`` objects: ``message.
reasoning_details`` of a whole reply; streamed one a chunk in ``delta.reasoning_details``, a ``reasoning.text`` block
beside its text in ``delta.reasoning``, before the content; guides/best-practices/reasoning-tokens, "Reasoning Details
API Shape"). A reply with tool calls and blocks is remembered: a later request whose assistant message holds its first
call without the same blocks, in the same order, is refused as OpenRouter passes on the serving model's refusal
(Anthropic's with thinking on: a 400 "Provider returned error", the model's own body in ``metadata.raw``).

The account (api_reference/limits.mdx, "Credit limits" and "Rate limits"): ``out_of_credits`` (True: its balance
cannot pay, and every model, ``:free`` ones included, is refused with OpenRouter's 402 ``limit_source:
openrouter_credits``); ``free_requests_left`` (None: no daily limit; else the ``:free`` requests left today, for all
``:free`` models together: at 0 each is refused with the 429 "Rate limit exceeded: free-models-per-day", its
``X-RateLimit-*`` headers in the reply's and in ``metadata.headers``, reset at the next 00:00 UTC; paid models
still answer).

``context_length`` is the served endpoint's window: a prompt over it is refused with OpenRouter's 400, unless
context compression is on for the request — it is by default on endpoints of 8,192 tokens or less, and off when the
request sends ``plugins: [{"id": "context-compression", "enabled": false}]`` (openrouter.ai/docs, Message
Transforms) — in which case the middle of the prompt is cut, silently, and the shortened prompt answered.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes._base import FakeUpstream, Frames, FrameStream, Reply, dumps, json_error
from tests.fakes.openai_compatible import tool_call_pieces

TOKEN = "sk-or-test"
COMMENT = b": OPENROUTER PROCESSING\n\n"
#: The largest window on which OpenRouter compresses an over-long prompt unless told not to (Message Transforms).
COMPRESSED_BY_DEFAULT_UP_TO = 8192
DEFAULT_CONTEXT_LENGTH = 131072
#: How many ``stop`` sequences a chat request may carry (its OpenAPI ``ChatRequest.stop``: ``maxItems: 4``).
MAX_STOP_SEQUENCES = 4
#: The answer of a serving provider that ignored a ``response_format`` it does not support.
UNSTRUCTURED = "Sure! It is sunny in Zürich, 21 degrees."

#: The 402 of an account whose balance cannot pay, as OpenRouter answered it in 2026
#: (open-assistant-org/open-assistant#80).
OUT_OF_CREDITS = {
    "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    "code": 402,
    "metadata": {
        "limit_source": "openrouter_credits",
        "remedy_hint": "Add credits at https://openrouter.ai/settings/credits, or lower max_tokens / prompt size to "
        "fit your remaining balance.",
    },
}
#: The 429 of the account's daily ``:free`` quota, as OpenRouter words it (Gitlawb/openclaude#936, n8n-io/n8n#19117).
FREE_MODELS_PER_DAY = (
    "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day"
)
SECONDS_A_DAY = 86_400

_ERRORS = {
    400: "Invalid request",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Input was flagged by moderation",
    404: "No endpoints found for the model",
    429: "Rate limit exceeded: free-models-per-min.",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available provider meets your routing requirements",
}


class FakeOpenRouter(FakeUpstream):
    name = "openrouter"
    prefix = "/api/v1"
    listed_by_default = (
        "google/gemini-2.0-pro-exp-02-05:free",
        "deepseek/deepseek-chat:free",
        "meta-llama/llama-3.3-70b-instruct:free",
    )
    token: str | None = TOKEN

    def __init__(self) -> None:
        super().__init__()
        #: The served endpoint's context window, in tokens (about four characters each).
        self.context_length = DEFAULT_CONTEXT_LENGTH
        #: The account's state (module docstring).
        self.out_of_credits = False
        self.free_requests_left: int | None = None

        #: The first call id of each reply that came with reasoning blocks → those blocks.
        self.reasoning_of: dict[str, list[Any]] = {}

    def reset(self) -> None:
        super().reset()
        self.context_length = DEFAULT_CONTEXT_LENGTH
        self.reasoning_of = {}
        self.out_of_credits = False
        self.free_requests_left = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route(self.prefix + "/chat/completions", self.chat, methods=["POST"]),
            Route(self.prefix + "/models", self.list_models, methods=["GET"]),
        ]

    async def list_models(self, request: Request) -> Response:
        await self.record(request, listing=True)
        data = [
            {
                "id": model,
                "canonical_slug": model.removesuffix(":free"),
                "name": model,
                "created": 1733506137,
                "context_length": 131072,
                "architecture": {"modality": "text->text", "tokenizer": "Other", "instruct_type": None},
                "pricing": {"prompt": "0", "completion": "0", "request": "0", "image": "0"},
                "top_provider": {"context_length": 131072, "max_completion_tokens": None, "is_moderated": False},
                "per_request_limits": None,
                "supported_parameters": ["max_tokens", "temperature", "top_p", "stop", "seed"],
            }
            for model in self.listed()
        ]
        return JSONResponse({"data": data})

    async def chat(self, request: Request) -> Response:
        recorded, epoch = await self.record(request)
        if self.token is not None and recorded.headers.get("authorization") != f"Bearer {self.token}":
            return self.error(401)
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self.error(400, 'Input required: specify "prompt" or "messages"')
        model = body.get("model")
        if not isinstance(model, str) or not self.serves(model):
            return self.error(400, f"{model} is not a valid model ID")
        stop = body.get("stop")
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            # Its OpenAPI ``ChatRequest.stop``: ``maxItems: 4``, "Stop sequences (up to 4)". [illustrative] message.
            return self.error(400, f"stop: Array must contain at most {MAX_STOP_SEQUENCES} element(s)")
        if self._over_the_window(body) and not self._compresses(body):
            wanted, limit = self._prompt_tokens(body), self.context_length
            return self.error(
                400,
                f"This endpoint's maximum context length is {limit} tokens. However, you requested about {wanted} "
                "tokens. Please reduce the length of the messages, or enable context compression.",
            )
        if (refused := self.account_refusal(model)) is not None:
            return refused
        if (lost := self._lost_reasoning(body["messages"])) is not None:
            return lost
        reply = self.next_reply(model)
        details = reply.options.get("reasoning_details")
        if details and reply.tool_calls:
            self.reasoning_of[reply.tool_calls[0].id] = details
        if "guardrail" in reply.options:
            return self.guardrail_block(body["messages"], reply.options["guardrail"])
        if "flagged" in reply.options:
            return self.moderation_refusal(model, body["messages"], reply.options["flagged"])
        fault = reply.fault
        if fault is not None and fault.kind == "status":
            return self.error(fault.http_status, fault.message, retry_after=fault.retry_after)
        if "response_format" in body and (body.get("provider") or {}).get("require_parameters") is not True:
            # Routed, as OpenRouter may, to a serving provider without structured outputs: it "will receive only the
            # parameters [it supports], and ignore the rest" (ProviderPreferences.requireParameters).
            reply = Reply(tokens=[UNSTRUCTURED])
        if body.get("stream") is not True:
            # As OpenRouter answers ``stream: false``: the reasoning beside the content, usage always.
            refused = reply.options.get("refusal")
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if refused else "".join(reply.tokens),
                "refusal": "".join(reply.tokens) if refused else None,
                "reasoning": "".join(reply.reasoning) or None,
            }
            if reply.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "index": i, "function": {"name": c.name, "arguments": c.arguments}}
                    for i, c in enumerate(reply.tool_calls)
                ]
            if details:
                message["reasoning_details"] = details
            choice = {
                "index": 0,
                "finish_reason": reply.finish,
                "native_finish_reason": reply.finish,
                "message": message,
            }
            completion = {**self._head(model, "chat.completion"), "choices": [choice]}
            usage = self.usage_counts(reply)
            if usage is not None:
                completion["usage"] = usage
            return JSONResponse(completion)
        return FrameStream(self, epoch, reply, self.render(reply, model), media_type="text/event-stream")

    def _lost_reasoning(self, messages: list[Any]) -> Response | None:
        """The serving model's refusal of a history whose tool call came back without its reasoning blocks."""
        for position, message in enumerate(messages):
            calls = message.get("tool_calls") if isinstance(message, dict) else None
            if not calls or calls[0].get("id") not in self.reasoning_of:
                continue
            if message.get("reasoning_details") != self.reasoning_of[calls[0]["id"]]:
                raw = {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"messages.{position}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                        "but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start "
                        "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks).",
                    },
                }
                error = {"code": 400, "message": "Provider returned error"}
                error["metadata"] = {"raw": json.dumps(raw), "provider_name": "Anthropic"}
                return json_error(400, {"error": error})
        return None

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        return sum(len(str(m.get("content") or "")) for m in body["messages"] if isinstance(m, dict)) // 4

    def _over_the_window(self, body: dict[str, Any]) -> bool:
        return self._prompt_tokens(body) > self.context_length

    def _compresses(self, body: dict[str, Any]) -> bool:
        """Whether OpenRouter would cut the middle out of an over-long prompt (and answer what is left)."""
        for plugin in body.get("plugins") or ():
            if isinstance(plugin, dict) and plugin.get("id") == "context-compression":
                return plugin.get("enabled", True) is not False
        return self.context_length <= COMPRESSED_BY_DEFAULT_UP_TO

    @staticmethod
    def _head(model: str, kind: str) -> dict[str, Any]:
        return {"id": "gen-1740000000-fake", "provider": "Fake", "model": model, "object": kind, "created": 1740000000}

    def render(self, reply: Reply, model: str) -> Frames:
        head = self._head(model, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
                "native_finish_reason": finish,
                "logprobs": None,
            }
            return b"data: " + dumps({**head, "choices": [choice], **extra}) + b"\n\n"

        tokens = [chunk({"role": "assistant", "content": "", "reasoning": t}) for t in reply.reasoning]
        for detail in reply.options.get("reasoning_details") or ():
            text = detail.get("text") if detail.get("type") == "reasoning.text" else None
            tokens.append(chunk({"role": "assistant", "content": "", "reasoning": text, "reasoning_details": [detail]}))
        if reply.options.get("refusal"):  # as OpenAI streams a refusal: beside a null content
            tokens += [chunk({"role": "assistant", "content": None, "refusal": t}) for t in reply.tokens]
        else:
            tokens += [chunk({"role": "assistant", "content": t}) for t in reply.tokens]
        # Tool calls as OpenRouter streams them: the OpenAI pieces, arguments in fragments, content null.
        tokens += [chunk({"role": "assistant", "content": None, "tool_calls": [p]}) for p in tool_call_pieces(reply)]
        if len(tokens) > 1:
            tokens[1] = COMMENT + tokens[1]  # comments may come at any time, not only first
        counts = self.usage_counts(reply)
        if counts is None:
            trailer = [chunk({"role": "assistant", "content": ""}, reply.finish)]
        elif reply.options.get("separate_usage"):
            trailer = [
                chunk({"role": "assistant", "content": ""}, reply.finish),
                b"data: " + dumps({**head, "choices": [], "usage": counts}) + b"\n\n",
            ]
        else:
            trailer = [chunk({"role": "assistant", "content": ""}, reply.finish, usage=counts)]
        trailer.append(b"data: [DONE]\n\n")
        fault = reply.fault
        error = {
            "code": (fault.code if fault else None) or "server_error",
            "message": (fault.message if fault else None) or "Provider disconnected unexpectedly",
        }
        error_frames = [chunk({"content": ""}, "error", error=error), b"data: [DONE]\n\n"]
        return Frames(preamble=[COMMENT], tokens=tokens, trailer=trailer, error=error_frames)

    def usage_counts(self, reply: Reply) -> dict[str, Any] | None:
        usage = self.usage_of(reply, len(reply.tokens) + len(reply.reasoning))
        if usage is None:
            return None
        counts: dict[str, Any] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
        if "reasoning_tokens" in reply.options:
            counts["completion_tokens_details"] = {"reasoning_tokens": reply.options["reasoning_tokens"]}
        if "cached_tokens" in reply.options:  # OpenRouter passes on the serving provider's prompt-cache hits
            counts["prompt_tokens_details"] = {"cached_tokens": reply.options["cached_tokens"]}
        if "cost" in reply.options:
            byok = "byok_cost" in reply.options
            upstream = reply.options["byok_cost"] if byok else reply.options["cost"]
            counts |= {"cost": reply.options["cost"], "is_byok": byok}
            counts["cost_details"] = {"upstream_inference_cost": upstream}
        return counts

    def moderation_refusal(self, model: str, messages: list[Any], reasons: list[str]) -> Response:
        """OpenRouter's 403 for an input the model's moderation flagged (its message as OpenRouter words it)."""
        text = str(messages[-1].get("content") or "") if messages and isinstance(messages[-1], dict) else ""
        flagged = text if len(text) <= 100 else f"{text[:48]}...{text[-49:]}"
        reason = reasons[0] if reasons else "misc"
        message = (
            f'{model} requires moderation on OpenAI. Your input was flagged for "{reason}". No credits were charged.'
        )
        metadata = {"reasons": reasons, "flagged_input": flagged, "provider_name": "OpenAI", "model_slug": model}
        return json_error(403, {"error": {"code": 403, "message": message, "metadata": metadata}})

    def guardrail_block(self, messages: list[Any], patterns: list[str]) -> Response:
        """OpenRouter's 403 for a request the account's prompt-injection guardrail blocks: the patterns found in the
        messages, as they are written there (its OpenAPI spec's ``guardrail-blocked`` example); none found, none."""
        text = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict)).lower()
        found = [pattern for pattern in patterns if pattern.lower() in text]
        message = "Request blocked: prompt injection patterns detected"
        return json_error(403, {"error": {"code": 403, "message": message, "metadata": {"patterns": found}}})

    def account_refusal(self, model: str) -> Response | None:
        """The account's answer before any model is asked: out of credits, or out of ``:free`` requests today."""
        if self.out_of_credits:
            return json_error(402, {"error": OUT_OF_CREDITS, "user_id": "user_fake"})
        if not model.endswith(":free") or self.free_requests_left is None:
            return None
        if self.free_requests_left > 0:
            self.free_requests_left -= 1
            return None
        now = time.time()
        reset = str(int((now - now % SECONDS_A_DAY + SECONDS_A_DAY) * 1000))  # the next 00:00 UTC, epoch ms
        headers = {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
        error = {"message": FREE_MODELS_PER_DAY, "code": 429, "metadata": {"headers": headers, "provider_name": None}}
        return JSONResponse({"error": error, "user_id": "user_fake"}, status_code=429, headers=headers)

    def error(self, status: int, message: str | None = None, *, retry_after: float | None = None) -> Response:
        error: dict[str, Any] = {"code": status, "message": message or _ERRORS.get(status, f"HTTP {status}")}
        if status == 429 and retry_after is not None:
            reset_ms = int((time.time() + retry_after) * 1000)
            error["metadata"] = {
                "headers": {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_ms)}
            }
        return json_error(status, {"error": error}, retry_after=retry_after)
