"""``/metrics`` and the access log, through real servers and the fake upstreams.

Metrics: requests by route template and status, upstream attempts, time to first token, tokens,
streams in flight, with bounded labels. Logs: one JSON line per request, written when its stream
ended, carrying the request id it echoed; no credential anywhere in the logs or the responses.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.logs import REDACTED, JsonFormatter, RedactingFilter, logging_config
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.servers import serve_in_thread

CHAT = "/api/ai/ollama/rwkv-6-world/chat"
CLOUDFLARE_CHAT = "/api/ai/cloudflare/llama-3.3-70b-instruct-fp8-fast/chat"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}
API_KEY = "mg-test-key-4f1c9e2b7a"


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def access(self) -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in self.text.splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("msg") == "request"]

    def line(self, request_id: str) -> dict[str, Any]:
        """The access line of ``request_id``. Written once the response is over server-side, which may be
        a moment after the client read its last byte: wait for it."""
        deadline = time.monotonic() + 10
        while True:
            found = [line for line in self.access() if line["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.01)


@pytest.fixture
def logs() -> Iterator[Captured]:
    """JSON lines of everything logged, through a handler set up before the app starts (as in production)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root, modelgate = logging.getLogger(), logging.getLogger("modelgate")
    level = modelgate.level
    root.addHandler(handler)
    modelgate.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        modelgate.setLevel(level)


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings(**fakes.settings_overrides(), probe_interval=0))) as url:
        yield url


