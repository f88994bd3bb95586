"""What each command imports (issue 13 item 5): a command pays at start-up only for the libraries it uses.

Each case runs the CLI in a fresh interpreter and lists the modules loaded by the time it exits. The
server's libraries (uvicorn, FastAPI/Starlette, aiohttp) cost most of the start-up; a client command or
the help must not load them. Speed itself is measured in bench/ (``run.py perf2``), never asserted here.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelgate import cli, cli_keys
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import serve_subprocess, wait_for
from tests.redis_server import free_port

SERVER_LIBRARIES = ("uvicorn", "fastapi", "starlette", "aiohttp", "modelgate.app", "modelgate.server")
#: What a server without ``MODELGATE_REDIS_URL`` never needs: the Redis client and the OpenTelemetry SDK it loads.
REDIS_LIBRARIES = ("redis", "opentelemetry.sdk", "psutil")

# Runs the CLI as the console script does, then prints the top-level names of every loaded module.
PROBE = """
import json, sys
sys.argv = ["modelgate", *json.loads(sys.argv[1])]
from modelgate.cli import main
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES " + json.dumps(sorted(sys.modules)))
"""


def loaded_by(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True, timeout=120, check=True
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules} | {m for m in modules if m.startswith("modelgate.")}


def test_help_loads_no_server_no_http_client_no_pydantic() -> None:
    loaded = top_level(loaded_by("--help"))
    assert "typer" in loaded  # the probe did run the CLI
    assert loaded.isdisjoint({*SERVER_LIBRARIES, "httpx", "pydantic", "jinja2"})


def test_version_loads_only_the_cli() -> None:
    loaded = top_level(loaded_by("--version"))
    assert loaded.isdisjoint({*SERVER_LIBRARIES, "httpx", "pydantic"})


def test_models_from_the_catalogue_loads_the_loader_only() -> None:
    loaded = top_level(loaded_by("models"))
    assert "modelgate.catalogue" in loaded
    # Listing needs neither the chat types (a model's defaults are built when a request needs them) nor Redis.
    assert loaded.isdisjoint({*SERVER_LIBRARIES, "httpx", "jinja2", "modelgate.chat", "redis"})


@pytest.mark.parametrize("command", ["models", "usage"])
def test_client_commands_load_the_http_client_not_the_server(command: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the command fails after its imports
    loaded = top_level(loaded_by(command, "--url", url))
    assert "httpx" in loaded
    assert loaded.isdisjoint(SERVER_LIBRARIES)


def test_importing_the_package_loads_neither_client_nor_types_until_used() -> None:
    code = (
        "import sys, modelgate; before = {'httpx', 'pydantic'} & set(sys.modules);"
        "modelgate.ModelsResponse; after = {'pydantic'} <= set(sys.modules); print(sorted(before), after)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[] True"


# Builds the app and runs its lifespan (start, then stop), then prints every loaded module's name.
SERVE_PROBE = """
import asyncio, json, sys
from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings

settings = Settings(redis_url=sys.argv[1] or None, database_url=None, probe_interval=0)
app = create_app(settings, load_catalogue(None))

async def lifespan():
    async with app.router.lifespan_context(app):
        pass

if sys.argv[1]:
    app.state.gateway.limiter  # a Redis URL: the limiter's backend is Redis (it connects lazily)
else:
    asyncio.run(lifespan())
print("MODULES " + json.dumps(sorted(sys.modules)))
"""


def loaded_by_the_app(redis_url: str = "") -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_PROBE, redis_url], capture_output=True, text=True, timeout=120, check=True
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


def test_a_server_without_redis_loads_no_redis_client() -> None:
    loaded = loaded_by_the_app()
    assert {"fastapi", "aiohttp", "modelgate.limits"} <= loaded  # the probe did build and start the app
    assert not {m for m in loaded if m.startswith(REDIS_LIBRARIES)}


def test_a_redis_url_loads_the_redis_client() -> None:
    # The other side of the boundary above: the limits counted in Redis do load it, when they are configured.
    assert "redis" in loaded_by_the_app("redis://127.0.0.1:9/0")


def test_cli_commands_declare_their_options_as_objects_not_strings() -> None:
    # typer reads every command's annotations whenever the CLI runs (--help included); string annotations
    # (``from __future__ import annotations``) are evaluated again on each run, costing every command.
    commands = [*cli.cli.registered_commands, *cli_keys.keys_cli.registered_commands]
    assert len(commands) >= 8  # serve, models, check-config, chat, usage, the keys subcommands
    for command in commands:
        assert command.callback is not None
        annotations = inspect.get_annotations(command.callback)
        assert annotations and not any(isinstance(a, str) for a in annotations.values()), command.callback


def _proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_text(encoding="utf-8", errors="replace")


def _caught_signals(pid: int) -> int:
    line = next(line for line in _proc(pid, "status").splitlines() if line.startswith("SigCgt:"))
    return int(line.split()[1], 16)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.timeout(300)  # two workers starting on a loaded machine
def test_serve_forks_its_workers_after_importing_the_app(tmp_path: Path) -> None:
    """``--workers 2``: the workers are forked from the supervisor (not spawned as fresh interpreters that import
    everything again), start with default signal dispositions, and share one metrics directory."""
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # the supervisor makes its own, private directory
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "one"))
    env = {"TMPDIR": str(tmp_path), "MODELGATE_DATABASE_URL": "off"}
    with serve_subprocess(["--config", str(path), "--workers", "2"], tmp_path, env=env) as served:

        def ready() -> bool:
            try:
                return httpx.get(served.url + "/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "the workers to be ready")

        def started() -> set[int] | None:
            found = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", served.log())}
            return found if len(found) == 2 else None

        workers = wait_for(started, "both workers to start")
        supervisor = served.process.pid
        for pid in workers:
            assert int(_proc(pid, "stat").rsplit(")", 1)[1].split()[1]) == supervisor  # its parent
            # Forked: the supervisor's own command line (a spawned worker runs multiprocessing.spawn's).
            assert _proc(pid, "cmdline") == _proc(supervisor, "cmdline")
            # The supervisor catches SIGUSR1 (uvicorn queues its signals); a worker must not inherit that.
            assert _caught_signals(supervisor) & (1 << (signal.SIGUSR1 - 1))
            assert not _caught_signals(pid) & (1 << (signal.SIGUSR1 - 1))
        # prometheus_client in multiprocess mode in each worker: its per-request files in the one directory.
        directory = next(tmp_path.glob("modelgate-metrics-*"))

        def published() -> bool:
            names = (re.match(r"counter_http-(\d+)-", file.name) for file in directory.iterdir())
            return {int(match.group(1)) for match in names if match} >= workers

        wait_for(published, "every worker's metrics files")
