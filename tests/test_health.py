"""``/health``, ``/ready``, ``/api/status``: the status rules, then real servers with the fake upstreams.

The probes must never bill anyone: every test that lets them run checks that the fakes received
listing calls only (no ``POST``, i.e. no generation).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.errors import UpstreamUnavailable
from modelgate.providers import ProbeResult
from modelgate.reload import reload_catalogue
from modelgate.resilience import BreakerConfig, Breakers
from modelgate.settings import Settings
from modelgate.status import DOWN_AFTER, MIN_SAMPLES, SLOW_TTFT, WINDOW, StatusBoard
from tests.catalogue_files import catalogue_toml, model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import FakeOllama, Fakes, Fault, Reply
from tests.redis_server import free_port, running_redis
from tests.servers import serve_in_thread

RWKV = "mollysama/rwkv-6-world:1.6b"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def board_setup(tmp_path: Path) -> tuple[StatusBoard, Clock, Any, Settings, Breakers]:
    clock = Clock()
    board = StatusBoard(clock=clock, wall=lambda: 1_700_000_000.0)
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("acme", "tiny", upstream="tiny:1b"),
            model_toml("acme", "big", upstream="big:70b"),
        )
    )
    return board, clock, catalogue, Settings(), Breakers(clock=clock)


def snapshot(setup: tuple[StatusBoard, Clock, Any, Settings, Breakers]) -> dict[str, Any]:
    board, _, catalogue, settings, breakers = setup
    return board.snapshot(catalogue, settings, breakers)


# --- the rules ------------------------------------------------------------------------------------


def test_nothing_seen_is_unknown_and_unchecked(board_setup: Any) -> None:
    status = snapshot(board_setup)
    assert status["providers"]["ollama"] == {
        "status": "unknown",
        "last_checked_at": None,
        "reason": "no evidence yet: no probe has answered and no request was sent",
        "requests": 0,
        "error_rate": None,
        "ttft_p50_ms": None,
    }
    assert status["models"]["acme/tiny"]["status"] == "unknown"
    assert status["models"]["acme/tiny"]["reason"].startswith("provider ollama is unknown: no evidence yet")
    assert status["status"] == "unknown"


def test_the_first_evidence_replaces_unknown(board_setup: Any) -> None:
    board, *_ = board_setup
    board.record_probe("ollama", ProbeResult(reachable=True, available_models=frozenset({"tiny:1b", "big:70b"})))
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "ok"
    assert {m["status"] for m in status["models"].values()} == {"ok"}
    assert status["status"] == "ok"


def test_traffic_is_evidence_too(board_setup: Any) -> None:
    board, *_ = board_setup
    board.record("ollama", "acme/tiny", ok=True, ttft=0.1)
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "ok"
    assert status["models"]["acme/tiny"]["status"] == "ok"
    # Its provider answered, so a model without traffic of its own is ok as far as anyone can tell.
    assert status["models"]["acme/big"]["status"] == "ok"


def test_overall_counts_unknown_providers_only_when_nothing_is_known(tmp_path: Path) -> None:
    board = StatusBoard(clock=Clock(), wall=lambda: 1_700_000_000.0)
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("acme", "tiny", upstream="tiny:1b"),
            model_toml("acme", "remote", provider="openrouter", upstream="acme/remote"),
        )
    )
    settings, breakers = Settings(credentials={"openrouter": {"OPENROUTER_API_KEY": "k"}}), Breakers()
    assert board.snapshot(catalogue, settings, breakers)["status"] == "unknown"
    board.record_probe("ollama", ProbeResult(reachable=True))
    assert board.snapshot(catalogue, settings, breakers)["status"] == "ok"  # openrouter not known to be unwell
    board.record_probe("ollama", ProbeResult(reachable=False, detail="refused"))
    assert board.snapshot(catalogue, settings, breakers)["status"] == "degraded"  # not known to be all down
    board.record_probe("openrouter", ProbeResult(reachable=False, detail="refused"))
    assert board.snapshot(catalogue, settings, breakers)["status"] == "down"


def test_missing_credentials_are_unconfigured(board_setup: Any) -> None:
    providers = snapshot(board_setup)["providers"]
    assert providers["openrouter"]["status"] == "unconfigured"
    assert providers["openrouter"]["reason"] == "set OPENROUTER_API_KEY"
    assert providers["cloudflare"]["reason"] == "set CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN"


def test_error_rate_degrades_then_the_window_forgets(board_setup: Any) -> None:
    board, clock, *_ = board_setup
    for i in range(MIN_SAMPLES * 2):
        board.record("ollama", "acme/tiny", ok=i % 3 != 0, ttft=0.2, reason="HTTP 503")
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "degraded"
    assert "4 of the last 10 attempts failed" in status["providers"]["ollama"]["reason"]
    assert status["models"]["acme/tiny"]["status"] == "degraded"
    assert status["models"]["acme/big"]["status"] == "degraded"  # through its provider
    assert status["providers"]["ollama"]["last_checked_at"] == "2023-11-14T22:13:20Z"
    clock.now += WINDOW + 1
    assert snapshot(board_setup)["providers"]["ollama"]["status"] == "ok"


def test_consecutive_failures_are_down_and_one_success_clears_them(board_setup: Any) -> None:
    board, *_ = board_setup
    for _ in range(DOWN_AFTER):
        board.record("ollama", "acme/tiny", ok=False, reason="ollama is unreachable (ConnectError)")
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "down"
    assert "ConnectError" in status["providers"]["ollama"]["reason"]
    assert status["models"]["acme/big"]["status"] == "down"
    assert status["status"] == "down"
    board.record("ollama", "acme/tiny", ok=True, ttft=0.1)
    assert snapshot(board_setup)["providers"]["ollama"]["status"] != "down"


def test_slow_first_tokens_degrade(board_setup: Any) -> None:
    board, *_ = board_setup
    for _ in range(3):
        board.record("ollama", "acme/tiny", ok=True, ttft=SLOW_TTFT + 1)
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "degraded"
    assert "median time to first token" in status["providers"]["ollama"]["reason"]


def test_an_open_breaker_is_down(board_setup: Any) -> None:
    _, _, _, _, breakers = board_setup
    b = breakers.get("ollama", BreakerConfig(threshold=1, cooldown=30))
    b.acquire()
    b.record_failure("HTTP 500")
    provider = snapshot(board_setup)["providers"]["ollama"]
    assert provider["status"] == "down" and "circuit open" in provider["reason"]


def test_an_open_model_breaker_is_that_models_down_only(board_setup: Any) -> None:
    _, _, _, _, breakers = board_setup
    call = breakers.for_model("ollama", "big:70b", BreakerConfig(threshold=1, cooldown=30))
    call.record_failure(UpstreamUnavailable("ollama", "server busy", upstream_status=503), call.acquire())
    status = snapshot(board_setup)
    assert status["models"]["acme/big"]["status"] == "down"
    assert "circuit open" in status["models"]["acme/big"]["reason"]
    assert "server busy" in status["models"]["acme/big"]["reason"]
    assert status["models"]["acme/tiny"]["status"] != "down"
    assert status["providers"]["ollama"]["status"] != "down"


def test_failures_one_model_answered_make_that_model_down_not_its_provider(board_setup: Any) -> None:
    board, *_ = board_setup
    for _ in range(DOWN_AFTER + 1):
        board.record("ollama", "acme/big", ok=False, reason="rate limited", provider_wide=False)
    status = snapshot(board_setup)
    assert status["models"]["acme/big"]["status"] == "down"
    assert status["providers"]["ollama"]["status"] != "down"
    assert status["models"]["acme/tiny"]["status"] != "down"
    # No answer at all is the provider's: a run of those makes it down, whichever model was called.
    for _ in range(DOWN_AFTER):
        board.record("ollama", "acme/big", ok=False, reason="unreachable (ClientConnectorError)")
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "down"
    assert "ClientConnectorError" in status["providers"]["ollama"]["reason"]


def test_a_failed_probe_is_down_until_a_probe_or_a_reply_succeeds(board_setup: Any) -> None:
    board, clock, *_ = board_setup
    board.record_probe("ollama", ProbeResult(reachable=False, detail="no answer within 5 s"))
    provider = snapshot(board_setup)["providers"]["ollama"]
    assert provider["status"] == "down" and provider["reason"] == "probe failed: no answer within 5 s"
    clock.now += 1
    board.record("ollama", "acme/tiny", ok=True, ttft=0.1)
    assert snapshot(board_setup)["providers"]["ollama"]["status"] == "ok"
    board.record_probe("ollama", ProbeResult(reachable=False))
    assert snapshot(board_setup)["providers"]["ollama"]["status"] == "down"
    board.record_probe("ollama", ProbeResult(reachable=True, available_models=frozenset({"tiny:1b", "big:70b"})))
    assert snapshot(board_setup)["providers"]["ollama"]["status"] == "ok"


def test_a_model_the_probe_did_not_find_is_down(board_setup: Any) -> None:
    board, *_ = board_setup
    board.record_probe("ollama", ProbeResult(reachable=True, available_models=frozenset({"tiny:1b"})))
    status = snapshot(board_setup)
    assert status["providers"]["ollama"]["status"] == "ok"
    assert status["models"]["acme/tiny"]["status"] == "ok"
    assert status["models"]["acme/big"] == {
        "provider": "ollama",
        "status": "down",
        "last_checked_at": "2023-11-14T22:13:20Z",
        "reason": "ollama does not list the model 'big:70b'",
    }
    assert status["status"] == "ok"


# --- /health and /ready ----------------------------------------------------------------------------


def test_health_is_always_ok() -> None:
    with serve_in_thread(create_app(Settings(probe_interval=0))) as url:
        response = httpx.get(f"{url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/health", "/ready", "/api/status", "/metrics"])
def test_probes_answer_head_as_get_without_the_body(path: str) -> None:
    """Uptime monitors and load balancers probe with HEAD: it was a 405 (FastAPI routes answer only GET)."""
    with serve_in_thread(create_app(Settings(probe_interval=0))) as url:
        head = httpx.head(f"{url}{path}")
        get = httpx.get(f"{url}{path}")
        schema = httpx.get(f"{url}/openapi.json").json()
    assert head.status_code == 200 == get.status_code
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["cache-control"] == "no-store"
    assert "head" not in schema["paths"].get(path, {})  # the HEAD twin stays out of the API's description


def test_ready_without_redis() -> None:
    with serve_in_thread(create_app(Settings(probe_interval=0))) as url:
        response = httpx.get(f"{url}/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "catalogue": True}


@pytest.mark.redis
def test_ready_follows_redis() -> None:
    with running_redis() as redis_url:
        app = create_app(Settings(redis_url=redis_url, probe_interval=0))
        with serve_in_thread(app) as url:
            assert httpx.get(f"{url}/ready").json() == {"status": "ready", "catalogue": True, "redis": True}


@pytest.mark.redis
@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        # A replica after a failover that pointed the service at the wrong node: every write is READONLY.
        (lambda r: r.replicaof("127.0.0.1", free_port()), "read only replica"),
        # Full, with nothing it may evict: every write is refused with OOM.
        (lambda r: r.config_set("maxmemory", 1) and r.config_set("maxmemory-policy", "noeviction"), "maxmemory"),
    ],
    ids=["read-only replica", "out of memory"],
)
def test_ready_is_503_when_redis_answers_but_refuses_writes(refusal: Callable[[Any], Any], reason: str) -> None:
    """Every chat request that counts a limit writes to Redis: a Redis that answers PING but takes no write serves
    none of them (503), and /ready must not call that ready."""
    import redis

    with running_redis() as redis_url:
        app = create_app(Settings(redis_url=redis_url, probe_interval=0))
        with serve_in_thread(app) as url, redis.Redis.from_url(redis_url) as admin:
            assert httpx.get(f"{url}/ready").status_code == 200
            refusal(admin)
            response = httpx.get(f"{url}/ready", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["data"] == {"catalogue": True, "redis": False}
    assert body["statusMessage"].startswith("Not ready: redis refuses writes")
    assert reason in body["statusMessage"]


def test_ready_is_503_when_redis_is_unreachable() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with serve_in_thread(create_app(Settings(redis_url=dead, probe_interval=0))) as url:
        response = httpx.get(f"{url}/ready", timeout=10)
    assert response.status_code == 503
    assert response.json() == {
        "statusCode": 503,
        "statusMessage": "Not ready: redis unreachable",
        "data": {"catalogue": True, "redis": False},
    }


# --- probes against the fakes ------------------------------------------------------------------------


def poll(url: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    """``/api/status`` until ``done`` says so (or ``timeout`` passes: the caller's assert then fails)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(f"{url}/api/status", timeout=5).json()
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def only_listings(fakes: Fakes) -> list[tuple[str, str, str]]:
    """What the fakes received besides listing GETs: must stay empty (a generation costs money)."""
    generations = [(fake.name, r.method, r.path) for fake in fakes.all() for r in fake.requests]
    return generations + [(f.name, r.method, r.path) for f in fakes.all() for r in f.listings if r.method != "GET"]


#: Providers with a free listing to probe (the TGI API of Hugging Face offers none).
PROBED = ("cloudflare", "openrouter", "ollama")


def test_probes_of_every_provider_are_free(fakes: Fakes) -> None:
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0.05))
    with serve_in_thread(app) as url:
        poll(url, lambda s: all(s["providers"][name]["last_checked_at"] for name in PROBED))
        rounds = len(fakes.ollama.listings)
        status = poll(url, lambda s: len(fakes.ollama.listings) >= rounds + 2)  # a few rounds more
    for name in PROBED:
        assert status["providers"][name]["status"] == "ok", status["providers"][name]
        assert status["providers"][name]["last_checked_at"] is not None
        assert fakes[name].listings, f"the {name} probe never ran"
    probed_models = {k: m for k, m in status["models"].items() if m["provider"] in PROBED}
    assert all(model["status"] == "ok" for model in probed_models.values()), status["models"]
    assert {r.path for r in fakes.ollama.listings} == {"/api/tags"}
    assert {r.path for r in fakes.openrouter.listings} == {"/api/v1/models"}
    assert only_listings(fakes) == []


