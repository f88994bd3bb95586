"""Retries, fallbacks and the circuit breaker: the pure decisions, then end to end through a real server.

End-to-end tests drive ``POST /v1/chat/completions`` (and the AI SDK chat route) of a real modelgate
server pointed at the fake upstreams of ``tests/fakes``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelgate import resilience
from modelgate.app import create_app
from modelgate.catalogue import ProviderEntry, load_catalogue
from modelgate.errors import (
    ProviderNotConfigured,
    UpstreamAgreementRequired,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from modelgate.providers import ollama
from modelgate.resilience import (
    BreakerConfig,
    Breakers,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    RetryBudget,
    RetryPolicy,
    counts_as_failure,
    may_fall_back,
    outcome_of,
    provider_wide,
)
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.raw_http import connect, post
from tests.redis_server import free_port
from tests.servers import serve_in_thread


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- retry decisions ----------------------------------------------------------------------------


def budget(**policy: Any) -> RetryBudget:
    return RetryBudget(RetryPolicy(**policy), random.Random(7))


def test_backoff_is_full_jitter_under_the_exponential_cap() -> None:
    retries = budget(max_retries=6, base_delay=0.5, max_delay=3.0)
    delays = [retries.next_delay(UpstreamUnavailable("p", "busy")) for _ in range(6)]
    caps = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert all(d is not None and 0 <= d <= cap for d, cap in zip(delays, caps, strict=True)), delays
    assert retries.next_delay(UpstreamUnavailable("p", "busy")) is None  # the seventh: budget spent


def test_jitter_spreads_delays() -> None:
    rng = random.Random(1)
    delays = {
        RetryBudget(RetryPolicy(base_delay=1.0), rng).next_delay(UpstreamUnavailable("p", "x")) for _ in range(20)
    }
    assert len(delays) == 20  # no two clients retry in lockstep


@pytest.mark.parametrize(
    "error",
    [
        UpstreamBadRequest("p", "invalid"),
        UpstreamAuthError("p", "bad key"),
        UpstreamAgreementRequired("p", "licence not accepted", upstream_status=403, transient=False),
        UpstreamError("p", "model not found", upstream_status=404),
        UpstreamProtocolError("p", "garbage"),
        CircuitOpen("p", 5.0),
        ValueError("a bug"),
    ],
)
def test_what_is_not_retried(error: BaseException) -> None:
    assert budget().next_delay(error) is None


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnavailable("p", "503"),
        UpstreamRateLimited("p", "429"),
        UpstreamError("p", "unreachable (ConnectError)", transient=True),
        UpstreamError("p", "failed (HTTP 502)", upstream_status=502, transient=True),
        UpstreamTimeout("p", "no first token"),
    ],
)
def test_what_is_retried(error: BaseException) -> None:
    assert budget().next_delay(error) is not None


def test_a_first_token_timeout_is_retried_only_once() -> None:
    retries = budget(max_retries=5)
    assert retries.next_delay(UpstreamTimeout("p", "slow")) is not None
    assert retries.next_delay(UpstreamTimeout("p", "slow")) is None
    assert retries.next_delay(UpstreamUnavailable("p", "busy")) is not None  # other failures keep their budget


def test_retry_after_is_a_floor_up_to_the_cap() -> None:
    assert budget(base_delay=0.01, max_delay=5.0).next_delay(UpstreamRateLimited("p", "x", retry_after=2.5)) == 2.5


def test_a_retry_after_beyond_the_cap_ends_the_retries() -> None:
    assert budget(max_delay=5.0).next_delay(UpstreamRateLimited("p", "x", retry_after=60)) is None


def test_the_retry_after_sent_is_bounded_and_never_overflows() -> None:
    # Upstream hints are capped at a day where they are read (``retry_after_header``); what we send ourselves may be
    # longer (a monthly budget's reset), but never unbounded.
    year = str(366 * 86_400)
    assert UpstreamRateLimited("p", "x", retry_after=float("inf")).headers == {"Retry-After": year}
    assert UpstreamRateLimited("p", "x", retry_after=1e300).headers == {"Retry-After": year}
    assert UpstreamRateLimited("p", "x", retry_after=20 * 86_400).headers == {"Retry-After": str(20 * 86_400)}
    assert UpstreamRateLimited("p", "x", retry_after=float("nan")).headers == {}
    assert UpstreamRateLimited("p", "x", retry_after=0.2).headers == {"Retry-After": "1"}


def test_policy_comes_from_the_provider_entry() -> None:
    entry = ProviderEntry(max_retries=4, retry_base_delay=0.1, retry_max_delay=2.0)
    assert RetryPolicy.from_entry(entry) == RetryPolicy(max_retries=4, base_delay=0.1, max_delay=2.0)
    assert BreakerConfig.from_entry(ProviderEntry(breaker_threshold=3, breaker_cooldown=7.0)).cooldown == 7.0


def test_classification() -> None:
    assert may_fall_back(UpstreamUnavailable("p", "x"))
    assert may_fall_back(CircuitOpen("p", 1.0))
    assert may_fall_back(ProviderNotConfigured("p", ["P_KEY"]))
    assert may_fall_back(UpstreamError("p", "gone", upstream_status=404))
    assert not may_fall_back(UpstreamBadRequest("p", "invalid"))
    assert not may_fall_back(ValueError("bug"))

    assert counts_as_failure(UpstreamUnavailable("p", "x"))
    assert counts_as_failure(UpstreamProtocolError("p", "x"))
    assert counts_as_failure(UpstreamError("p", "x", upstream_status=500))
    assert not counts_as_failure(UpstreamError("p", "x", upstream_status=404))
    assert not counts_as_failure(UpstreamBadRequest("p", "x"))
    assert not counts_as_failure(UpstreamAuthError("p", "x"))
    assert not counts_as_failure(UpstreamAgreementRequired("p", "x", upstream_status=403))
    assert may_fall_back(UpstreamAgreementRequired("p", "x", upstream_status=403))
    assert not counts_as_failure(CircuitOpen("p", 1.0))
    assert counts_as_failure(UpstreamError("p", "unreachable", connection_failed=True))

    # Only a call that got no answer is the provider's; whatever it answered (or was slow to) is the model's.
    assert provider_wide(UpstreamError("p", "unreachable (ClientConnectorError)", connection_failed=True))
    assert provider_wide(UpstreamProtocolError("p", "the connection dropped", connection_failed=True))
    assert not provider_wide(UpstreamRateLimited("p", "rate limited", upstream_status=429))
    assert not provider_wide(UpstreamUnavailable("p", "currently loading", upstream_status=503))
    assert not provider_wide(UpstreamError("p", "x", upstream_status=500))
    assert not provider_wide(UpstreamTimeout("p", "no reply within 60s (first-token timeout)"))

    assert outcome_of(CircuitOpen("p", 1.0)) == "circuit_open"
    assert outcome_of(UpstreamTimeout("p", "x")) == "timeout"
    assert outcome_of(UpstreamRateLimited("p", "x")) == "rate_limited"
    assert outcome_of(ProviderNotConfigured("p", ["X"])) == "unconfigured"
    assert outcome_of(UpstreamAgreementRequired("p", "x")) == "agreement_required"
    assert outcome_of(RuntimeError()) == "error"


# --- the breaker --------------------------------------------------------------------------------


def breaker(clock: FakeClock, threshold: int = 3, window: float = 10.0, cooldown: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker("p", BreakerConfig(threshold=threshold, window=window, cooldown=cooldown), clock)


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        b.acquire()
        b.record_failure("HTTP 503")
    assert b.state is BreakerState.OPEN
    clock.now += 2
    with pytest.raises(CircuitOpen) as caught:
        b.acquire()
    assert caught.value.retry_after == pytest.approx(3.0)
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "3"}
    assert "provider in cooldown" in caught.value.message
    assert b.reason == "HTTP 503"


def test_a_success_resets_the_streak() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for outcome in ("fail", "fail", "ok", "fail", "fail"):
        b.acquire()
        b.record_failure("x") if outcome == "fail" else b.record_success()
    assert b.state is BreakerState.CLOSED


def test_a_successful_probe_closes_an_open_or_half_open_breaker() -> None:
    clock = FakeClock()
    breakers = Breakers(clock=clock)
    b = breakers.get("p", BreakerConfig(threshold=1, cooldown=600))
    b.acquire()
    b.record_failure("HTTP 502")
    assert b.is_open()
    breakers.probe_succeeded("p")
    assert b.state is BreakerState.CLOSED and b.reason is None
    b.acquire()  # no "provider in cooldown"
    b.record_failure("HTTP 502")
    clock.now += 601
    b.acquire()  # the half-open trial is in flight: others would be refused
    assert b.state is BreakerState.HALF_OPEN
    breakers.probe_succeeded("p")
    b.acquire()
    breakers.probe_succeeded("never-used")  # no breaker yet: nothing to do, nothing created
    assert breakers.peek("never-used") is None


def test_failures_spread_beyond_the_window_do_not_open_it() -> None:
    clock = FakeClock()
    b = breaker(clock, window=10.0)
    for _ in range(5):
        b.acquire()
        b.record_failure("x")
        clock.now += 6  # two failures never fall in one 10 s streak with a third
        if b.failures >= 2:
            clock.now += 5
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_trial_through_then_closes_on_success() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1, cooldown=5.0)
    b.acquire()
    b.record_failure("x")
    clock.now += 5.01
    b.acquire()  # the trial
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen):
        b.acquire()  # a second caller while the trial is out
    b.record_success()
    assert b.state is BreakerState.CLOSED
    b.acquire()
    b.acquire()


def test_a_failed_trial_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1, cooldown=5.0)
    b.acquire()
    b.record_failure("x")
    clock.now += 6
    b.acquire()
    b.record_failure("still down")
    assert b.state is BreakerState.OPEN and b.remaining_cooldown() == pytest.approx(5.0)


def test_a_trial_without_verdict_frees_the_slot() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1)
    b.acquire()
    b.record_failure("x")
    clock.now += 6
    trial = b.acquire()
    b.release(trial)  # e.g. the client went away while waiting
    b.acquire()  # another caller may try


def test_only_the_trial_itself_frees_the_trials_slot() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1)
    early = b.acquire()  # started while closed: not the trial
    assert early is None
    b.acquire()
    b.record_failure("x")
    clock.now += 6
    trial = b.acquire()
    assert trial is not None and b.state is BreakerState.HALF_OPEN
    b.release(early)  # the early attempt's client went away
    with pytest.raises(CircuitOpen):
        b.acquire()  # the trial is still out
    b.record_failure("still down", early)  # an early attempt's failure reopens, but frees no slot
    clock.now += 6
    with pytest.raises(CircuitOpen):
        b.acquire()  # a new cooldown is over, yet the trial is still out
    b.release(trial)
    assert b.acquire() is not None  # the next trial


def test_an_answered_failure_counts_against_the_model_and_no_answer_against_the_provider() -> None:
    clock = FakeClock()
    breakers = Breakers(clock=clock)
    config = BreakerConfig(threshold=2, cooldown=5.0)
    free, other = breakers.for_model("or", "a:free", config), breakers.for_model("or", "b", config)
    assert free.provider is other.provider and free.model is not other.model
    for _ in range(2):
        free.record_failure(UpstreamRateLimited("or", "rate limited", upstream_status=429), free.acquire())
    with pytest.raises(CircuitOpen) as caught:
        free.acquire()
    assert caught.value.message.endswith("model in cooldown") and caught.value.model == "a:free"
    assert free.provider.state is BreakerState.CLOSED
    other.record_success()  # another model of the provider is untouched

    unreachable = UpstreamError("or", "unreachable (ClientConnectorError)", transient=True, connection_failed=True)
    for _ in range(2):
        other.record_failure(unreachable, other.acquire())
    assert other.model.state is BreakerState.CLOSED  # never reached: no verdict on the model
    for breaker in (other, breakers.for_model("or", "never-called", config)):
        with pytest.raises(CircuitOpen) as caught:
            breaker.acquire()
        assert caught.value.message.endswith("provider in cooldown") and caught.value.model is None
    breakers.probe_succeeded("or")  # the listing answers: the provider is back, the rate-limited model is not
    other.acquire()
    with pytest.raises(CircuitOpen):
        free.acquire()


def test_a_model_refusing_gives_back_the_providers_trial() -> None:
    clock = FakeClock()
    breakers = Breakers(clock=clock)
    config = BreakerConfig(threshold=1, cooldown=5.0)
    free, other = breakers.for_model("or", "a:free", config), breakers.for_model("or", "b", config)
    unreachable = UpstreamError("or", "unreachable", transient=True, connection_failed=True)
    other.record_failure(unreachable, other.acquire())  # the provider: open until +5
    clock.now += 3
    free.model.record_failure("rate limited")  # the model: open until +8
    clock.now += 3
    with pytest.raises(CircuitOpen) as caught:
        free.acquire()  # the provider is half-open, but this attempt goes nowhere: its trial is given back
    assert caught.value.model == "a:free"
    passage = other.acquire()
    assert passage.provider is not None  # the provider's trial is still there to take
    other.record_success()
    assert free.provider.state is BreakerState.CLOSED


def test_an_answered_failure_is_the_providers_answer_too() -> None:
    """The provider's half-open trial that gets a 429 about one model shows the provider answering: it closes."""
    clock = FakeClock()
    breakers = Breakers(clock=clock)
    call = breakers.for_model("or", "a:free", BreakerConfig(threshold=1, cooldown=5.0))
    call.record_failure(UpstreamError("or", "unreachable", transient=True, connection_failed=True), call.acquire())
    clock.now += 6
    passage = call.acquire()
    assert passage.provider is not None and call.provider.state is BreakerState.HALF_OPEN
    call.record_failure(UpstreamRateLimited("or", "x", upstream_status=429), passage)
    assert call.provider.state is BreakerState.CLOSED
    assert call.model.state is BreakerState.OPEN


