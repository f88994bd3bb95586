"""An upstream's refusal of the whole account (out of credits, a daily quota used up) blocks every model it holds
for at once: end to end through a real server and the fakes answering as each service does, then the breakers.

Each scenario has a model of the refused account with a sibling fallback on the same provider, then a fallback on
Ollama: the sibling must not be called while the account is blocked, and the Ollama model must serve.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.errors import ALL_MODELS, UpstreamError
from modelgate.providers import openrouter
from modelgate.providers.openrouter import OpenRouter
from modelgate.resilience import BreakerConfig, Breakers, BreakerState, CircuitOpen
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.fakes import Fakes, FakeUpstream
from tests.servers import serve_in_thread


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def called(fake: FakeUpstream) -> list[str]:
    """The models a fake was asked for, in order (its chat calls only, not its listings)."""
    return [r.json["model"] for r in fake.requests if isinstance(r.json, dict) and "model" in r.json]


def account_catalogue(tmp_path: Path, provider: str, refused: str, sibling: str, *more: str) -> Path:
    """``acme/refused`` (falling back to ``acme/sibling`` on the same provider, then ``acme/backup`` on Ollama),
    ``acme/sibling`` without a fallback, ``more`` models, and the provider's default breaker settings (threshold 5,
    two retries)."""
    return write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml(
            "acme", "refused", provider=provider, upstream=refused, extra='fallbacks = ["acme/sibling", "acme/backup"]'
        ),
        model_toml("acme", "sibling", provider=provider, upstream=sibling),
        model_toml("acme", "backup", upstream="backup:1b"),
        *more,
    )


@dataclass
class Blocked:
    """What a scenario's server answered: the request to ``acme/sibling`` (the blocked model, no fallback), the
    ``also`` requests, and ``/api/status`` after them."""

    refused: httpx.Response
    status: dict[str, Any]
    also: list[httpx.Response]


def run_blocked(path: Path, settings: Settings, *also: str) -> Blocked:
    """Runs the scenario of ``account_catalogue`` on a real server: two requests to ``acme/refused``, which its
    Ollama backup must serve (its same-provider sibling skipped), then ``acme/sibling``, then the ``also`` models."""
    app = create_app(settings, load_catalogue(path))
    with serve_in_thread(app) as url:
        served = [chat(url, "acme/refused") for _ in range(2)]
        refused = chat(url, "acme/sibling")
        answered = [chat(url, model) for model in also]
        status = httpx.get(f"{url}/api/status").json()
    for response in served:
        assert response.status_code == 200, response.text
        assert response.headers["x-modelgate-model"] == "acme/backup"
    return Blocked(refused, status, answered)


def test_an_openrouter_account_out_of_credits_blocks_all_its_models(fakes: Fakes, tmp_path: Path) -> None:
    """OpenRouter's 402 "Insufficient credits" (``limit_source: openrouter_credits``) refuses every model of the
    account, ``:free`` ones included (api_reference/limits.mdx). It used to count against neither breaker: each
    request called the model, then its sibling, each answering 402."""
    paid, sibling = "meta-llama/llama-3.3-70b-instruct", "deepseek/deepseek-chat:free"
    path = account_catalogue(tmp_path, "openrouter", paid, sibling)
    fakes.openrouter.out_of_credits = True
    blocked = run_blocked(path, Settings(**fakes.settings_overrides(), probe_interval=0))
    refused = blocked.refused
    status = blocked.status
    assert called(fakes.openrouter) == [paid]  # once: the sibling, and the next request, were not sent to it
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    message = refused.json()["error"]["message"]
    assert "every model blocked" in message and "the account is out of credits" in message
    assert status["providers"]["openrouter"]["status"] == "down"
    assert "out of credits" in status["providers"]["openrouter"]["reason"]
    assert status["models"]["acme/sibling"]["status"] == "down"
    assert status["models"]["acme/backup"]["status"] == "ok"


def test_openrouters_daily_free_quota_blocks_its_free_models_not_its_paid_ones(fakes: Fakes, tmp_path: Path) -> None:
    """OpenRouter's 429 "free-models-per-day" is the account's quota for all its ``:free`` models together ("not per
    model", guides/routing/model-variants/free), reset at 00:00 UTC (its X-RateLimit-Reset): the other ``:free``
    models are blocked until then, the paid ones still answer. It used to count against the one model: each
    request called the ``:free`` model, then its ``:free`` sibling, and the 429 was retried."""
    free, sibling, paid = ("meta-llama/llama-3.3-70b-instruct:free", "deepseek/deepseek-chat:free", "openai/gpt-4o")
    path = account_catalogue(
        tmp_path, "openrouter", free, sibling, model_toml("acme", "paid", provider="openrouter", upstream=paid)
    )
    fakes.openrouter.free_requests_left = 0
    blocked = run_blocked(path, Settings(**fakes.settings_overrides(), probe_interval=0), "acme/paid")
    refused = blocked.refused
    status = blocked.status
    (answered,) = blocked.also
    assert answered.status_code == 200 and answered.headers["x-modelgate-model"] == "acme/paid"
    assert called(fakes.openrouter) == [free, paid]  # one :free call, then none until the reset
    assert refused.status_code == 503
    until_midnight = 86_400 - time.time() % 86_400  # the rest of the UTC day, as its X-RateLimit-Reset said
    assert abs(int(refused.headers["Retry-After"]) - until_midnight) < 30
    message = refused.json()["error"]["message"]
    assert "its :free models blocked" in message and "free-models-per-day" in message
    assert status["providers"]["openrouter"]["status"] != "down"
    assert status["models"]["acme/sibling"]["status"] == "down"
    assert ":free models blocked" in status["models"]["acme/sibling"]["reason"]
    assert status["models"]["acme/paid"]["status"] == "ok"


def test_hugging_faces_monthly_credits_used_up_block_all_its_models(fakes: Fakes, tmp_path: Path) -> None:
    """The router's 402 once the account's monthly included credits are spent refuses every routed model alike
    (hub-docs inference-providers/pricing.md: the credits are the account's, "shared among all members" of an
    organisation). It used to count against neither breaker, and each request called every Hugging Face model."""
    model, sibling = "Qwen/Qwen2.5-72B-Instruct", "google/gemma-2-27b-it"
    path = account_catalogue(tmp_path, "huggingface", model, sibling)
    fakes.huggingface.credits_used_up = True
    blocked = run_blocked(path, Settings(**fakes.settings_overrides(), probe_interval=0))
    refused = blocked.refused
    status = blocked.status
    assert called(fakes.huggingface) == [model]
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    message = refused.json()["error"]["message"]
    assert "every model blocked" in message and "monthly included credits" in message
    assert status["providers"]["huggingface"]["status"] == "down"
    assert status["models"]["acme/sibling"]["status"] == "down"


def test_cloudflares_daily_allocation_used_up_blocks_all_its_models_until_midnight_utc(
    fakes: Fakes, tmp_path: Path
) -> None:
    """Workers AI's "daily free allocation of 10,000 neurons" (3036, now 4006) is the account's, for every model,
    and "All limits reset daily at 00:00 UTC" (workers-ai/platform/pricing). It was counted against the one model,
    and each request called every Workers AI model in turn."""
    model, sibling = "@cf/meta/llama-3.3-70b-instruct-fp8-fast", "@cf/meta/llama-3.1-8b-instruct"
    path = account_catalogue(tmp_path, "cloudflare", model, sibling)
    fakes.cloudflare.neurons_used_up = True
    blocked = run_blocked(path, Settings(**fakes.settings_overrides(), probe_interval=0))
    refused = blocked.refused
    status = blocked.status
    assert [r.path.rsplit("/ai/run/", 1)[-1] for r in fakes.cloudflare.requests] == [model]
    assert refused.status_code == 503
    until_midnight = 86_400 - time.time() % 86_400
    assert abs(int(refused.headers["Retry-After"]) - until_midnight) < 30
    assert "daily free allocation" in refused.json()["error"]["message"]
    assert status["providers"]["cloudflare"]["status"] == "down"
    assert status["models"]["acme/sibling"]["status"] == "down"


def test_refused_credentials_block_all_the_providers_models(fakes: Fakes, tmp_path: Path) -> None:
    """A 401 refuses the key, whichever model it asks for (OpenRouter's errors-and-debugging: "401: Invalid
    credentials (OAuth session expired, disabled/invalid API key)"). It counted against neither breaker: every
    request called each model of the provider, each answering 401."""
    model, sibling = "meta-llama/llama-3.3-70b-instruct", "deepseek/deepseek-chat:free"
    path = account_catalogue(tmp_path, "openrouter", model, sibling)
    overrides = fakes.settings_overrides()
    overrides["credentials"]["openrouter"] = {"OPENROUTER_API_KEY": "sk-or-revoked"}
    blocked = run_blocked(path, Settings(**overrides, probe_interval=0))
    refused = blocked.refused
    status = blocked.status
    assert called(fakes.openrouter) == [model]
    assert refused.status_code == 503
    message = refused.json()["error"]["message"]
    assert "every model blocked" in message and "credentials were refused" in message
    assert "check OPENROUTER_API_KEY" in message and "sk-or-revoked" not in message
    assert status["providers"]["openrouter"]["status"] == "down"


def test_a_cloudflare_account_blocked_blocks_all_its_models(fakes: Fakes, tmp_path: Path) -> None:
    """Workers AI's "Account blocked" (3023, HTTP 403, "Service unavailable for account": workers-ai/platform/errors)
    refuses the account, whichever model. A 403 counted against neither breaker: each model was called in turn."""
    model, sibling = "@cf/meta/llama-3.3-70b-instruct-fp8-fast", "@cf/meta/llama-3.1-8b-instruct"
    path = account_catalogue(tmp_path, "cloudflare", model, sibling)
    fakes.cloudflare.account_blocked = True
    blocked = run_blocked(path, Settings(**fakes.settings_overrides(), probe_interval=0))
    refused = blocked.refused
    assert [r.path.rsplit("/ai/run/", 1)[-1] for r in fakes.cloudflare.requests] == [model]
    assert refused.status_code == 503
    assert "3023" in refused.json()["error"]["message"] and "account" in refused.json()["error"]["message"]


def test_a_block_holds_for_the_upstreams_reset_and_a_probe_does_not_end_it() -> None:
    clock = FakeClock()
    breakers = Breakers(clock)
    call = breakers.for_model("or", "a", BreakerConfig(threshold=5, cooldown=15.0))
    refusal = UpstreamError("or", "payment required (HTTP 402): the account is out of credits", retry_after=3600)
    refusal.account_block = ALL_MODELS
    call.record_failure(refusal, call.acquire())
    other = breakers.for_model("or", "b", BreakerConfig(threshold=5, cooldown=15.0))
    clock.now += 60  # past the cooldown, well before the reset
    with pytest.raises(CircuitOpen) as refused:  # the account's other model is not let through
        other.acquire()
    assert refused.value.retry_after == 3540 and "the account is out of credits" in refused.value.message
    breakers.probe_succeeded("or")  # the listing answers: it says nothing about the account's credits
    call.record_success()  # an attempt that began before the block answers now: neither does it
    assert call.provider.state is BreakerState.OPEN and call.provider.is_open()
    clock.now += 3600
    trial = other.acquire()  # the reset passed: one trial
    assert trial.provider is not None
    other.record_success()
    assert call.provider.state is BreakerState.CLOSED and call.provider.blocked is None


def test_a_trial_out_when_the_account_is_blocked_does_not_hold_the_breaker_shut_after_the_reset() -> None:
    """A half-open trial that answers while a block (from an attempt begun earlier) holds says nothing of the
    account; but it must not stay the breaker's trial: once the reset passed, the next call is let through."""
    clock = FakeClock()
    breakers = Breakers(clock)
    config = BreakerConfig(threshold=1, cooldown=15.0)
    earlier = breakers.for_model("or", "a", config)
    earlier_passage = earlier.acquire()  # begun while the provider's breaker is closed
    later = breakers.for_model("or", "b", config)
    dropped = UpstreamError("or", "connection refused")
    dropped.connection_failed = True
    later.record_failure(dropped, later.acquire())  # the provider's breaker opens
    clock.now += 20
    trial_passage = later.acquire()  # past the cooldown: the half-open trial
    assert trial_passage.provider is not None
    refusal = UpstreamError("or", "payment required (HTTP 402): the account is out of credits", retry_after=60)
    refusal.account_block = ALL_MODELS
    earlier.record_failure(refusal, earlier_passage)  # the earlier attempt: the account is refused
    later.record_success()  # the trial answers during the block: ignored
    clock.now += 61
    assert later.acquire().provider is not None  # the reset passed: a new trial, not "in cooldown" for ever


def openrouter_402(message: str, **metadata: str) -> bytes:
    return json.dumps({"error": {"code": 402, "message": message, "metadata": metadata}}).encode()


def test_an_openrouter_402_about_the_request_alone_blocks_nothing() -> None:
    """A request too big for what is left (a smaller one, or a cheaper model, passes) and the in-flight budget
    (settled within its Retry-After) are not the account's refusal (api_reference/limits.mdx, "Handling 402")."""
    about_the_request = [
        openrouter_402(
            "This request requires more credits, or fewer max_tokens. You requested up to 64000 tokens, but can only "
            "afford 2666. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account"
        ),
        openrouter_402("Too expensive", reason="weight_exceeds_budget", limit_source="openrouter_credits"),
        openrouter_402(
            "This request would exceed your available credits given your current in-flight requests.",
            reason="in_flight_budget_exhausted",
            limit_source="openrouter_in_flight_budget",
        ),
    ]
    for body in about_the_request:
        assert openrouter.read_error(402, body).account_block is None
    for body in (
        openrouter_402("Insufficient credits. Add more using https://openrouter.ai/settings/credits"),
        openrouter_402("Key limit exceeded (total limit).", limit_source="openrouter_key_limit"),
        openrouter_402("You requested up to 32000 tokens, but can only afford 0."),
    ):
        assert openrouter.read_error(402, body).account_block == ALL_MODELS


def test_only_openrouters_own_free_limits_block_the_free_pool() -> None:
    """Its free-models-per-min and -per-day limits are the account's; a serving provider's 429 is the model's."""

    def rate_limited(message: str, **extra: object) -> bytes:
        return json.dumps({"error": {"code": 429, "message": message, **extra}}).encode()

    per_minute = openrouter.read_error(429, rate_limited("Rate limit exceeded: free-models-per-min."))
    per_day = openrouter.read_error(429, rate_limited("Rate limit exceeded: free-models-per-day-high-balance."))
    serving = openrouter.read_error(
        429, rate_limited("Provider returned error", metadata={"provider_name": "Chutes", "raw": "busy"})
    )
    assert per_minute.account_block == per_day.account_block == ":free" and serving.account_block is None
    assert per_minute.retry_after is None  # its reset unsaid: the breaker's cooldown
    assert per_day.retry_after is not None and 0 < per_day.retry_after <= 86_400  # 00:00 UTC
    assert OpenRouter.quota_pool("deepseek/deepseek-chat:free") == ":free"
    assert OpenRouter.quota_pool("openai/gpt-4o") is None


@pytest.mark.parametrize("reset", [10**15, "1e30", "inf"])
def test_a_far_off_reset_blocks_no_longer_than_what_it_is_for(reset: object) -> None:
    """A hostile (or broken) ``X-RateLimit-Reset`` years ahead blocked the account for a day, the cap of any reset:
    every ``:free`` model for a day on a per-minute limit, every model on a 402, which waits for the breaker's
    cooldown (credits can be added any time). The per-minute limit's block lasts a minute at most, the 402's its
    cooldown; the daily limit's, the day it is for."""
    headers = {"X-RateLimit-Reset": reset}

    def refused(status: int, message: str) -> bytes:
        return json.dumps({"error": {"code": status, "message": message, "metadata": {"headers": headers}}}).encode()

    per_minute = openrouter.read_error(429, refused(429, "Rate limit exceeded: free-models-per-min."))
    per_day = openrouter.read_error(429, refused(429, "Rate limit exceeded: free-models-per-day"))
    credits = openrouter.read_error(402, refused(402, "Insufficient credits"))
    assert per_minute.account_block == ":free" and per_minute.retry_after == 60
    assert per_day.retry_after is not None and 0 < per_day.retry_after <= 86_400
    assert credits.account_block == ALL_MODELS and credits.retry_after is None