def test_the_first_probe_runs_at_start(fakes: Fakes) -> None:
    # An hour between rounds: only the round at start can have answered.
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=3600))
    with serve_in_thread(app) as url:
        status = poll(url, lambda s: all(s["providers"][name]["status"] != "unknown" for name in PROBED))
    for name in PROBED:
        assert status["providers"][name]["status"] == "ok", status["providers"][name]
        assert len(fakes[name].listings) >= 1
    assert only_listings(fakes) == []


def test_before_any_evidence_a_provider_is_unknown_not_ok(fakes: Fakes) -> None:
    # Probes off and no request yet: nothing is known about the providers.
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0))
    with serve_in_thread(app) as url:
        status = httpx.get(f"{url}/api/status").json()
    assert status["status"] == "unknown"
    assert {name: p["status"] for name, p in status["providers"].items()} == dict.fromkeys(
        ("huggingface", "cloudflare", "openrouter", "ollama"), "unknown"
    )
    assert {m["status"] for m in status["models"].values()} == {"unknown"}


def test_an_ollama_that_is_not_running_is_down_not_ok(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("ollama", "rwkv", upstream=RWKV)))
    dead = f"http://127.0.0.1:{free_port()}"
    app = create_app(Settings(base_url_overrides={"ollama": dead}, probe_interval=3600), catalogue)
    with serve_in_thread(app) as url:
        status = poll(url, lambda s: s["providers"]["ollama"]["status"] != "unknown")
    assert status["providers"]["ollama"]["status"] == "down"
    assert status["providers"]["ollama"]["reason"].endswith("unreachable (ClientConnectorError)")
    assert status["models"]["ollama/rwkv"]["status"] == "down"