def test_model_breakers_are_bounded_keeping_those_that_hold_something(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resilience, "MAX_MODEL_BREAKERS", 4)
    breakers = Breakers(clock=FakeClock())
    config = BreakerConfig(threshold=1)
    failing = breakers.for_model("p", "failing", config)
    failing.record_failure(UpstreamUnavailable("p", "loading", upstream_status=503), failing.acquire())
    for index in range(20):  # catalogue after catalogue, each with new models that answered
        breakers.for_model("p", f"m{index}", config).record_success()
    assert len(breakers._models) <= 4
    assert breakers.peek_model("p", "failing") is failing.model and failing.model.is_open()
    assert breakers.peek_model("p", "m0") is None
    assert breakers.peek_model("p", "m19") is not None


def test_a_catalogue_swap_forgets_only_the_breakers_of_what_it_dropped(tmp_path: Path) -> None:
    breakers = Breakers(clock=FakeClock())
    config = BreakerConfig(threshold=1)
    kept = breakers.for_model("ollama", "tiny:1b", config)
    kept.record_failure(UpstreamUnavailable("ollama", "loading", upstream_status=503), kept.acquire())
    breakers.for_model("gone", "old:1b", config).record_success()
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("acme", "tiny", upstream="tiny:1b")))
    breakers.retain(catalogue)
    assert breakers.peek_model("ollama", "tiny:1b") is kept.model and kept.model.is_open()  # its cooldown goes on
    assert breakers.peek("ollama") is kept.provider
    assert breakers.peek("gone") is None and breakers.peek_model("gone", "old:1b") is None


