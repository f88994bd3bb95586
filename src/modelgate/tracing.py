"""Optional OpenTelemetry traces of chat requests, after the GenAI semantic conventions.

Off unless configured (``Settings.tracing``: ``MODELGATE_OTEL=1``, or OpenTelemetry's own
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` and
``MODELGATE_OTEL=0`` turn it off). OpenTelemetry is the optional extra ``modelgate[otel]``, imported here and
only when tracing is on; with it off, ``GatewayState.tracing`` is None and the request path pays one
``is None`` check at each hook (``gateway.open_stream``, ``gateway._open_model``, ``gateway._relay``,
``RequestObserver._finish``).

Per chat request:

- one span ``chat {requested model}`` (kind SERVER), from the request's arrival to the end of its response,
  the stream included: ``gen_ai.operation.name`` = ``chat``, ``gen_ai.request.model`` (the catalogue id the
  caller named), ``gen_ai.response.model`` (the catalogue id that answered, after a fallback), the caller's
  ``gen_ai.request.max_tokens`` / ``temperature`` / ``top_p``, ``gen_ai.usage.*``,
  ``gen_ai.response.finish_reasons``, ``error.type`` (the HTTP status, or ``stream_error``) when it failed;
- under it, one span ``chat {upstream model}`` (kind CLIENT) per upstream attempt — each retry and each
  fallback its own — with ``gen_ai.provider.name`` (and the older ``gen_ai.system``: the instance's kind),
  ``server.address`` / ``server.port``, the parameters actually sent, and either the usage and finish reason
  of the reply it relayed or ``error.type`` (the failure's exception class) and an ERROR status.

Trace context crosses the gateway both ways, through OpenTelemetry's configured propagators (W3C
``traceparent``/``tracestate`` by default): a caller's context parents the request span, so a front-end's trace
goes on through modelgate, and each upstream call carries its attempt span's context
(``upstream_trace_headers``, read by the HTTP client), so a traced server behind (vLLM, TGI) joins the same trace.

Names follow https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ (semconv 1.37+, where
``gen_ai.provider.name`` replaced ``gen_ai.system``). Span texts pass through the log redactor: no credential
reaches a collector. Message contents are never recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.chat import ChatRequest, FinishReason, GenerationParams, Usage
    from modelgate.observer import Observation

log = logging.getLogger("modelgate.tracing")

#: GenAI finish reasons as the conventions spell them (OpenAI's words), from modelgate's (the AI SDK's).
_FINISH_REASONS: Mapping[str, str] = {"content-filter": "content_filter", "tool-calls": "tool_calls"}


#: The trace headers of the upstream attempt running in this task (empty with tracing off or outside a request).
_upstream_headers: ContextVar[Mapping[str, str] | None] = ContextVar("modelgate_upstream_trace_headers", default=None)


def upstream_trace_headers() -> Mapping[str, str]:
    """The headers that carry the current upstream attempt's trace context to the upstream (``traceparent`` …)."""
    return _upstream_headers.get() or {}


class Tracing:
    """The tracer of one app; makes a ``RequestTrace`` per chat request."""

    def __init__(self, tracer: Tracer, scrub: Callable[[str], str], owned: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.scrub = scrub
        self._owned = owned  # a provider we built (and must flush at stop), not one given to us

    @classmethod
    def create(
        cls, enabled: bool, scrub: Callable[[str], str], provider: TracerProvider | None = None
    ) -> Tracing | None:
        """Tracing through ``provider`` (tests, embedding apps), else through the process's configured provider
        or one built from OpenTelemetry's environment variables when ``enabled``; None when off."""
        if provider is None and not enabled:
            return None
        try:
            from opentelemetry import trace
        except ImportError:
            log.warning("tracing is configured but OpenTelemetry is not installed: pip install 'modelgate[otel]'")
            return None
        from modelgate import __version__

        owned = None
        if provider is None:
            current = trace.get_tracer_provider()
            # A provider set up by the host (opentelemetry-instrument, an embedding app) is used as it is.
            if isinstance(current, trace.ProxyTracerProvider):
                provider = owned = _otlp_provider()
            else:
                provider = current
        return cls(provider.get_tracer("modelgate", __version__), scrub, owned)

    def start_request(
        self, obs: Observation, model: CatalogueModel, request: ChatRequest, catalogue: Catalogue
    ) -> RequestTrace:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        # A trace the caller is in continues here (a malformed or absent context starts a new trace).
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in obs.request_headers}
        # The span starts when the request arrived, not when the gateway got to it.
        started = time.time_ns() - int((time.perf_counter() - obs.started) * 1e9)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model.id,
            # A client-chosen id is client text: redacted, as in the access line and the ledger.
            "modelgate.request_id": self.scrub(obs.request_id) if obs.client_id else obs.request_id,
            **_params(request.params),
        }
        span = self.tracer.start_span(
            f"chat {model.id}",
            context=extract(carrier),
            kind=SpanKind.SERVER,
            start_time=started,
            attributes=attributes,
        )
        return RequestTrace(self, span, catalogue)

    async def stop(self) -> None:
        if self._owned is not None:
            import asyncio

            # Exporting the last batch blocks on the network: not on the event loop.
            await asyncio.to_thread(self._owned.shutdown)  # type: ignore[attr-defined]