def test_a_model_missing_upstream_is_down_with_the_reason(fakes: Fakes) -> None:
    fakes.ollama.models = {"llama3.2:latest"}  # rwkv is not pulled
    # The round at start finds it: no need to wait an interval.
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=3600))
    with serve_in_thread(app) as url:
        status = poll(url, lambda s: s["models"]["ollama/rwkv-6-world"]["status"] == "down")
    assert status["models"]["ollama/rwkv-6-world"]["reason"] == f"ollama does not list the model '{RWKV}'"
    assert status["providers"]["ollama"]["status"] == "ok"
    assert only_listings(fakes) == []


def test_a_reload_probes_the_new_catalogue_at_once(fakes: Fakes, tmp_path: Path) -> None:
    rwkv = model_toml("ollama", "rwkv", upstream=RWKV)
    path = write_catalogue(tmp_path / "c.toml", rwkv)
    app = create_app(Settings(**fakes.settings_overrides(), config_path=path, probe_interval=3600))
    with serve_in_thread(app) as url:
        poll(url, lambda s: s["models"]["ollama/rwkv"]["status"] == "ok")
        assert fakes.openrouter.listings == []  # no model used it: never probed
        write_catalogue(path, rwkv, model_toml("acme", "gone", provider="openrouter", upstream="acme/gone:free"))
        app.state.gateway.reload()
        # An hour between rounds: only a round the reload started can have asked OpenRouter.
        status = poll(url, lambda s: s["models"].get("acme/gone", {}).get("status") == "down")
    assert status["models"]["acme/gone"]["reason"] == "openrouter does not list the model 'acme/gone:free'"
    assert only_listings(fakes) == []