# --- end to end ---------------------------------------------------------------------------------

FAST_RETRIES = """
[providers.ollama]
max_retries = 2
retry_base_delay = 0.01
retry_max_delay = 0.5
breaker_threshold = 50
"""


def _catalogue(tmp_path: Path, header: str = FAST_RETRIES, fallbacks: str = '["acme/backup"]') -> Path:
    return write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "primary", upstream="primary:1b", extra=f"fallbacks = {fallbacks}"),
        model_toml("acme", "backup", upstream="backup:1b", max_new_tokens=50),
        header=header,
    )


@pytest.fixture
def serve(fakes: Fakes, tmp_path: Path) -> Iterator[Any]:
    servers: list[Any] = []

    def start(header: str = FAST_RETRIES, fallbacks: str = '["acme/backup"]', **settings: Any) -> str:
        catalogue = load_catalogue(_catalogue(tmp_path, header, fallbacks))
        app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0, **settings), catalogue)
        context = serve_in_thread(app)
        servers.append(context)
        return context.__enter__()

    yield start
    for context in reversed(servers):
        context.__exit__(None, None, None)


def chat(url: str, model: str = "acme/primary", *, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def chat_models(fakes: Fakes) -> list[str]:
    return [r.json["model"] for r in fakes.ollama.requests if r.path == "/api/chat"]


def content(response: httpx.Response) -> str:
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def test_a_retry_succeeds_on_the_second_attempt(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(Reply(fault=Fault.status(503, message="server busy")), Reply(tokens=["fine"]))
    response = chat(url)
    assert response.status_code == 200, response.text
    assert content(response) == "fine"
    assert response.headers["x-modelgate-model"] == "acme/primary"
    assert chat_models(fakes) == ["primary:1b", "primary:1b"]
    metrics = httpx.get(f"{url}/metrics").text
    assert (
        'modelgate_upstream_requests_total{model="acme/primary",outcome="unavailable",provider="ollama"} 1.0' in metrics
    )
    assert 'modelgate_upstream_requests_total{model="acme/primary",outcome="ok",provider="ollama"} 1.0' in metrics


def test_retry_after_is_honoured_before_retrying(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(Reply(fault=Fault.status(429, retry_after=0.2)), Reply(tokens=["later"]))
    response = chat(url)
    assert response.status_code == 200 and content(response) == "later"
    assert chat_models(fakes) == ["primary:1b", "primary:1b"]


def test_a_retry_after_longer_than_the_cap_is_handed_to_the_client(fakes: Fakes, serve: Any) -> None:
    url = serve(fallbacks="[]")
    fakes.ollama.script(Reply(fault=Fault.status(503, retry_after=120)))
    response = chat(url)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "120"
    assert chat_models(fakes) == ["primary:1b"]  # not retried: nobody waits two minutes for a first byte


@pytest.mark.parametrize("retry_after", [float("inf"), 1e300, 2e5])
def test_an_absurd_retry_after_is_handed_on_capped_at_a_day(fakes: Fakes, serve: Any, retry_after: float) -> None:
    url = serve(fallbacks="[]")
    fakes.ollama.script(Reply(fault=Fault.status(503, retry_after=retry_after, message="busy")))
    response = chat(url)
    assert response.status_code == 503, response.text
    assert "busy" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "86400"
    assert chat_models(fakes) == ["primary:1b"]  # far beyond the cap: not retried


def test_a_fallback_answers_after_the_primarys_503s(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(*[Reply(fault=Fault.status(503))] * 3, Reply(tokens=["from", " backup"]))
    response = chat(url)
    assert response.status_code == 200, response.text
    assert response.headers["x-modelgate-model"] == "acme/backup"
    assert content(response) == "from backup"
    assert chat_models(fakes) == ["primary:1b"] * 3 + ["backup:1b"]
    # The fallback gets its own catalogue defaults, not the primary's.
    assert fakes.ollama.last.json["options"]["num_predict"] == 50


def test_a_fallback_keeps_the_callers_values_over_its_own_defaults(fakes: Fakes, serve: Any) -> None:
    """What the caller set survives the fallback; max_tokens is capped by the fallback's own limit."""
    url = serve()
    fakes.ollama.script(*[Reply(fault=Fault.status(503))] * 3, Reply(tokens=["ok"]))
    body = {"model": "acme/primary", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3}
    response = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 100}, timeout=30)
    assert response.headers["x-modelgate-model"] == "acme/backup"
    options = fakes.ollama.last.json["options"]
    assert options["temperature"] == 0.3
    assert options["num_predict"] == 50  # asked for 100, the backup allows 50


def test_a_bad_request_is_neither_retried_nor_failed_over(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(Reply(fault=Fault.status(400, message="invalid character")))
    response = chat(url)
    assert response.status_code == 400
    assert chat_models(fakes) == ["primary:1b"]


def test_a_fallbacks_bad_request_passes_it_over_and_keeps_the_primarys_error(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(
        *[Reply(fault=Fault.status(503, message="server busy"))] * 3,
        Reply(fault=Fault.status(400, message="prompt is longer than the context window")),
    )
    response = chat(url)
    assert response.status_code == 503, response.text  # the requested model's error, not the fallback's 400
    assert "server busy" in response.json()["error"]["message"]
    assert chat_models(fakes) == ["primary:1b"] * 3 + ["backup:1b"]  # a 400 is not retried


def test_the_next_fallback_answers_after_one_refuses_the_request(fakes: Fakes, tmp_path: Path) -> None:
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "primary", upstream="primary:1b", extra='fallbacks = ["acme/small", "acme/big"]'),
        model_toml("acme", "small", upstream="small:1b"),
        model_toml("acme", "big", upstream="big:1b"),
        header=FAST_RETRIES,
    )
    fakes.ollama.script(
        *[Reply(fault=Fault.status(503))] * 3,
        Reply(fault=Fault.status(400, message="prompt is longer than the context window")),
        Reply(tokens=["from big"]),
    )
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), load_catalogue(path))
    with serve_in_thread(app) as url:
        response = chat(url)
    assert response.status_code == 200, response.text
    assert response.headers["x-modelgate-model"] == "acme/big" and content(response) == "from big"
    assert chat_models(fakes) == ["primary:1b"] * 3 + ["small:1b", "big:1b"]


