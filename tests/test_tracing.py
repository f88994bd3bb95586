"""OpenTelemetry traces (``tracing.py``): a real server on loopback, the fake upstreams behind it, spans caught by
the SDK's ``InMemorySpanExporter`` through a tracer provider given to ``create_app``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelgate.app import create_app
from modelgate.settings import Settings, tracing_enabled
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.servers import serve_in_thread

# Ollama retries a transient failure once, at once; a/primary falls back to a/backup on OpenRouter.
HEADER = "[providers.ollama]\nmax_retries = 1\nretry_base_delay = 0.001\nretry_max_delay = 0.001\n"
MESSAGES = [{"role": "user", "content": "Hi!"}]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@contextmanager
def _serve(fakes: Fakes, tmp_path: Path, exporter: InMemorySpanExporter, header: str) -> Iterator[str]:
    config = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("a", "primary", upstream="primary:1b", extra='fallbacks = ["a/backup"]\n'),
        model_toml("a", "backup", provider="openrouter", upstream="vendor/backup"),
        header=header,
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(config_path=config, probe_interval=0, **fakes.settings_overrides())  # type: ignore[arg-type]
    fakes.ollama.models = {"primary:1b"}
    with serve_in_thread(create_app(settings, tracer_provider=provider)) as url:
        yield url
    provider.shutdown()


@pytest.fixture
def service(fakes: Fakes, tmp_path: Path, exporter: InMemorySpanExporter) -> Iterator[str]:
    with _serve(fakes, tmp_path, exporter, HEADER) as url:
        yield url


def _spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The finished spans once ``count`` have ended (the last ends as the response does)."""
    finished = wait_for(lambda: len(exporter.get_finished_spans()) >= count and exporter.get_finished_spans(), "spans")
    return list(finished)


