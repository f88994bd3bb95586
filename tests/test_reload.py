"""Reload without restart: SIGHUP and the opt-in file watch, against ``modelgate serve`` subprocesses.

A good new file is served after the reload; a broken one leaves the last good catalogue serving and the
log says why (the CatalogueError message, on one line).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from modelgate import app as app_module
from modelgate.app import create_app
from modelgate.reload import one_line, reload_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import Served, serve_subprocess, wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.servers import serve_in_thread

BROKEN = model_toml("acme", "tiny", max_new_tokens=0)
BROKEN_WHY = "model 'acme/tiny': configuration.parameters.max_new_tokens: Input should be greater than 0 (got 0)"


def served_models(url: str) -> list[str] | None:
    try:
        response = httpx.get(url + "/models", timeout=5)
    except httpx.TransportError:
        return None
    return response.json()["models"] if response.status_code == 200 else None


def serving(url: str, expected: list[str]) -> bool:
    return served_models(url) == expected


def test_sighup_reloads_and_a_broken_file_keeps_the_last_good_catalogue(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    with serve_subprocess(["--config", str(path)], tmp_path) as served:
        assert served_models(served.url) == ["acme/one"]

        write_catalogue(path, model_toml("acme", "one"), model_toml("acme", "two"))
        served.signal(signal.SIGHUP)
        wait_for(lambda: serving(served.url, ["acme/one", "acme/two"]), "the reloaded catalogue")

        path.write_text(BROKEN, encoding="utf-8")
        served.signal(signal.SIGHUP)
        line = wait_for(
            lambda: next((x for x in served.log().splitlines() if "reload (SIGHUP) failed" in x), None), "why"
        )
        assert f"{path}: {BROKEN_WHY}" in line
        assert "still serving the last good catalogue (2 models)" in line
        assert "Traceback" not in served.log()
        assert served_models(served.url) == ["acme/one", "acme/two"]
        assert served.process.poll() is None

        # Fixed again: the next SIGHUP takes it.
        write_catalogue(path, model_toml("acme", "three"))
        served.signal(signal.SIGHUP)
        wait_for(lambda: serving(served.url, ["acme/three"]), "the fixed catalogue")
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells who stopped it.
    assert served.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in served.log()


def test_watch_mode_reloads_on_write_and_keeps_serving_on_a_broken_file(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    with serve_subprocess(["--config", str(path), "--watch"], tmp_path) as served:
        wait_for(lambda: "watching" in served.log(), "the watcher to start")
        write_catalogue(path, model_toml("acme", "two"))
        wait_for(lambda: serving(served.url, ["acme/two"]), "the watched file to be reloaded")

        path.write_text(BROKEN, encoding="utf-8")
        line = wait_for(
            lambda: next((x for x in served.log().splitlines() if "reload (file changed) failed" in x), None), "why"
        )
        assert BROKEN_WHY in line
        assert served_models(served.url) == ["acme/two"]

        # An editor-style save (write elsewhere, rename over) is seen too.
        replacement = write_catalogue(tmp_path / "catalogue.toml.tmp", model_toml("acme", "three"))
        os.replace(replacement, path)
        wait_for(lambda: serving(served.url, ["acme/three"]), "the replaced file to be reloaded")


def test_watch_enabled_by_environment_in_process(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    settings = Settings.from_env({"MODELGATE_CONFIG": str(path), "MODELGATE_WATCH_CONFIG": "1"})
    assert settings.watch_config
    with serve_in_thread(create_app(settings)) as url:
        assert served_models(url) == ["acme/one"]
        write_catalogue(path, model_toml("acme", "two"))
        wait_for(lambda: serving(url, ["acme/two"]), "the watched file to be reloaded")


def test_a_reload_removing_a_fallbacks_instance_mid_retry_leaves_the_request_its_catalogue(
    fakes: Fakes, tmp_path: Path
) -> None:
    header = "[providers.ollama]\nmax_retries = 1\nretry_base_delay = 0.01\nretry_max_delay = 10\n"
    closed_port = '[providers.llama]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "primary", upstream="primary:1b", extra='fallbacks = ["acme/backup"]'),
        model_toml("acme", "backup", provider="llama", upstream="backup"),
        header=header + closed_port,
    )
    settings = Settings(**fakes.settings_overrides(), probe_interval=0, config_path=path, watch_config=True)
    # The primary's first 503 asks for 3 s: the reload lands while the request waits to retry.
    fakes.ollama.script(Reply(fault=Fault.status(503, retry_after=3)), Reply(fault=Fault.status(503)))
    body = {"model": "acme/primary", "messages": [{"role": "user", "content": "hi"}]}
    with serve_in_thread(create_app(settings)) as url:
        answer: dict[str, httpx.Response] = {}
        caller = threading.Thread(
            target=lambda: answer.setdefault("r", httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30))
        )
        caller.start()
        wait_for(lambda: len(fakes.ollama.requests) == 1, "the first attempt")
        write_catalogue(path, model_toml("acme", "primary", upstream="primary:1b"), header=header)
        wait_for(lambda: served_models(url) == ["acme/primary"], "the reload dropping llama and its model")
        caller.join(30)
        metrics = httpx.get(f"{url}/metrics").text
    assert len(fakes.ollama.requests) == 2
    # The backup is still tried, on the catalogue the request started with; then the primary's own error.
    assert 'model="acme/backup",outcome="upstream_error",provider="llama"' in metrics
    assert answer["r"].status_code == 503, answer["r"].text


def test_workers_reload_by_rolling_restart_and_keep_serving_on_a_broken_file(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    with serve_subprocess(["--config", str(path), "--workers", "2"], tmp_path) as served:
        wait_for(lambda: serving(served.url, ["acme/one"]), "the workers to serve")
        write_catalogue(path, model_toml("acme", "two"))
        served.signal(signal.SIGHUP)  # uvicorn's supervisor replaces the workers one by one
        # Both old workers retired: only then may the file change again (a replacement reads it on start).
        wait_for(lambda: served.log().count("Terminated child process") >= 2, "the rolling restart to finish", 120)
        # A retired worker may still be closing its last connection: poll until all answers are the new ones.
        wait_for(lambda: all(serving(served.url, ["acme/two"]) for _ in range(6)), "every worker to serve it")

        path.write_text(BROKEN, encoding="utf-8")
        served.signal(signal.SIGHUP)
        wait_for(lambda: "keeping worker" in served.log(), "the supervisor to keep the old worker", 120)
        assert f"invalid catalogue, worker not started: {path}: {BROKEN_WHY}" in served.log()
        assert all(served_models(served.url) == ["acme/two"] for _ in range(6))


def worker_pids(served: Served) -> list[int]:
    """The supervisor's children: its workers (forked; nothing else is)."""
    pid = served.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii").split()
    return sorted(int(child) for child in children)