def test_when_everything_fails_the_primarys_error_is_reported(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.default = Reply(fault=Fault.status(503, message="server busy"))
    response = chat(url)
    assert response.status_code == 503
    assert "server busy" in response.json()["error"]["message"]
    assert chat_models(fakes) == ["primary:1b"] * 3 + ["backup:1b"] * 3


def test_a_mid_stream_failure_is_reported_not_switched(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(Reply(tokens=["one", " two", " three"], fault=Fault.error_after(2, message="runner died")))
    response = chat(url, stream=True)
    assert response.status_code == 200
    assert response.headers["x-modelgate-model"] == "acme/primary"
    assert '"one"' in response.text and '" two"' in response.text and "three" not in response.text
    assert "runner died" in response.text
    assert chat_models(fakes) == ["primary:1b"]  # the fallback was never asked


BREAKER = """
[providers.ollama]
max_retries = 0
breaker_threshold = 2
breaker_window = 60
breaker_cooldown = 0.5
"""


def test_the_breaker_opens_fails_fast_and_closes_after_a_good_trial(fakes: Fakes, serve: Any) -> None:
    url = serve(BREAKER, fallbacks="[]")
    fakes.ollama.script(Reply(fault=Fault.status(500)), Reply(fault=Fault.status(500)))
    assert [chat(url).status_code for _ in range(2)] == [502, 502]

    refused = chat(url)  # open: refused without calling upstream
    assert refused.status_code == 503
    assert "model in cooldown" in refused.json()["error"]["message"]  # Ollama answered: the 500s are the model's
    assert refused.headers["retry-after"] == "1"
    assert len(chat_models(fakes)) == 2
    status = httpx.get(f"{url}/api/status").json()
    assert status["models"]["acme/primary"]["status"] == "down"
    assert "circuit open" in status["models"]["acme/primary"]["reason"]
    assert status["providers"]["ollama"]["status"] != "down"

    # After the cooldown one trial goes through; it succeeds, so the breaker closes.
    answered = _poll(lambda: chat(url), lambda r: r.status_code == 200)
    assert answered.status_code == 200
    assert chat(url).status_code == 200
    assert len(chat_models(fakes)) == 4
    assert httpx.get(f"{url}/api/status").json()["models"]["acme/primary"]["status"] != "down"


def test_an_earlier_attempt_leaving_does_not_let_a_second_trial_through(fakes: Fakes, serve: Any) -> None:
    url = serve(BREAKER.replace("breaker_threshold = 2", "breaker_threshold = 1"), fallbacks="[]")
    fakes.ollama.script(
        Reply(fault=Fault.hang()),  # started while closed: not the trial
        Reply(fault=Fault.status(500)),  # opens the breaker
        Reply(fault=Fault.hang()),  # the half-open trial, still out
    )
    body = json.dumps({"model": "acme/primary", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    early = connect(url)
    early.sendall(post("/v1/chat/completions", body.encode()))
    wait_for(lambda: len(chat_models(fakes)) == 1, "the early attempt upstream")
    assert chat(url).status_code == 502
    time.sleep(0.6)  # the cooldown is over
    trial = connect(url)
    trial.sendall(post("/v1/chat/completions", body.encode()))
    wait_for(lambda: len(chat_models(fakes)) == 3, "the trial upstream")
    early.close()  # the early attempt is cancelled: it releases the breaker, but holds no trial
    assert fakes.ollama.wait_for_disconnects(1) == 1
    refused = chat(url)
    trial.close()
    assert refused.status_code == 503 and "model in cooldown" in refused.text
    assert len(chat_models(fakes)) == 3


def _poll(call: Any, done: Any, attempts: int = 100) -> Any:
    import time

    result = call()
    for _ in range(attempts):
        if done(result):
            return result
        time.sleep(0.05)
        result = call()
    return result


def test_an_open_breaker_sends_requests_to_a_fallback_elsewhere(fakes: Fakes, tmp_path: Path) -> None:
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "primary", upstream="primary:1b", extra='fallbacks = ["acme/elsewhere"]'),
        model_toml("acme", "elsewhere", provider="openrouter", upstream="meta-llama/llama-3.3-70b-instruct:free"),
        header=BREAKER,
    )
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), load_catalogue(path))
    with serve_in_thread(app) as url:
        fakes.ollama.default = Reply(fault=Fault.status(500))
        for _ in range(2):  # each fails on Ollama and is answered by OpenRouter; the breaker opens
            assert chat(url).headers["x-modelgate-model"] == "acme/elsewhere"
        assert len(chat_models(fakes)) == 2
        response = chat(url)
        assert response.status_code == 200
        assert response.headers["x-modelgate-model"] == "acme/elsewhere"
        assert len(chat_models(fakes)) == 2  # the open breaker spared the failing provider a third call
        assert [r.json["model"] for r in fakes.openrouter.requests] == ["meta-llama/llama-3.3-70b-instruct:free"] * 3


