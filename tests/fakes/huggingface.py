"""Fake Hugging Face: the router's Chat Completions and a text-generation (TGI) server, on one port.

Router (huggingface_hub ``_providers/_common.py``; ``@huggingface/inference`` ``config.ts``):
``POST /v1/chat/completions`` (the model in the body, optionally with a ``:fastest``/``:cheapest``/
``:<provider>`` suffix), the per-model ``POST /models/{id}/v1/chat/completions``, and the free listing
``GET /v1/models`` — OpenAI framing by ``openai_compatible.ChatCompletionsServer`` (usage only when
``stream_options.include_usage`` asks). Configure the ``huggingface`` kind with ``url + "/v1"``.
``credits_used_up`` (True): the account's monthly included credits are spent, and the router refuses every chat call
with its 402 ``{"error": "You have exceeded your monthly included credits for Inference Providers. ..."}``.

TGI (``api = "tgi"``, configured with ``url``):

Framing (providers.md §1.5): ``data:{…}`` with **no** space after the colon (axum), one event per
token, the last event carries ``generated_text`` (and ``details`` when asked), the end token is
``special: true``, and there is **no** ``[DONE]``: the connection closes. Errors inside the stream
arrive under HTTP 200 as ``data:{"error":…,"error_type":…}`` (§1.6). Parameters are validated as
TGI does (e.g. ``temperature: 0`` or ``typical_p: -1`` → a ``validation`` error event), so an
adapter that sends what TGI rejects fails here too.

A non-streamed call (``/generate``, or ``/`` without ``stream: true``) gets TGI's ``GenerateResponse`` and its
``x-prompt-tokens``/``x-generated-tokens`` headers once the scripted generation is over, and a failure midway as
TGI's error body under the status of its ``error_type`` (``_base.WholeReply``).

``Reply.options``: ``eos`` (the special end token's text, default ``<|im_end|>``); ``no_end`` (True: the
connection closes cleanly after the tokens, without the final ``generated_text`` event — a truncated stream).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes._base import FakeUpstream, Frames, FrameStream, Reply, WholeReply, dumps, json_error
from tests.fakes.openai_compatible import ChatCompletionsServer

TOKEN = "hf_test"
#: The router's 402 once the account's monthly included credits are spent (its text, as its users met it:
#: huggingface/agents-course#386; a ``402 Client Error: Payment Required for url: https://router.huggingface.co/...``).
CREDITS_USED_UP = (
    "You have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
#: The context windows of the two serving providers the router's listing shows for every model.
ROUTER_CONTEXT_WINDOWS = (131072, 32768)
#: ``max_total_tokens`` of the fake TGI's ``/info`` (TGI's own default when not set by the launcher).
TGI_MAX_TOTAL_TOKENS = 4096
#: How many ``stop`` sequences TGI takes unless launched with ``--max-stop-sequences`` (launcher/src/main.rs).
TGI_MAX_STOP_SEQUENCES = 4


class FakeHuggingFace(FakeUpstream):
    name = "huggingface"
    #: The bearer token this fake accepts (None: any).
    token: str | None = TOKEN
    #: TGI's ``--max-stop-sequences``: more ``stop`` sequences are refused (a 422), as router/src/validation.rs does.
    max_stop_sequences = TGI_MAX_STOP_SEQUENCES

    listed_by_default = (
        "Qwen/Qwen2.5-72B-Instruct",
        "Qwen/Qwen2.5-Coder-32B-Instruct",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        "mistralai/Mistral-Nemo-Instruct-2407",
        "mistralai/Mistral-7B-Instruct-v0.3",
        "google/gemma-2-27b-it",
        "microsoft/Phi-3-mini-4k-instruct",
    )

    def __init__(self) -> None:
        # The router lists, per model, its serving providers, each with its own context window.
        providers = [
            {"provider": "fake-a", "status": "live", "context_length": ROUTER_CONTEXT_WINDOWS[0]},
            {"provider": "fake-b", "status": "live", "context_length": ROUTER_CONTEXT_WINDOWS[1]},
        ]
        self.router = ChatCompletionsServer(self, token=TOKEN, owned_by="huggingface", listing={"providers": providers})
        super().__init__()
        self.credits_used_up = False

    def reset(self) -> None:
        super().reset()
        self.credits_used_up = False
        self.max_stop_sequences = TGI_MAX_STOP_SEQUENCES

    def routes(self) -> list[BaseRoute]:
        # The router's routes first: the per-model chat route must not be taken by TGI's /models/{id}.
        router = [
            Route("/v1/chat/completions", self.router_chat, methods=["POST"]),
            Route("/models/{model_id:path}/v1/chat/completions", self.router_chat, methods=["POST"]),
            Route("/v1/models", self.router.list_models, methods=["GET"]),
        ]
        # §1.1: the same TGI handler behind every front door.
        tgi = [
            Route(path, self.generate, methods=["POST"])
            for path in ("/", "/generate", "/generate_stream", "/models/{model_id:path}")
        ]
        return [
            *router,
            *tgi,
            Route("/health", self.health, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
        ]

    async def router_chat(self, request: Request) -> Response:
        if self.credits_used_up:
            await self.record(request)
            return json_error(402, {"error": CREDITS_USED_UP})
        self.router.token = self.token
        return await self.router.chat(request, model=request.path_params.get("model_id"))

    async def health(self, request: Request) -> Response:
        return Response(b"", status_code=200)

    async def info(self, request: Request) -> Response:
        """TGI's ``GET /info`` (router/src/lib.rs ``Info``, TGI 3.x field names), for the one model it serves."""
        await self.record(request, listing=True)
        return JSONResponse(
            {
                "model_id": self.listed_by_default[0],
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": self.max_stop_sequences,
                "max_input_tokens": TGI_MAX_TOTAL_TOKENS - 1,
                "max_total_tokens": TGI_MAX_TOTAL_TOKENS,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.6",
            }
        )

    async def generate(self, request: Request) -> Response:
        recorded, epoch = await self.record(request)
        if self.token is not None and recorded.headers.get("authorization") != f"Bearer {self.token}":
            return json_error(401, {"error": "Invalid credentials in Authorization header"})
        model = request.path_params.get("model_id", "")
        if model and not self.serves(model):
            return json_error(404, {"error": f"Model {model} does not exist"})
        body = recorded.json
        if not isinstance(body, dict):
            return json_error(422, {"error": "Failed to deserialize the JSON body", "error_type": "validation"})
        reply = self.next_reply(model or None)
        fault = reply.fault
        if fault is not None and fault.kind == "status":
            return self.status_error(fault.http_status, fault.retry_after, fault.message, model)

        params = body.get("parameters") or {}
        streaming = request.url.path == "/generate_stream" or (
            request.url.path != "/generate" and body.get("stream") is True
        )
        problem = validate(body.get("inputs"), params, max_stop_sequences=self.max_stop_sequences)
        if not streaming:
            if problem:
                return json_error(422, {"error": problem, "error_type": "validation"})
            answer, headers = self.whole(reply, details=params.get("details") is True)
            wrapped = answer if request.url.path == "/generate" else [answer]
            return WholeReply(self, epoch, reply, JSONResponse(wrapped, headers=headers), self.whole_failure(reply))
        if problem:  # streaming routes report even validation under HTTP 200
            frames = Frames([], [], [b"data:" + dumps({"error": problem, "error_type": "validation"}) + b"\n\n"])
        else:
            frames = self.render(reply, details=params.get("details") is True)
        return FrameStream(
            self,
            epoch,
            reply,
            frames,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", "x-compute-type": "fake"},
        )

    def render(self, reply: Reply, *, details: bool) -> Frames:
        def event(index: int, text: str, special: bool, final: dict[str, Any] | None = None) -> bytes:
            payload = {
                "index": index,
                "token": {"id": 1000 + index, "text": text, "logprob": -0.25, "special": special},
                "generated_text": final["text"] if final else None,
                "details": final["details"] if final else None,
            }
            return b"data:" + dumps(payload) + b"\n\n"

        tokens = list(reply.reasoning) + list(reply.tokens)
        text = "".join(tokens)
        ends_on_eos = reply.finish == "stop"
        # "auto" usage counts the scripted tokens, as every fake does (real TGI would count the end token too).
        usage = self.usage_of(reply, len(tokens))
        final = {
            "text": text,
            "details": {
                "finish_reason": "eos_token" if ends_on_eos else "length",
                "generated_tokens": usage[1],
                "seed": None,
                "input_length": usage[0],
            }
            if details and usage is not None
            else None,
        }
        frames = [event(i + 1, t, False) for i, t in enumerate(tokens)]
        trailer: list[bytes] = []
        if ends_on_eos:
            trailer = [event(len(tokens) + 1, str(reply.options.get("eos", "<|im_end|>")), True, final)]
        elif frames:
            frames[-1] = event(len(tokens), tokens[-1], False, final)
        if reply.options.get("no_end"):
            frames, trailer = [event(i + 1, t, False) for i, t in enumerate(tokens)], []
        fault = reply.fault
        kind = (fault.code if fault else None) or "generation"
        message = (fault.message if fault else None) or _MESSAGES.get(kind, "Request failed during generation")
        error = [b"data:" + dumps({"error": message, "error_type": kind}) + b"\n\n"]
        return Frames(preamble=[], tokens=frames, trailer=trailer, error=error)

    def whole(self, reply: Reply, *, details: bool) -> tuple[dict[str, Any], dict[str, str]]:
        """A non-streamed reply: TGI's ``GenerateResponse`` (router/src/lib.rs: ``details`` with the generated tokens
        but no ``input_length``) and the headers ``generate_internal`` (router/src/server.rs) sets on it."""
        tokens = list(reply.reasoning) + list(reply.tokens)
        answer: dict[str, Any] = {"generated_text": "".join(tokens)}
        headers = {"x-compute-type": "fake"}
        usage = self.usage_of(reply, len(tokens))
        if usage is None:  # a server reporting no usage
            return answer, headers
        headers |= {"x-prompt-tokens": str(usage[0]), "x-generated-tokens": str(usage[1])}
        if details:
            listed = [{"id": 1000 + i, "text": t, "logprob": -0.25, "special": False} for i, t in enumerate(tokens, 1)]
            if reply.finish == "stop":
                eos = str(reply.options.get("eos", "<|im_end|>"))
                listed.append({"id": 1000 + len(tokens) + 1, "text": eos, "logprob": -0.001, "special": True})
            answer["details"] = {
                "finish_reason": "eos_token" if reply.finish == "stop" else "length",
                "generated_tokens": usage[1],
                "seed": None,
                "prefill": [],
                "tokens": listed,
            }
        return answer, headers

    @staticmethod
    def whole_failure(reply: Reply) -> Response:
        """A generation failing midway on ``/generate``: TGI's error body under the status its ``error_type`` has."""
        fault = reply.fault
        kind = (fault.code if fault else None) or "generation"
        message = (fault.message if fault else None) or _MESSAGES.get(kind, "Request failed during generation")
        return json_error(_STATUSES.get(kind, 500), {"error": message, "error_type": kind})

    def status_error(self, status: int, retry_after: float | None, message: str | None, model: str) -> Response:
        if status == 503:
            # The hosted API's cold start: the hint is in the body, not in a Retry-After header.
            body = {"error": message or f"Model {model} is currently loading", "estimated_time": retry_after or 20.0}
            return json_error(503, body)
        bodies = {
            401: {"error": "Invalid credentials in Authorization header"},
            403: {"error": "Model requires a Pro subscription"},
            429: {"error": "Rate limit reached. You reached free usage limit (reset hourly)."},
            500: {"error": "Incomplete generation", "error_type": "incomplete_generation"},
        }
        body = dict(bodies.get(status, {"error": f"HTTP {status}"}))
        if message:
            body["error"] = message
        return json_error(status, body, retry_after=retry_after)