def test_a_dead_worker_whose_replacement_cannot_load_the_file_leaves_the_others_serving(tmp_path: Path) -> None:
    """Found probing: with a half-edited (broken) file on disk, one worker dying stopped the whole service: uvicorn's
    supervisor took the replacement's failure to start for a broken configuration and exited. Now the other worker
    keeps serving, the log says why, and the slot is tried again until the file loads."""
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    with serve_subprocess(["--config", str(path), "--workers", "2"], tmp_path) as served:
        wait_for(lambda: serving(served.url, ["acme/one"]) and len(worker_pids(served)) == 2, "two workers")
        first, survivor = worker_pids(served)
        path.write_text(BROKEN, encoding="utf-8")
        os.kill(first, signal.SIGKILL)  # an OOM kill, say

        def tried_twice() -> bool:
            assert served.process.poll() is None, f"the service stopped:\n{served.log()}"
            return served.log().count("invalid catalogue, worker not started") >= 2

        wait_for(tried_twice, "two failed tries", 60)
        # Each try is logged, and each waits twice as long as the one before (a worker that cannot start would
        # otherwise be forked again every half second).
        wait_for(lambda: "1 of 2 workers serving, trying again in 2 s" in served.log(), "the second wait", 30)
        assert served.log().count("1 of 2 workers serving, trying again in 1 s") == 1
        assert survivor in worker_pids(served)
        assert all(served_models(served.url) == ["acme/one"] for _ in range(6))  # the survivor answers every one

        write_catalogue(path, model_toml("acme", "one"), model_toml("acme", "two"))  # the edit is finished
        wait_for(lambda: len(worker_pids(served)) == 2, "the slot filled again", 60)
        wait_for(lambda: any(serving(served.url, ["acme/one", "acme/two"]) for _ in range(6)), "the new worker", 60)
        assert "Traceback" not in served.log()