ONE_FAILURE_EACH = """
[providers.{provider}]
max_retries = 0
breaker_threshold = 2
breaker_window = 60
breaker_cooldown = 600
"""


@pytest.mark.parametrize(
    ("provider", "failing", "working", "fault"),
    [
        # An OpenRouter :free model over its own rate limit.
        (
            "openrouter",
            "meta-llama/llama-3.3-70b-instruct:free",
            "deepseek/deepseek-chat:free",
            Fault.status(429, message="meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited upstream"),
        ),
        # One cold Hugging Face model (the router's 503 "currently loading").
        (
            "huggingface",
            "Qwen/Qwen2.5-72B-Instruct",
            "microsoft/Phi-3-mini-4k-instruct",
            Fault.status(503, message="Model Qwen/Qwen2.5-72B-Instruct is currently loading"),
        ),
    ],
)
def test_one_models_failures_open_its_own_breaker_not_its_providers(
    fakes: Fakes, tmp_path: Path, provider: str, failing: str, working: str, fault: Fault
) -> None:
    """Listed means callable: one model failing again and again cuts off that model (to its fallback), not the
    provider's others. Its failures used to open the provider's breaker, and the working model was refused."""
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "failing", provider=provider, upstream=failing, extra='fallbacks = ["acme/backup"]'),
        model_toml("acme", "working", provider=provider, upstream=working),
        model_toml("acme", "backup", upstream="backup:1b"),  # on Ollama
        header=ONE_FAILURE_EACH.format(provider=provider),
    )
    fake = fakes[provider]
    fake.by_model[failing] = Reply(fault=fault)
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), load_catalogue(path))

    def called(model: str) -> int:
        return sum(1 for r in fake.requests if r.json["model"] == model)

    with serve_in_thread(app) as url:
        for _ in range(2):  # each fails upstream and is answered by the fallback
            response = chat(url, "acme/failing")
            assert response.status_code == 200, response.text
            assert response.headers["x-modelgate-model"] == "acme/backup"
        assert called(failing) == 2

        # Its breaker is open: its next call goes straight to the fallback, without calling it.
        response = chat(url, "acme/failing")
        assert response.status_code == 200, response.text
        assert response.headers["x-modelgate-model"] == "acme/backup"
        assert called(failing) == 2

        # The provider's other model still answers, itself.
        for _ in range(3):
            response = chat(url, "acme/working")
            assert response.status_code == 200, response.text
            assert response.headers["x-modelgate-model"] == "acme/working"
            assert content(response) == "Hello, world!"
        assert called(working) == 3

        status = httpx.get(f"{url}/api/status").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert status["models"]["acme/failing"]["status"] == "down"
    assert "circuit open" in status["models"]["acme/failing"]["reason"]
    assert status["models"]["acme/working"]["status"] != "down"
    assert status["providers"][provider]["status"] != "down"
    assert f'model="acme/failing",outcome="circuit_open",provider="{provider}"}} 1.0' in metrics
    assert 'model="acme/working",outcome="circuit_open"' not in metrics