def test_an_openai_instance_is_probed_at_start_and_a_model_it_does_not_list_is_down(
    fakes: Fakes, tmp_path: Path
) -> None:
    # Like llama.cpp's server, the fake lists its one model (and would answer any id with it).
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("local", "smol", provider="llama", upstream="HuggingFaceTB/SmolLM2-135M-Instruct"),
            model_toml("local", "ghost", provider="llama", upstream="not-served/ghost-7b"),
            header=f'[providers.llama]\nkind = "openai"\nbase_url = "{fakes.openai.url}"\n',
        )
    )
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=3600), catalogue)
    with serve_in_thread(app) as url:
        status = poll(url, lambda s: s["models"]["local/ghost"]["status"] == "down")
    assert status["models"]["local/ghost"]["reason"] == "llama does not list the model 'not-served/ghost-7b'"
    assert status["models"]["local/smol"]["status"] == "ok"
    assert status["providers"]["llama"]["status"] == "ok"
    assert {(r.method, r.path) for r in fakes.openai.listings} == {("GET", "/v1/models")}
    assert only_listings(fakes) == []


class SwitchableOllama(FakeOllama):
    """The Ollama fake whose listing can fail (500) or hang, switched from the test thread."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "up"
        self.release = threading.Event()

    async def tags(self, request: Request) -> Response:
        if self.mode == "error":
            await self.record(request, listing=True)
            return self.error(500)
        if self.mode == "hang":
            await self.record(request, listing=True)
            await asyncio.to_thread(self.release.wait, 30)  # set from the test thread
        return await super().tags(request)


@pytest.fixture
def switchable(tmp_path: Path) -> Iterator[tuple[SwitchableOllama, Settings, Any]]:
    fake = SwitchableOllama()
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("ollama", "rwkv", upstream=RWKV),
            header="[providers.ollama]\nprobe_timeout = 0.3\n",
        )
    )
    with serve_in_thread(fake.app) as root:
        try:
            yield fake, Settings(base_url_overrides={"ollama": root}, probe_interval=0.05), catalogue
        finally:
            fake.release.set()  # before the server stops, or its shutdown waits for the hung listing


def test_a_provider_going_down_and_coming_back(switchable: tuple[SwitchableOllama, Settings, Any]) -> None:
    fake, settings, catalogue = switchable
    with serve_in_thread(create_app(settings, catalogue)) as url:
        assert poll(url, lambda s: s["providers"]["ollama"]["last_checked_at"] is not None)["status"] == "ok"

        fake.mode = "error"
        status = poll(url, lambda s: s["providers"]["ollama"]["status"] == "down")
        assert status["providers"]["ollama"]["status"] == "down"
        assert status["providers"]["ollama"]["reason"].startswith("probe failed: ")
        assert "status 500" in status["providers"]["ollama"]["reason"]
        assert status["models"]["ollama/rwkv"]["status"] == "down"

        fake.mode = "up"
        status = poll(url, lambda s: s["providers"]["ollama"]["status"] == "ok")
        assert status["providers"]["ollama"]["status"] == "ok"
        assert status["models"]["ollama/rwkv"]["status"] == "ok"
    assert fake.listings and {(r.method, r.path) for r in fake.listings} == {("GET", "/api/tags")}
    assert fake.requests == []


def test_a_successful_probe_closes_an_open_breaker(tmp_path: Path) -> None:
    fake = SwitchableOllama()
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("ollama", "rwkv", upstream=RWKV),
            # A cooldown far longer than the test: only a probe can close the breaker in time.
            header="[providers.ollama]\nmax_retries = 0\nbreaker_threshold = 1\nbreaker_cooldown = 3600\n",
        )
    )
    body = {"model": "ollama/rwkv", "messages": [{"role": "user", "content": "hi"}]}
    port = free_port()
    # Nothing listens yet: the call gets no answer at all, which is the provider's failure (the probes fail too).
    settings = Settings(base_url_overrides={"ollama": f"http://127.0.0.1:{port}"}, probe_interval=0.05)
    with serve_in_thread(create_app(settings, catalogue)) as url:
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 502
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert refused.status_code == 503
        assert "provider in cooldown" in refused.json()["error"]["message"]

        with serve_in_thread(fake.app, port=port):  # the server is back and answers its listing
            poll(url, lambda s: s["providers"]["ollama"]["status"] == "ok")
            answered = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"]
    assert len(fake.requests) == 1  # the refused call never reached it


def test_a_probe_leaves_a_models_open_breaker_alone(fakes: Fakes, tmp_path: Path) -> None:
    """The listing answering says the provider is up, not that a model over its rate limit or still loading is."""
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("ollama", "rwkv", upstream=RWKV),
            header="[providers.ollama]\nmax_retries = 0\nbreaker_threshold = 1\nbreaker_cooldown = 3600\n",
        )
    )
    fakes.ollama.script(Reply(fault=Fault.status(500, message="llama runner process has terminated")))
    body = {"model": "ollama/rwkv", "messages": [{"role": "user", "content": "hi"}]}
    settings = Settings(**fakes.settings_overrides(), probe_interval=0.05)
    with serve_in_thread(create_app(settings, catalogue)) as url:
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 502
        listings = len(fakes.ollama.listings)
        wait_for(lambda: len(fakes.ollama.listings) >= listings + 2, "two more probes")
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        status = poll(url, lambda s: s["providers"]["ollama"]["last_checked_at"] is not None)
    assert refused.status_code == 503
    assert "model in cooldown" in refused.json()["error"]["message"]
    assert len(fakes.ollama.requests) == 1
    assert status["providers"]["ollama"]["status"] == "ok"
    assert status["models"]["ollama/rwkv"]["status"] == "down"
    assert "circuit open" in status["models"]["ollama/rwkv"]["reason"]


def test_one_model_failing_is_reported_down_alone(fakes: Fakes, tmp_path: Path) -> None:
    """Ollama answers each call of one model with a 503: that model is down, not Ollama nor its other model (the
    provider's run of failed attempts counted these, and its "down" took every model of it along)."""
    catalogue = load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("acme", "tiny", upstream="tiny:1b"),
            model_toml("acme", "big", upstream="big:70b"),
            header="[providers.ollama]\nmax_retries = 0\nbreaker_threshold = 50\n",
        )
    )
    fakes.ollama.by_model["big:70b"] = Reply(fault=Fault.status(503, message="server busy"))
    body = {"model": "acme/big", "messages": [{"role": "user", "content": "hi"}]}
    with serve_in_thread(create_app(Settings(**fakes.settings_overrides(), probe_interval=0), catalogue)) as url:
        for _ in range(DOWN_AFTER + 1):
            assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 503
        status = httpx.get(f"{url}/api/status").json()
    assert status["models"]["acme/big"]["status"] == "down"
    assert "server busy" in status["models"]["acme/big"]["reason"]
    assert status["providers"]["ollama"]["status"] != "down"
    assert status["models"]["acme/tiny"]["status"] != "down"