def test_reload_failure_is_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    app = create_app(Settings(config_path=path))
    state = app.state.gateway
    good = state.catalogue
    path.write_text(model_toml("acme", "one", max_new_tokens=0, truncate=0), encoding="utf-8")
    caplog.set_level(logging.ERROR, logger="modelgate")
    assert reload_catalogue(state, "test") is False
    assert state.catalogue is good
    (record,) = [r for r in caplog.records if r.name == "modelgate.reload"]
    message = record.getMessage()
    assert "\n" not in message
    assert "max_new_tokens: Input should be greater than 0 (got 0); " in message
    assert "truncate: Input should be greater than 0 (got 0)" in message


def test_an_unexpected_reload_failure_keeps_the_catalogue_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGHUP's handler and the watch loop both call reload_catalogue: whatever fails in it must not escape.
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    state = create_app(Settings(config_path=path)).state.gateway
    good = state.catalogue

    def failing(_: object) -> None:
        raise RuntimeError("a bug, not the file")

    monkeypatch.setattr(app_module, "load_catalogue", failing)
    caplog.set_level(logging.ERROR, logger="modelgate")
    assert reload_catalogue(state, "SIGHUP") is False
    assert state.catalogue is good
    (record,) = [r for r in caplog.records if r.name == "modelgate.reload"]
    assert (
        "reload (SIGHUP) failed unexpectedly, still serving the last good catalogue (1 models)" in record.getMessage()
    )
    assert record.exc_info is not None and "a bug, not the file" in str(record.exc_info[1])


def test_the_watch_survives_an_unexpected_reload_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    settings = Settings.from_env(
        {"MODELGATE_CONFIG": str(path), "MODELGATE_WATCH_CONFIG": "1", "MODELGATE_PROBE_INTERVAL": "0"}
    )
    app = create_app(settings)
    real = app_module.load_catalogue
    calls: list[object] = []

    def first_fails(config: Path | None) -> object:
        calls.append(config)
        if len(calls) == 1:
            raise RuntimeError("a bug, not the file")
        return real(config)

    monkeypatch.setattr(app_module, "load_catalogue", first_fails)
    with serve_in_thread(app) as url:
        time.sleep(0.5)  # the watcher starts
        write_catalogue(path, model_toml("acme", "two"))
        wait_for(lambda: calls, "the first reload")
        assert served_models(url) == ["acme/one"]
        time.sleep(0.5)  # the next save must be seen as its own change
        write_catalogue(path, model_toml("acme", "three"))
        wait_for(lambda: serving(url, ["acme/three"]), "the next save to be reloaded", timeout=10)


def test_the_watch_survives_a_file_with_a_huge_number(tmp_path: Path) -> None:
    # 10**400 for a float field once failed building the seed's model with a pydantic ValidationError, not a
    # CatalogueError: it ended the watch, and the fixed file was never loaded.
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    settings = Settings.from_env(
        {"MODELGATE_CONFIG": str(path), "MODELGATE_WATCH_CONFIG": "1", "MODELGATE_PROBE_INTERVAL": "0"}
    )
    with serve_in_thread(create_app(settings)) as url:
        time.sleep(0.5)  # the watcher starts
        huge = model_toml("acme", "one").replace("repetition_penalty = -1", f"repetition_penalty = {10**400}")
        path.write_text(huge, encoding="utf-8")
        time.sleep(1.5)  # the broken save is seen and refused
        assert served_models(url) == ["acme/one"]
        write_catalogue(path, model_toml("acme", "two"))
        wait_for(lambda: serving(url, ["acme/two"]), "the fixed file to be reloaded", timeout=10)


def test_one_line_joins_a_multi_problem_message() -> None:
    assert one_line("a: x\nb: y\n") == "a: x; b: y"