def two_ollama_models(tmp_path: Path) -> Path:
    """A catalogue of two Ollama models, ``acme/primary`` and ``acme/other``, whose breakers open at one failure."""
    return write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "primary", upstream="primary:1b"),
        model_toml("acme", "other", upstream="other:1b"),
        header=ONE_FAILURE_EACH.format(provider="ollama"),
    )


def test_a_fallback_on_the_same_provider_answering_does_not_keep_the_failing_model_open(
    fakes: Fakes, tmp_path: Path
) -> None:
    """The :free model's fallback is its paid twin on OpenRouter. With one breaker for both, every answer of the
    fallback reset the failures of the :free model, whose breaker never opened: each request paid its 429 first.
    (The 429 of the model's serving provider: OpenRouter's own free-models-per-* limits block every :free model at
    once, tests/test_account_blocks.py.)"""
    free, paid = "meta-llama/llama-3.3-70b-instruct:free", "meta-llama/llama-3.3-70b-instruct"
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "free", provider="openrouter", upstream=free, extra='fallbacks = ["acme/paid"]'),
        model_toml("acme", "paid", provider="openrouter", upstream=paid),
        header=ONE_FAILURE_EACH.format(provider="openrouter"),
    )
    fakes.openrouter.by_model[free] = Reply(fault=Fault.status(429, message="Provider returned error"))
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), load_catalogue(path))
    with serve_in_thread(app) as url:
        for _ in range(4):
            response = chat(url, "acme/free")
            assert response.status_code == 200, response.text
            assert response.headers["x-modelgate-model"] == "acme/paid"
    assert [r.json["model"] for r in fakes.openrouter.requests] == [free, paid, free, paid, paid, paid]