def sample(metrics: str, name: str, **labels: str) -> float:
    """One sample's value from the exposition text (0 when the series does not exist)."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        found_name, _, label_text = series.partition("{")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if found_name == name and found == labels:
            return float(value)
    return 0.0


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_count_a_request_by_route_template_and_status(service: str) -> None:
    httpx.get(f"{service}/models")
    httpx.get(f"{service}/models")
    httpx.post(f"{service}/api/ai/nobody/nothing/chat", json=BODY)
    response = httpx.get(f"{service}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert sample(text, "modelgate_http_requests_total", method="GET", route="/models", status="200") == 2
    assert (
        sample(
            text, "modelgate_http_requests_total", method="POST", route="/api/ai/{first}/{second}/chat", status="404"
        )
        == 1
    )
    assert sample(text, "modelgate_http_request_duration_seconds_count", route="/models") == 2


def test_a_chat_is_counted_upstream_with_tokens_and_time_to_first_token(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["a", "b", "c"]))
    assert httpx.post(service + CHAT, json=BODY).status_code == 200
    text = httpx.get(f"{service}/metrics").text
    labels = {"provider": "ollama", "model": "ollama/rwkv-6-world"}
    assert sample(text, "modelgate_upstream_requests_total", outcome="ok", **labels) == 1
    assert sample(text, "modelgate_upstream_time_to_first_token_seconds_count", **labels) == 1
    assert sample(text, "modelgate_prompt_tokens_total", **labels) == PROMPT_TOKENS
    assert sample(text, "modelgate_completion_tokens_total", **labels) == 3
    assert sample(text, "modelgate_streams_in_flight") == 0
    route = "/api/ai/{first}/{second}/chat"
    assert sample(text, "modelgate_http_requests_total", method="POST", route=route, status="200") == 1


def test_a_mid_stream_failure_is_its_own_outcome(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["a", "b", "c"], fault=Fault.error_after(1)))
    httpx.post(service + CHAT, json=BODY)
    text = httpx.get(f"{service}/metrics").text
    labels = {"provider": "ollama", "model": "ollama/rwkv-6-world"}
    assert sample(text, "modelgate_upstream_requests_total", outcome="stream_error", **labels) == 1
    assert sample(text, "modelgate_upstream_requests_total", outcome="ok", **labels) == 0


def test_a_catalogue_swap_drops_the_series_of_the_models_it_dropped(fakes: Fakes, tmp_path: Path) -> None:
    """A model a reload took away used to stay exported, frozen, for as long as the process ran."""
    kept = model_toml("acme", "kept", upstream="kept:1b")
    both = load_catalogue(write_catalogue(tmp_path / "both.toml", kept, model_toml("acme", "gone", upstream="gone:1b")))
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), both)
    fakes.ollama.by_model["gone:1b"] = Reply(fault=Fault.status(500))  # a second outcome of its own
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with serve_in_thread(app) as url:
        for model in ("acme/kept", "acme/gone"):
            httpx.post(f"{url}/v1/chat/completions", json={"model": model, **chat}, timeout=30)
        fakes.ollama.by_model.clear()
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "acme/gone", **chat}).status_code == 200
        before = httpx.get(f"{url}/metrics").text
        app.state.gateway.swap_catalogue(load_catalogue(write_catalogue(tmp_path / "kept.toml", kept)))
        after = httpx.get(f"{url}/metrics").text
    assert 'model="acme/gone"' in before
    assert 'model="acme/gone"' not in after
    labels = {"provider": "ollama", "model": "acme/kept"}
    for name in ("modelgate_upstream_time_to_first_token_seconds_count", "modelgate_prompt_tokens_total"):
        assert sample(after, name, **labels) == sample(before, name, **labels) > 0
    assert sample(after, "modelgate_upstream_requests_total", outcome="ok", **labels) == 1
    assert sample(after, "modelgate_completion_tokens_total", **labels) > 0


def test_labels_stay_bounded_whatever_clients_send(service: str) -> None:
    for i in range(30):
        httpx.get(f"{service}/probe/{i}/secret-{i}", headers={"X-Request-ID": f"req-{i}"})
    httpx.request("PROPFIND", f"{service}/models")
    text = httpx.get(f"{service}/metrics").text
    assert sample(text, "modelgate_http_requests_total", method="GET", route="unmatched", status="404") == 30
    assert sample(text, "modelgate_http_requests_total", method="OTHER", route="/models", status="405") == 1
    assert "secret-" not in text and "req-" not in text and "PROPFIND" not in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes <= {"/models", "unmatched", "/metrics"}, routes


def test_each_app_has_its_own_registry(fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)
    with serve_in_thread(create_app(settings)) as first, serve_in_thread(create_app(settings)) as second:
        httpx.get(f"{first}/models")
        assert sample(httpx.get(f"{first}/metrics").text, "modelgate_http_requests_total", **_models_200()) == 1
        assert sample(httpx.get(f"{second}/metrics").text, "modelgate_http_requests_total", **_models_200()) == 0


def _models_200() -> dict[str, str]:
    return {"method": "GET", "route": "/models", "status": "200"}


# --- the access log ---------------------------------------------------------------------------------


def test_one_json_line_per_request_with_the_echoed_request_id(logs: Captured, service: str) -> None:
    given = httpx.get(f"{service}/models", headers={"X-Request-ID": "trace-42.a:b"})
    generated = httpx.get(f"{service}/health")
    insane = httpx.get(f"{service}/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["x-request-id"])
    logs.line(insane.headers["x-request-id"])
    lines = logs.access()
    assert [line["request_id"] for line in lines] == [
        "trace-42.a:b",
        generated.headers["x-request-id"],
        insane.headers["x-request-id"],
    ]
    first = lines[0]
    assert first["method"] == "GET" and first["route"] == "/models" and first["status"] == 200
    assert first["level"] == "info" and first["ts"].endswith("Z")
    assert isinstance(first["duration_ms"], float)


def test_a_stream_is_logged_when_it_ends_with_model_tokens_and_ttft(logs: Captured, service: str, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["x", "y"]))
    response = httpx.post(service + CLOUDFLARE_CHAT, json=BODY, headers={"X-Request-ID": "stream-1"})
    assert response.status_code == 200
    line = logs.line("stream-1")
    assert line["model"] == "cloudflare/llama-3.3-70b-instruct-fp8-fast"
    assert line["provider"] == "cloudflare"
    assert line["route"] == "/api/ai/{first}/{second}/chat"
    assert line["status"] == 200
    assert line["stream"] == "ok"
    assert line["completion_tokens"] == 2 and line["prompt_tokens"] == PROMPT_TOKENS
    assert 0 <= line["ttft_ms"] <= line["duration_ms"]
    assert sorted(line["dropped_params"]) == ["truncate", "typical_p"]


def test_retries_and_fallback_attempts_are_logged(logs: Captured, service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(fault=Fault.status(503, message="server busy")), Reply(tokens=["ok"]))
    httpx.post(service + CHAT, json=BODY, headers={"X-Request-ID": "retry-1"})
    line = logs.line("retry-1")
    assert line["status"] == 200
    assert len(line["attempts"]) == 1 and "server busy" in line["attempts"][0]


def test_the_key_id_is_logged_never_the_key(logs: Captured, fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides(), api_keys=(API_KEY,), probe_interval=0)
    with serve_in_thread(create_app(settings)) as url:
        ok = httpx.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {API_KEY}", "X-Request-ID": "k1"})
        refused = httpx.post(url + CHAT, json=BODY, headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert ok.status_code == 200 and refused.status_code == 401
    line = logs.line("k1")
    assert re.fullmatch(r"[0-9a-f]{12}", line["key_id"])
    assert API_KEY not in logs.text and "wrong-key-0123456789" not in logs.text


def test_no_credential_ever_reaches_a_log_or_a_response(logs: Captured, fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides(), api_keys=(API_KEY,), probe_interval=0)
    secrets = [API_KEY, *(v for creds in settings.credentials.values() for v in creds.values() if len(v) >= 4)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    responses: list[httpx.Response] = []
    with serve_in_thread(create_app(settings)) as url:
        for provider, path in (
            ("ollama", CHAT),
            ("cloudflare", CLOUDFLARE_CHAT),
            ("openrouter", "/api/ai/openrouter/llama-3.3-70b-instruct/chat"),
            ("huggingface", "/api/ai/huggingface/Qwen2.5-72B-Instruct/chat"),
        ):
            fakes[provider].script(Reply(fault=Fault.status(401)))  # "your key is wrong": the riskiest error path
            responses.append(httpx.post(url + path, json=BODY, headers=auth))
            responses.append(httpx.post(url + path, json=BODY, headers=auth))
        responses.append(httpx.get(f"{url}/api/status"))
        responses.append(httpx.get(f"{url}/metrics"))
        responses.append(httpx.post(url + CHAT, json=BODY, headers={"Authorization": "Bearer " + API_KEY[:-1]}))
        # Code that carelessly logs a secret, a header or a traceback holding one: scrubbed all the same.
        careless = logging.getLogger("modelgate.careless")
        careless.warning("calling with token %s", settings.credentials["huggingface"]["HF_TOKEN"])
        careless.warning("headers: Authorization: Bearer some-user-token-abc")
        try:
            raise RuntimeError(f"upstream refused {settings.credentials['openrouter']['OPENROUTER_API_KEY']}")
        except RuntimeError:
            careless.exception("failed")
    # Each 401, then the provider blocked for the refused key (a 503 repeating why): neither may carry the key.
    assert [r.status_code for r in responses[:8]] == [502, 503] * 4, [r.status_code for r in responses]
    for secret in secrets:
        assert secret not in logs.text, secret
        for response in responses:
            assert secret not in response.text and secret not in str(response.headers), (secret, response.url)
    assert "some-user-token-abc" not in logs.text
    assert logs.text.count(REDACTED) >= 3


# --- redaction and formatting as units ---------------------------------------------------------------


def test_redacting_filter_scrubs_message_args_fields_and_tracebacks() -> None:
    secret = "s3cr3t-value"
    redactor = RedactingFilter([secret, "ab"])  # too short to be a secret: left alone
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key=%s auth=%s", (secret, "Bearer tok.en-1"), None)
    record.structured = {"msg": f"has {secret}", "n": 3}
    try:
        raise ValueError(secret)
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert redactor.filter(record)
    assert record.getMessage() == f"key={REDACTED} auth=Bearer {REDACTED}"
    assert record.structured == {"msg": f"has {REDACTED}", "n": 3}
    assert secret not in (record.exc_text or "") and REDACTED in (record.exc_text or "")
    assert redactor.scrub("abc") == "abc"


def test_logging_config_is_json_for_uvicorn_and_silences_its_access_log() -> None:
    config = logging_config("debug")
    assert config["root"]["level"] == "DEBUG"
    assert config["formatters"]["json"]["()"] == "modelgate.logs.JsonFormatter"
    assert config["loggers"]["uvicorn.access"] == {"level": "WARNING", "propagate": False}
    line = JsonFormatter().format(
        logging.LogRecord("modelgate.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    )
    assert orjson.loads(line)["msg"] == "hello you"


def test_a_failed_chat_is_logged_with_the_model_and_every_attempt(logs: Captured, service: str, fakes: Fakes) -> None:
    fakes.ollama.default = Reply(fault=Fault.status(400, message="model is required"))
    response = httpx.post(service + CHAT, json=BODY, headers={"X-Request-ID": "failed-1"})
    assert response.status_code == 400
    line = logs.line("failed-1")
    assert line["status"] == 400
    assert line["model"] == "ollama/rwkv-6-world" and line["provider"] == "ollama"
    assert line["ttft_ms"] is None
    assert len(line["attempts"]) == 1 and "model is required" in line["attempts"][0]
