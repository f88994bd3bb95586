"""What each command imports (issue 13 item 5): a command pays at start-up only for the libraries it uses.

Each case runs the CLI in a fresh interpreter and lists the modules loaded by the time it exits. The
server's libraries (uvicorn, FastAPI/Starlette, aiohttp) cost most of the start-up; a client command or
the help must not load them. Speed itself is measured in bench/ (``run.py perf2``), never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.redis_server import free_port

SERVER_LIBRARIES = ("uvicorn", "fastapi", "starlette", "aiohttp", "modelgate.app", "modelgate.server")

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
    assert loaded.isdisjoint({*SERVER_LIBRARIES, "httpx", "jinja2"})


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