def test_a_refused_connection_opens_the_providers_breaker_for_every_model(tmp_path: Path) -> None:
    """No answer at all (nothing listens) is the provider's failure: its other models fail fast as well."""
    path = two_ollama_models(tmp_path)
    settings = Settings(base_url_overrides={"ollama": f"http://127.0.0.1:{free_port()}"}, probe_interval=0)
    with serve_in_thread(create_app(settings, load_catalogue(path))) as url:
        for _ in range(2):
            failed = chat(url, "acme/primary")
            assert failed.status_code == 502
            assert "unreachable" in failed.json()["error"]["message"]
        refused = chat(url, "acme/other")  # never called before, yet refused at once
        status = httpx.get(f"{url}/api/status").json()
        metrics = httpx.get(f"{url}/metrics").text
    assert refused.status_code == 503
    assert "provider in cooldown" in refused.json()["error"]["message"]
    assert 'model="acme/other",outcome="circuit_open",provider="ollama"} 1.0' in metrics
    assert 'model="acme/other",outcome="upstream_error"' not in metrics
    assert status["providers"]["ollama"]["status"] == "down"
    assert "circuit open" in status["providers"]["ollama"]["reason"]
    assert status["models"]["acme/other"]["status"] == "down"


#: Ollama's own text (server/sched.go ``ErrMaxQueue``), answered with a 503 (server/routes.go ``handleScheduleError``).
OLLAMA_SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def test_ollamas_server_busy_opens_the_providers_breaker_for_every_model(fakes: Fakes, tmp_path: Path) -> None:
    """Ollama's 503 "server busy" (server/sched.go ``ErrMaxQueue``: its one request queue, for all models, is full)
    is about the server, not the model: its other models are refused at once too, not sent to the busy server.
    It used to open only the one model's breaker."""
    path = two_ollama_models(tmp_path)
    fakes.ollama.by_model["primary:1b"] = Reply(fault=Fault.status(503, message=OLLAMA_SERVER_BUSY))
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0), load_catalogue(path))
    with serve_in_thread(app) as url:
        for _ in range(2):
            failed = chat(url, "acme/primary")
            assert failed.status_code == 503
            assert "server busy" in failed.json()["error"]["message"]
        refused = chat(url, "acme/other")  # never called before, yet refused at once
        status = httpx.get(f"{url}/api/status").json()
    assert refused.status_code == 503
    assert "provider in cooldown" in refused.json()["error"]["message"]
    assert chat_models(fakes) == ["primary:1b", "primary:1b"]
    assert status["providers"]["ollama"]["status"] == "down"


