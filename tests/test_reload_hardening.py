"""Catalogue reloads and the process lifecycle, driven from outside as an operator would.

Each test reproduces a defect an operator hit: a reload mid-stream repriced (or unpriced) the stream's ledger row;
a Kubernetes ConfigMap update (a symlink swapped, the old directory removed) was never reloaded, by SIGHUP or by
the watch; a request sent on a keep-alive connection as a shutdown began was lost, in every SIGHUP rolling
restart; a burst of SIGHUPs was as many rolling restarts; a SIGTERM during a rolling restart waited for it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.catalogue_files import catalogue_toml, model_toml, write_catalogue
from tests.cli_process import Served, serve_subprocess, wait_for
from tests.fakes import Fakes, Reply
from tests.raw_http import connect, read_response, request_head
from tests.servers import serve_in_thread
from tests.test_ledger import ledger_rows
from tests.test_reload import served_models
from tests.test_shutdown import refused

CHAT = "/api/ai/ollama/tiny/chat"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}


# --- a reload while a stream runs ----------------------------------------------------------------------


def test_a_reload_mid_stream_leaves_the_stream_its_catalogue_and_its_ledger_row_its_price(
    fakes: Fakes, tmp_path: Path
) -> None:
    path = write_catalogue(
        tmp_path / "catalogue.toml", model_toml("acme", "tiny", extra="[models.pricing]\ninput = 1\noutput = 2\n")
    )
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    settings = Settings(**fakes.settings_overrides(), config_path=path, database_url=database, probe_interval=0)
    fakes.ollama.script(Reply(tokens=["a"] * 10, delay=0.1, usage=(10, 20)))
    app = create_app(settings)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", CHAT, json=BODY, headers={"X-Request-ID": "mid-reload"}) as response:
            chunks = response.iter_raw()
            body = next(chunks)
            # The model is renamed (and so unpriced) while its reply runs.
            write_catalogue(path, model_toml("acme", "renamed"))
            app.state.gateway.reload()
            body += b"".join(chunks)
        assert served_models(url) == ["acme/renamed"]
        assert b"\n3:" not in body and b'd:{"finishReason":"stop"' in body
        client.get("/api/usage")  # flushes the ledger
    (row,) = ledger_rows(database)
    assert (row["model"], row["outcome"], row["prompt_tokens"], row["completion_tokens"]) == ("acme/tiny", "ok", 10, 20)
    assert row["cost"] == pytest.approx((10 * 1 + 20 * 2) / 1e6)  # the price it started with, not none


# --- a ConfigMap update: the symlink swapped, the old directory removed ---------------------------------


def configmap_update(mount: Path, version: str, text: str) -> None:
    """What the kubelet does to a mounted ConfigMap: the files in a new directory, ``..data`` re-pointed to it
    in one rename, the old directory removed; ``catalogue.toml`` is a symlink through ``..data``."""
    new = mount / f"..{version}"
    new.mkdir()
    (new / "catalogue.toml").write_text(text, encoding="utf-8")
    data = mount / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(new.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", data)
    if not (mount / "catalogue.toml").is_symlink():
        os.symlink("..data/catalogue.toml", mount / "catalogue.toml")
    if old is not None:
        shutil.rmtree(mount / old)


def configmap(tmp_path: Path, *models: str) -> Path:
    mount = tmp_path / "config"
    mount.mkdir()
    configmap_update(mount, "v1", catalogue_toml(*models))
    return mount / "catalogue.toml"


def test_sighup_reloads_a_configmap_update(tmp_path: Path) -> None:
    path = configmap(tmp_path, model_toml("acme", "one"))
    with serve_subprocess(["--config", str(path)], tmp_path) as served:
        assert served_models(served.url) == ["acme/one"]
        configmap_update(path.parent, "v2", catalogue_toml(model_toml("acme", "two")))
        served.signal(signal.SIGHUP)
        # It read the file the old symlink led to, gone with its directory: "file not found", for good.
        wait_for(lambda: served_models(served.url) == ["acme/two"], "the updated ConfigMap to be served")
        assert "reload (SIGHUP) failed" not in served.log()


def test_the_watch_follows_configmap_updates(tmp_path: Path) -> None:
    path = configmap(tmp_path, model_toml("acme", "one"))
    settings = Settings(config_path=path, watch_config=True, probe_interval=0, database_url=None)
    with serve_in_thread(create_app(settings)) as url:
        time.sleep(0.5)  # the watcher starts
        configmap_update(path.parent, "v2", catalogue_toml(model_toml("acme", "two")))
        wait_for(lambda: served_models(url) == ["acme/two"], "the first update", timeout=10)
        time.sleep(0.5)  # a second update is seen too: the watch moved to where the symlinks lead now
        configmap_update(path.parent, "v3", catalogue_toml(model_toml("acme", "three")))
        wait_for(lambda: served_models(url) == ["acme/three"], "the second update", timeout=10)


# --- shutdown and the SIGHUP rolling restart ----------------------------------------------------------------


def test_a_request_on_a_keep_alive_connection_as_the_shutdown_begins_is_answered(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    with serve_subprocess(["--config", str(path)], tmp_path) as served:
        sock = connect(served.url)
        try:
            sock.sendall(request_head("GET", "/models"))
            assert read_response(sock)[0] == 200
            served.signal(signal.SIGTERM)
            wait_for(lambda: refused(served.url), "the shutdown to begin")
            # Its client sent it before it could know: it was lost (the connection closed, unanswered).
            sock.sendall(request_head("GET", "/models"))
            status, headers, _ = read_response(sock)
        finally:
            sock.close()
        assert status == 200 and headers["connection"] == "close"
        served.process.wait(timeout=30)


def chat_body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True}


async def steady_models_load(url: str, stop: asyncio.Event, failures: list[str]) -> int:
    answered = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            try:
                response = await client.get("/models")
                answered += 1
                if response.status_code != 200:
                    failures.append(f"GET /models: {response.status_code}")
            except httpx.HTTPError as exc:
                failures.append(f"GET /models: {exc!r}")
            await asyncio.sleep(0.01)
    return answered


async def streams_one_after_another(url: str, count: int, failures: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(count):
            try:
                response = await client.post("/api/ai/ollama/one/chat", json=BODY)
                if response.status_code != 200 or "\n3:" in response.text or 'd:{"finishReason"' not in response.text:
                    failures.append(f"stream: {response.status_code} {response.text[-200:]!r}")
            except httpx.HTTPError as exc:
                failures.append(f"stream: {exc!r}")


def workers(tmp_path: Path, fakes: Fakes, *extra: str) -> tuple[Path, list[str], dict[str, str]]:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    return path, ["--config", str(path), "--workers", "2", *extra], {**fakes.env(), "MODELGATE_PROBE_INTERVAL": "0"}


def metrics_showing(url: str, line: str) -> str | None:
    text = httpx.get(url + "/metrics").text
    return text if line in text else None


def both_started(served: Served) -> bool:
    return served.log().count("Application startup complete") >= 2


@pytest.mark.timeout(180)
def test_a_sighup_rolling_restart_under_load_fails_no_request(fakes: Fakes, tmp_path: Path) -> None:
    fakes.ollama.default = Reply(tokens=["a"] * 10, delay=0.1)
    path, args, env = workers(tmp_path, fakes)
    with serve_subprocess(args, tmp_path, env=env) as served:
        wait_for(lambda: both_started(served), "both workers")
        failures: list[str] = []

        async def drive() -> int:
            stop = asyncio.Event()
            loads = [asyncio.create_task(steady_models_load(served.url, stop, failures)) for _ in range(3)]
            streams = [asyncio.create_task(streams_one_after_another(served.url, 6, failures)) for _ in range(2)]
            await asyncio.sleep(1)
            write_catalogue(path, model_toml("acme", "one"), model_toml("acme", "two"))
            served.signal(signal.SIGHUP)
            await asyncio.gather(*streams)  # ~6 s: the restart happens meanwhile
            stop.set()
            return sum(await asyncio.gather(*loads))

        answered = asyncio.run(drive())
        assert served.log().count("Terminated child process") == 2
        assert failures == [], failures
        # Each worker publishes its request counts every second: the retired ones' included, none twice.
        counted = f'modelgate_http_requests_total{{method="GET",route="/models",status="200"}} {answered}.0'
        metrics = wait_for(lambda: metrics_showing(served.url, counted), "every worker's counts", timeout=10)
    assert "modelgate_streams_in_flight 0.0" in metrics


@pytest.mark.timeout(180)
def test_a_burst_of_sighups_is_one_rolling_restart_and_the_last_file_wins(fakes: Fakes, tmp_path: Path) -> None:
    path, args, env = workers(tmp_path, fakes)
    with serve_subprocess(args, tmp_path, env=env) as served:
        wait_for(lambda: both_started(served), "both workers")
        for number in range(6):
            write_catalogue(path, model_toml("acme", f"v{number}"))
            served.signal(signal.SIGHUP)
        wait_for(lambda: all(served_models(served.url) == ["acme/v5"] for _ in range(6)), "the last file", 60)
        time.sleep(3)  # a second restart would have begun by now
        # uvicorn restarted once per signal, one after another: 12 workers forked to read one file.
        assert served.log().count("Terminated child process") <= 4


@pytest.mark.timeout(180)
def test_sigterm_during_a_rolling_restart_stops_within_the_graceful_timeout(fakes: Fakes, tmp_path: Path) -> None:
    fakes.ollama.default = Reply(tokens=["a"] * 200, delay=0.1)  # 20 s: longer than the graceful timeout
    _, args, env = workers(tmp_path, fakes, "--graceful-timeout", "4")
    with serve_subprocess(args, tmp_path, env=env) as served:
        wait_for(lambda: both_started(served), "both workers")
        endings: list[str] = []

        def stream() -> None:
            response = httpx.post(served.url + "/api/ai/ollama/one/chat", json=BODY, timeout=60)
            endings.append(response.text.splitlines()[-1])

        callers = [threading.Thread(target=stream) for _ in range(3)]
        for caller in callers:
            caller.start()
        time.sleep(1)
        served.signal(signal.SIGHUP)
        wait_for(lambda: "Terminated child process" in served.log(), "the first worker to retire")
        stopped_at = time.monotonic()
        served.signal(signal.SIGTERM)
        served.process.wait(timeout=60)
        took = time.monotonic() - stopped_at
        for caller in callers:
            caller.join(60)
    # uvicorn finished the restart first: drained the next old worker too, and started a new one to stop it.
    assert took < 4 + 2.5, f"stopped after {took:.1f} s"
    assert len(endings) == 3 and all(line.startswith('3:"The server is shutting down') for line in endings), endings