#: ``error_type`` → the status TGI's non-streamed routes answer it with (providers.md §1.6).
_STATUSES = {
    "validation": 422,
    "overloaded": 429,
    "generation": 424,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
}

_MESSAGES = {
    "generation": "Request failed during generation: CUDA out of memory",
    "overloaded": "Model is overloaded",
    "validation": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096",
    "incomplete_generation_stream": "Incomplete generation stream",
}


def validate(inputs: Any, params: dict[str, Any], *, max_stop_sequences: int = TGI_MAX_STOP_SEQUENCES) -> str | None:
    """TGI's own checks (router/src/validation.rs) on what adapters send most; the messages are TGI's
    (``InferError::ValidationError``: "Input validation error: " and the ``ValidationError``'s own)."""

    def number(name: str) -> float | None:
        value = params.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    if not isinstance(inputs, str) or not inputs:
        return "Input validation error: `inputs` cannot be empty"
    temperature = number("temperature")
    if temperature is not None and temperature <= 0:
        return "Input validation error: `temperature` must be strictly positive"
    for name in ("top_p", "typical_p"):
        value = number(name)
        if value is not None and not 0 < value < 1:
            return f"Input validation error: `{name}` must be > 0.0 and < 1.0"
    penalty = number("repetition_penalty")
    if penalty is not None and penalty <= 0:
        return "Input validation error: `repetition_penalty` must be strictly positive"
    max_new = params.get("max_new_tokens")
    if max_new is not None and (not isinstance(max_new, int) or max_new <= 0):
        return "Input validation error: `max_new_tokens` must be strictly positive"
    truncate = params.get("truncate")
    if truncate is not None and (not isinstance(truncate, int) or truncate <= 0):
        return "Input validation error: `truncate` must be strictly positive and less than 1000000"
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, list):
        return "Failed to deserialize the JSON body: parameters.stop: invalid type"
    if stop is not None and len(stop) > max_stop_sequences:
        return f"Input validation error: `stop` supports up to {max_stop_sequences} stop sequences. Given: {len(stop)}"
    grammar = params.get("grammar")
    if grammar is not None:
        return _grammar_problem(grammar)
    return None


def _grammar_problem(grammar: Any) -> str | None:
    """TGI's ``GrammarType`` (router/src/lib.rs: ``{"type": "json" | "json_object" | "regex" | "json_schema",
    "value": …}``, serde's adjacent tagging) and its checks in router/src/validation.rs: a JSON grammar is an object
    (or its text) with ``properties`` at its top, whatever else the schema says."""
    kind = grammar.get("type") if isinstance(grammar, dict) else None
    if kind not in ("json", "json_object", "regex", "json_schema") or "value" not in grammar:
        return "Failed to deserialize the JSON body: parameters.grammar: unknown variant"
    value = grammar["value"]
    if kind == "regex":
        return None if isinstance(value, str) else "Failed to deserialize the JSON body: parameters.grammar.value"
    if kind == "json_schema":
        value = value.get("schema") if isinstance(value, dict) else None
    elif isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            return f"Input validation error: grammar is not valid: {exc}"
    if not isinstance(value, dict):
        return "Input validation error: grammar is not supported"
    if "properties" not in value:
        return "Input validation error: grammar is not valid: Grammar must have a 'properties' field"
    return None