def test_another_ollama_503_stays_the_models() -> None:
    """Only the queue's own message is the whole server's; any other 503 body is read as the model's."""
    busy = ollama.read_error(503, json.dumps({"error": OLLAMA_SERVER_BUSY}).encode())
    other = ollama.read_error(503, json.dumps({"error": "account unavailable"}).encode())
    assert busy.provider_wide and not other.provider_wide


def test_an_unreachable_provider_is_retried_then_failed_over(fakes: Fakes, tmp_path: Path) -> None:
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "primary", upstream="primary:1b", extra='fallbacks = ["acme/elsewhere"]'),
        model_toml("acme", "elsewhere", provider="openrouter", upstream="meta-llama/llama-3.3-70b-instruct:free"),
        header=FAST_RETRIES,
    )
    overrides = fakes.settings_overrides()
    overrides["base_url_overrides"] = {**overrides["base_url_overrides"], "ollama": f"http://127.0.0.1:{free_port()}"}
    app = create_app(Settings(**overrides, probe_interval=0), load_catalogue(path))
    with serve_in_thread(app) as url:
        response = chat(url)
        metrics = httpx.get(f"{url}/metrics").text
    assert response.status_code == 200, response.text
    assert response.headers["x-modelgate-model"] == "acme/elsewhere"
    # Three attempts at the dead port (one try + two retries), then the fallback.
    assert 'model="acme/primary",outcome="upstream_error",provider="ollama"} 3.0' in metrics


@pytest.mark.parametrize(
    ("timeout", "stream", "message"),
    [
        ("first_token_timeout", True, "no reply within 0.3s (first-token timeout)"),
        ("whole_reply_timeout", False, "no whole reply within 0.3s (whole-reply timeout)"),
    ],
)
def test_a_timeout_is_retried_once(fakes: Fakes, serve: Any, timeout: str, stream: bool, message: str) -> None:
    url = serve(FAST_RETRIES + f"{timeout} = 0.3\n", fallbacks="[]")
    fakes.ollama.default = Reply(fault=Fault.slow_first(5))
    response = chat(url, stream=stream)
    assert response.status_code == 504
    assert message in response.text
    assert chat_models(fakes) == ["primary:1b"] * 2  # max_retries is 2, but a timeout gets one retry only


def test_a_fallback_also_serves_the_ai_sdk_route(fakes: Fakes, serve: Any) -> None:
    url = serve()
    fakes.ollama.script(*[Reply(fault=Fault.status(503))] * 3, Reply(tokens=["ok"]))
    response = httpx.post(f"{url}/api/ai/acme/primary/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.headers["x-modelgate-model"] == "acme/backup"
    assert '0:"ok"' in response.text
    assert chat_models(fakes) == ["primary:1b"] * 3 + ["backup:1b"]


def test_the_readme_section_matches_the_code() -> None:
    import re
    import tomllib

    from modelgate.catalogue import ModelEntry

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Retries, fallbacks, health, metrics and logs\n") :]
    found = re.search(r"```toml\n(.*?)```", section, re.S)
    assert found is not None
    example = tomllib.loads(found.group(1))
    entry = ProviderEntry.model_validate(example["providers"]["openrouter"])
    assert entry.max_retries == 2 and entry.breaker_cooldown == 15.0  # the defaults, as the README says
    assert ProviderEntry().model_dump() == entry.model_dump()
    assert set(example["models"][0]) <= set(ModelEntry.model_fields)
    env = {"MODELGATE_PROBE_INTERVAL": "5", "MODELGATE_CLIENT_BODY_TIMEOUT": "7", "MODELGATE_CLIENT_SEND_TIMEOUT": "9"}
    for variable in env:
        assert f"`{variable}`" in readme
    settings = Settings.from_env(env)
    assert (settings.probe_interval, settings.client_body_timeout, settings.client_send_timeout) == (5, 7, 9)