def _split(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (request,) = [s for s in spans if s.kind is SpanKind.SERVER]
    attempts = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    return request, attempts


def test_one_request_span_and_one_attempt_span_with_genai_attributes(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.ollama.script(Reply(tokens=["Hel", "lo"], usage=(7, 2)))
    body = {"model": "a/primary", "messages": MESSAGES, "max_tokens": 50, "temperature": 0.3, "top_p": 0.9}
    response = httpx.post(service + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text

    request, attempts = _split(_spans(exporter, 2))
    (attempt,) = attempts
    assert request.name == "chat a/primary"
    assert attempt.name == "chat primary:1b"
    assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
    assert attempt.context.trace_id == request.context.trace_id
    assert dict(request.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "a/primary",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.3,
        "gen_ai.request.top_p": 0.9,
        "modelgate.request_id": response.headers["x-request-id"],
        "http.response.status_code": 200,
        "gen_ai.response.model": "a/primary",
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 2,
        "gen_ai.response.finish_reasons": ("stop",),
        "modelgate.stream_outcome": "ok",
    }
    attributes = dict(attempt.attributes or {})
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "ollama"
    assert attributes["gen_ai.request.model"] == "primary:1b"
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.usage.input_tokens"] == 7 and attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == httpx.URL(fakes.ollama.url).port
    assert "error.type" not in attributes
    assert request.status.status_code is attempt.status.status_code is StatusCode.UNSET


def test_failed_attempts_then_a_fallback_are_each_a_child_span(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.ollama.script(Reply(fault=Fault.status(503)), Reply(fault=Fault.status(503)))
    fakes.openrouter.script(Reply(tokens=["ok"], usage=(5, 1)))
    response = httpx.post(service + "/api/ai/a/primary/chat", json={"messages": MESSAGES}, timeout=30)
    assert response.status_code == 200, response.text

    request, attempts = _split(_spans(exporter, 4))
    assert [a.name for a in attempts] == ["chat primary:1b", "chat primary:1b", "chat vendor/backup"]
    assert all(a.parent is not None and a.parent.span_id == request.context.span_id for a in attempts)
    for failed in attempts[:2]:
        assert failed.status.status_code is StatusCode.ERROR
        assert (failed.attributes or {})["error.type"] == "UpstreamUnavailable"
        assert "(ollama): unavailable" in (failed.status.description or "")
        assert "gen_ai.usage.input_tokens" not in (failed.attributes or {})
    answered = dict(attempts[2].attributes or {})
    assert answered["gen_ai.provider.name"] == "openrouter"
    assert answered["gen_ai.usage.output_tokens"] == 1
    assert "error.type" not in answered
    assert (request.attributes or {})["gen_ai.request.model"] == "a/primary"
    assert (request.attributes or {})["gen_ai.response.model"] == "a/backup"
    assert request.status.status_code is StatusCode.UNSET


def test_an_attempt_the_open_breaker_refuses_is_an_error_span_too(
    fakes: Fakes, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    # One failure opens Ollama's breaker: the retry is refused at once, and the fallback answers.
    header = HEADER + "breaker_threshold = 1\nbreaker_cooldown = 60\n"
    fakes.ollama.script(Reply(fault=Fault.status(503)))
    fakes.openrouter.script(Reply(tokens=["ok"]))
    with _serve(fakes, tmp_path, exporter, header) as url:
        response = httpx.post(url + "/v1/chat/completions", json={"model": "a/primary", "messages": MESSAGES})
        assert response.status_code == 200, response.text
        _, attempts = _split(_spans(exporter, 4))
    assert [(a.attributes or {}).get("error.type") for a in attempts] == ["UpstreamUnavailable", "CircuitOpen", None]
    assert len(fakes.ollama.requests) == 1  # the refused attempt never reached the upstream


def test_a_request_that_fails_everywhere_is_an_error_span(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.ollama.script(Reply(fault=Fault.status(503)), Reply(fault=Fault.status(503)))
    fakes.openrouter.script(Reply(fault=Fault.status(404, message="no such model")))
    response = httpx.post(service + "/v1/chat/completions", json={"model": "a/primary", "messages": MESSAGES})
    assert response.status_code >= 500

    request, attempts = _split(_spans(exporter, 4))
    assert len(attempts) == 3 and all(a.status.status_code is StatusCode.ERROR for a in attempts)
    assert request.status.status_code is StatusCode.ERROR
    assert (request.attributes or {})["error.type"] == str(response.status_code)
    assert "gen_ai.response.model" not in (request.attributes or {})


def test_a_stream_that_fails_midway_marks_both_spans(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.ollama.script(Reply(tokens=["a", "b", "c"], fault=Fault.error_after(1, message="model crashed")))
    body = {"model": "a/primary", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", service + "/v1/chat/completions", json=body, timeout=30) as response:
        text = response.read().decode()
    assert "model crashed" in text

    request, (attempt,) = _split(_spans(exporter, 2))
    for span in (request, attempt):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "stream_error"
        assert (span.attributes or {})["modelgate.stream_outcome"] == "stream_error"


CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def ids(header: str | None) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C ``traceparent`` (its flags vary: the SDK may mark a random trace id)."""
    assert header is not None
    version, trace_id, span_id, _flags = header.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def test_trace_context_crosses_the_gateway_both_ways(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    """The caller's traceparent parents the request span; every upstream call carries its own attempt's."""
    fakes.ollama.script(Reply(fault=Fault.status(503)), Reply(tokens=["ok"]))  # a retry: two attempts, two contexts
    headers = {"traceparent": traceparent(CALLER_TRACE, CALLER_SPAN)}
    body = {"model": "a/primary", "messages": MESSAGES}
    response = httpx.post(service + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text

    request, attempts = _split(_spans(exporter, 3))
    assert request.context.trace_id == CALLER_TRACE
    assert request.parent is not None and request.parent.span_id == CALLER_SPAN and request.parent.is_remote
    sent = [ids(r.headers.get("traceparent")) for r in fakes.ollama.requests if r.path == "/api/chat"]
    assert sent == [(CALLER_TRACE, attempt.context.span_id) for attempt in attempts]
    assert len(set(sent)) == 2


def test_a_request_without_trace_context_starts_a_trace_the_upstream_joins(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.ollama.script(Reply(tokens=["ok"]))
    malformed = {"traceparent": "00-not-a-trace-01"}  # ignored, as the W3C format says: a new trace
    body = {"model": "a/primary", "messages": MESSAGES}
    assert httpx.post(service + "/v1/chat/completions", json=body, headers=malformed, timeout=30).status_code == 200
    request, (attempt,) = _split(_spans(exporter, 2))
    assert request.parent is None
    assert ids(fakes.ollama.last.headers.get("traceparent")) == (request.context.trace_id, attempt.context.span_id)


def test_a_credential_sent_as_the_request_id_never_reaches_a_span(
    service: str, fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    """Found from outside: a client-chosen ``X-Request-ID`` is redacted in the access line and the ledger, but the
    request span carried it as given, so a key sent as the id (here an OpenAI-shaped one) reached the collector."""
    fakes.ollama.script(Reply(tokens=["ok"]))
    key = "sk-proj-Q3mXv8LrT1nW5yZ0aBcDeFgH"
    body = {"model": "a/primary", "messages": MESSAGES}
    response = httpx.post(service + "/v1/chat/completions", json=body, headers={"X-Request-ID": key}, timeout=30)
    assert response.status_code == 200, response.text
    request, _ = _split(_spans(exporter, 2))
    assert (request.attributes or {})["modelgate.request_id"] == "[REDACTED]"
    plain = {"X-Request-ID": "my-trace-1"}  # any other id is kept as given
    assert httpx.post(service + "/v1/chat/completions", json=body, headers=plain, timeout=30).status_code == 200
    spans = [s for s in _spans(exporter, 4) if s.kind is SpanKind.SERVER]
    assert [(s.attributes or {})["modelgate.request_id"] for s in spans][-1] == "my-trace-1"


def test_with_tracing_off_no_trace_context_goes_upstream(fakes: Fakes, tmp_path: Path) -> None:
    config = write_catalogue(tmp_path / "catalogue.toml", model_toml("a", "primary", upstream="primary:1b"))
    settings = Settings(config_path=config, probe_interval=0, **fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings)) as url:
        headers = {"traceparent": traceparent(CALLER_TRACE, CALLER_SPAN)}
        body = {"model": "a/primary", "messages": MESSAGES}
        assert httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30).status_code == 200
    assert "traceparent" not in fakes.ollama.last.headers


def test_other_routes_make_no_spans(service: str, exporter: InMemorySpanExporter) -> None:
    assert httpx.get(service + "/models").status_code == 200
    assert httpx.get(service + "/health").status_code == 200
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"MODELGATE_OTEL": "1"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "MODELGATE_OTEL": "0"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"MODELGATE_OTEL": "1", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_traces_are_off_unless_configured(env: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(env) is enabled
    assert Settings.from_env(env).tracing is enabled


def test_tracing_off_loads_no_exporter() -> None:
    """Off (the default), nothing of modelgate's tracing loads: no exporter, no tracer (redis's client imports the
    OpenTelemetry SDK by itself when it is installed, so the SDK's presence says nothing about modelgate)."""
    code = (
        "import sys\n"
        "from modelgate.app import create_app\n"
        "from modelgate.settings import Settings\n"
        "app = create_app(Settings(probe_interval=0))\n"
        "assert app.state.gateway.tracing is None\n"
        "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry.exporter'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


def test_tracing_on_builds_an_otlp_exporter_from_the_standard_variables() -> None:
    """On without a provider given: an SDK provider exporting over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    code = (
        "import os\n"
        "os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = 'http://127.0.0.1:9'\n"
        "os.environ['OTEL_SERVICE_NAME'] = 'gate-a'\n"
        "from modelgate.app import create_app\n"
        "from modelgate.settings import Settings\n"
        "app = create_app(Settings.from_env(probe_interval=0, database_url=None))\n"
        "tracing = app.state.gateway.tracing\n"
        "provider = tracing._owned\n"
        "processor, = provider._active_span_processor._span_processors\n"
        "exporter = processor._batch_processor._exporter\n"
        "print(type(exporter).__name__, exporter._endpoint, provider.resource.attributes['service.name'])\n"
        "provider.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["OTLPSpanExporter", "http://127.0.0.1:9/v1/traces", "gate-a"]