def test_a_hanging_probe_hits_its_deadline_and_never_holds_a_request(
    switchable: tuple[SwitchableOllama, Settings, Any],
) -> None:
    fake, settings, catalogue = switchable
    fake.mode = "hang"
    with serve_in_thread(create_app(settings, catalogue)) as url:
        # While a probe hangs upstream, status and health answer at once from what is known.
        deadline = time.monotonic() + 10
        while not fake.listings and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.listings, "no probe was sent"
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        status = poll(url, lambda s: s["providers"]["ollama"]["status"] == "down")
    assert status["providers"]["ollama"]["reason"] == "probe failed: no answer within 0.3 s"
    assert {(r.method, r.path) for r in fake.listings} == {("GET", "/api/tags")}


def test_probes_are_off_with_interval_zero(fakes: Fakes) -> None:
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0))
    with serve_in_thread(app) as url:
        time.sleep(0.2)
        status = httpx.get(f"{url}/api/status").json()
    assert status["providers"]["ollama"]["last_checked_at"] is None
    assert all(not fake.requests and not fake.listings for fake in fakes.all())


def test_status_reasons_never_show_a_credential(fakes: Fakes, tmp_path: Path) -> None:
    # A listing error that echoes our key back must reach /api/status scrubbed.
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)
    app = create_app(settings)
    state = app.state.gateway
    key = settings.credentials["openrouter"]["OPENROUTER_API_KEY"]
    state.status.record_probe("openrouter", ProbeResult(reachable=False, detail=f"refused key {key}"))
    with serve_in_thread(app) as url:
        body = httpx.get(f"{url}/api/status").text
    assert key not in body and "[REDACTED]" in body