class RequestTrace:
    """The spans of one chat request: the request's, and the current upstream attempt's."""

    __slots__ = ("_attempt", "_catalogue", "_context", "_finish_reason", "_span", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, catalogue: Catalogue) -> None:
        from opentelemetry.trace import set_span_in_context

        self._tracing = tracing
        self._span = span
        self._catalogue = catalogue
        self._context: Context = set_span_in_context(span)
        self._attempt: Span | None = None
        self._finish_reason: str | None = None

    def start_attempt(self, model: CatalogueModel, request: ChatRequest, base_url: str) -> None:
        """An upstream call to ``model`` begins (``request``: what is sent, the model's defaults merged)."""
        from opentelemetry.propagate import inject
        from opentelemetry.trace import SpanKind, set_span_in_context

        self._end_attempt_open()
        kind = self._catalogue.instance(model.provider).kind
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": kind,
            "gen_ai.system": kind,  # the name before semconv 1.37, still what many backends read
            "gen_ai.request.model": model.upstream_model,
            "modelgate.model": model.id,
            "modelgate.provider": model.provider,
            **_server(base_url),
            **_params(request.params),
        }
        self._attempt = self._tracing.tracer.start_span(
            f"chat {model.upstream_model}", context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )
        headers: dict[str, str] = {}
        inject(headers, context=set_span_in_context(self._attempt))
        _upstream_headers.set(headers)  # this task's upstream call (the attempt's) sends them

    def fail_attempt(self, exc: BaseException) -> None:
        """The current attempt failed before its reply started (a retry or a fallback may follow)."""
        span = self._attempt
        if span is None:
            return
        self._attempt = None
        _fail(span, type(exc).__name__, self._tracing.scrub(getattr(exc, "message", None) or str(exc)))
        span.end()

    def end_attempt(self, usage: Usage | None, reason: FinishReason | None, outcome: str, error: str | None) -> None:
        """The relayed reply ended: ``outcome`` ok | stream_error | cancelled (``gateway._relay``)."""
        span = self._attempt
        if span is None:
            return
        self._attempt = None
        if reason is not None:
            self._finish_reason = _FINISH_REASONS.get(reason, reason)
            span.set_attribute("gen_ai.response.finish_reasons", [self._finish_reason])
        if usage is not None:
            span.set_attributes(_usage(usage))
        span.set_attribute("modelgate.stream_outcome", outcome)
        if outcome == "stream_error":
            _fail(span, "stream_error", self._tracing.scrub(error or "the stream failed"))
        span.end()

    def end(self, obs: Observation, status: int) -> None:
        """The response is over (``RequestObserver._finish``)."""
        self._end_attempt_open()
        span = self._span
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if obs.model is not None and obs.first_event_at is not None:  # a model answered
            attributes["gen_ai.response.model"] = obs.model
        if obs.prompt_tokens is not None and obs.completion_tokens is not None:
            attributes.update(
                {"gen_ai.usage.input_tokens": obs.prompt_tokens, "gen_ai.usage.output_tokens": obs.completion_tokens}
            )
            if obs.usage_estimated:
                attributes["modelgate.usage_estimated"] = True
        if self._finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [self._finish_reason]
        if obs.stream_outcome is not None:
            attributes["modelgate.stream_outcome"] = obs.stream_outcome
        span.set_attributes(attributes)
        if status >= 400:
            _fail(span, str(status), self._tracing.scrub(obs.error or f"HTTP {status}"))
        elif obs.stream_outcome == "stream_error":
            _fail(span, "stream_error", self._tracing.scrub(obs.error or "the stream failed"))
        span.end()

    def _end_attempt_open(self) -> None:
        """An attempt nobody ended (a bug, or a path that bypassed the relay) ends with what is known."""
        if self._attempt is not None:
            self._attempt.end()
            self._attempt = None


def _fail(span: Span, error_type: str, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


def _params(params: GenerationParams) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if params.max_new_tokens is not None:
        found["gen_ai.request.max_tokens"] = params.max_new_tokens
    if params.temperature is not None:
        found["gen_ai.request.temperature"] = params.temperature
    if params.top_p is not None:
        found["gen_ai.request.top_p"] = params.top_p
    if params.seed is not None:
        found["gen_ai.request.seed"] = params.seed
    if params.stop:
        found["gen_ai.request.stop_sequences"] = list(params.stop)
    if params.presence_penalty is not None:
        found["gen_ai.request.presence_penalty"] = params.presence_penalty
    if params.frequency_penalty is not None:
        found["gen_ai.request.frequency_penalty"] = params.frequency_penalty
    return found


def _usage(usage: Usage) -> dict[str, Any]:
    found: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }
    if usage.estimated:
        found["modelgate.usage_estimated"] = True
    return found


def _server(base_url: str) -> dict[str, Any]:
    parts = urlsplit(base_url)
    if not parts.hostname:
        return {}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname, "server.port": port}


def _otlp_provider() -> TracerProvider:
    """A provider exporting over OTLP/HTTP, configured by OpenTelemetry's standard variables
    (``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``)."""
    import os

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create lets given attributes win over OTEL_SERVICE_NAME: name the service only when unnamed.
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = SdkTracerProvider(resource=Resource.create({} if named else {"service.name": "modelgate"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