def test_the_public_status_never_quotes_a_replys_bytes(hostile: Any, hostile_openai_service: str) -> None:
    """Found in review: a failure's reason on ``/api/status`` (public unless MODELGATE_PRIVATE_OPS) quoted up to 120
    characters of the upstream's unreadable chunk, a model's output that may echo its caller's prompt. The reason says
    what failed and how many bytes; the caller's own error still quotes them."""
    from tests.fakes.hostile import response_head

    echo = b'data: {"choices": [{"delta": {"content": "PROMPT-ECHO-4711 my card number is\n\n'

    async def broken(_: Any) -> Any:
        yield response_head(200, {"Content-Type": "text/event-stream"}) + echo

    hostile.reset(broken)
    body = {"model": "h/m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    for _ in range(DOWN_AFTER):  # enough failures for the reason to be shown
        answer = httpx.post(hostile_openai_service + "/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 502 and "PROMPT-ECHO-4711" in answer.text  # the caller's own reply
    status = httpx.get(hostile_openai_service + "/api/status", timeout=10).json()
    # A broken reply is the model's failure (its provider answered), so the model is down, not the provider.
    model = status["models"]["h/m"]
    assert model["status"] == "down"
    assert "unreadable stream chunk" in model["reason"] and f"({len(echo) - 8} bytes)" in model["reason"]
    assert "PROMPT-ECHO" not in json.dumps(status)


def test_reloads_with_new_names_leave_only_the_current_catalogues_records(fakes: Fakes, tmp_path: Path) -> None:
    """Each catalogue names a provider instance and a model never seen before, and serves traffic (a success, and a
    503 the model's breaker counts): the health records and the breakers of the ones before it are forgotten at the
    reload, where they piled up with every catalogue served since start."""
    path = tmp_path / "c.toml"
    rounds = 12

    def catalogue(index: int) -> str:
        header = f'[providers.p{index}]\nkind = "openai"\nbase_url = "{fakes.openai.url}"\n'
        model = model_toml("acme", f"m{index}", provider=f"p{index}", upstream=f"up-{index}")
        return catalogue_toml(model, header=header)

    path.write_text(catalogue(0), encoding="utf-8")
    app = create_app(Settings(**fakes.settings_overrides(), config_path=path, probe_interval=3600))
    state = app.state.gateway
    with serve_in_thread(app) as url:
        for index in range(rounds):
            if index:
                path.write_text(catalogue(index), encoding="utf-8")
                assert reload_catalogue(state, "test")
            fakes.openai.script(Reply(), Reply(fault=Fault.status(503, message="loading")))
            body = {"model": f"acme/m{index}", "messages": [{"role": "user", "content": "Hi"}]}
            assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code == 200
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)  # the 503, retried: a failure or two
        status = httpx.get(f"{url}/api/status", timeout=5).json()
    last = f"p{rounds - 1}"
    assert list(status["models"]) == [f"acme/m{rounds - 1}"]
    assert list(status["providers"]) == ["huggingface", "cloudflare", "openrouter", "ollama", last]
    assert status["providers"][last]["requests"] >= 2
    board, breakers = state.status, state.breakers
    assert set(board._models) == {f"acme/m{rounds - 1}"}
    assert set(board._providers) == {last}
    assert set(board._probes) <= {last}
    assert set(breakers._breakers) == {last}
    assert set(breakers._models) == {(last, f"up-{rounds - 1}")}
