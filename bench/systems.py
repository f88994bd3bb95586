"""The systems the benchmarks start: modelgate (under three servers), nginx, the naive app, LiteLLM, the fake.

Each starter returns a running, ready ``Proc`` pinned to its core and the URL to load. Every server gets a
fresh loopback port and its own log file in the results directory.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, SERVER_CORE, Proc, free_port, start, wait_http, wait_tcp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = BENCH / ".venv" / "bin"
LITELLM_BIN = BENCH / ".venv-litellm" / "bin"

#: The catalogue model every streaming benchmark talks to (an OpenRouter model of the default catalogue).
STREAM_MODEL = "openrouter/llama-3.3-70b-instruct"
FAKE_API_KEY = "sk-or-bench"
#: LiteLLM refuses to start without a master key (its secure default); requests then carry it.
LITELLM_MASTER_KEY = "sk-litellm-bench-0123456789abcdef"

#: Environment a benchmarked modelgate must not inherit from whoever runs the bench (default config).
_FOREIGN_PREFIXES = ("MODELGATE_", "HF_", "CLOUDFLARE_", "OPENROUTER_", "OLLAMA_", "LITELLM_", "DATABASE_URL")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}


@dataclass
class Server:
    proc: Proc
    url: str  # base URL, no trailing slash
    label: str
    note: str = ""


# --- fake upstream -------------------------------------------------------------------------------------


def start_fake(
    log_dir: Path, *, tokens: int, interval_ms: float, listed: list[str], core: int | str = LOAD_CORE
) -> Server:
    port = free_port()
    argv = [str(VENV_BIN / "python"), str(BENCH / "fake_upstream.py"), "--port", str(port)]
    argv += ["--tokens", str(tokens), "--interval-ms", str(interval_ms)]
    for model in listed:
        argv += ["--list-model", model]
    proc = start("fake-upstream", argv, core=core, log_dir=log_dir, env=clean_env())
    wait_tcp(proc, port)
    return Server(proc, f"http://127.0.0.1:{port}", "fake upstream")


# --- modelgate -----------------------------------------------------------------------------------------

MODELGATE_SERVERS = ("serve", "uvicorn", "granian")


@functools.cache
def cli_serve_available() -> bool:
    """``modelgate serve`` exists (the CLI lands in its own commit; until then the bench runs uvicorn itself)."""
    done = subprocess.run(
        [str(VENV_BIN / "modelgate"), "serve", "--help"], capture_output=True, check=False, timeout=60
    )
    return done.returncode == 0


def modelgate_argv(server: str, port: int, *, bin_dir: Path = VENV_BIN, workers: int = 1) -> tuple[list[str], str]:
    """The command line that runs modelgate (default config, ``workers`` workers) under ``server``, and a note.

    ``bin_dir``: the venv to run it from (``VENV_BIN``: this tree; a ``bench/.baseline-<sha>`` venv: the
    previous release, always through ``modelgate serve``)."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if bin_dir != VENV_BIN or (server == "serve" and cli_serve_available()):
        argv = [str(bin_dir / "modelgate"), "serve", *host, "--workers", str(workers)]
        return argv, f"`modelgate serve --workers {workers}`"
    if server in ("serve", "uvicorn"):
        note = "uvicorn (httptools, uvloop)"
        if server == "serve":
            note += "; `modelgate serve` not available yet"
        argv = [str(VENV_BIN / "python"), "-m", "uvicorn", "--factory", "modelgate.app:create_app", *host]
        return [*argv, "--loop", "uvloop", "--http", "httptools", "--no-access-log"], note
    if server == "granian":
        argv = [str(VENV_BIN / "granian"), "--interface", "asgi", "--factory", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-access-log"]
        return [*argv, "modelgate.app:create_app"], "granian (asgi, uvloop, HTTP/1.1)"
    raise ValueError(f"unknown server {server!r}; one of {MODELGATE_SERVERS}")


def start_modelgate(
    log_dir: Path,
    *,
    server: str = "serve",
    fake_url: str | None = None,
    tag: str = "",
    bin_dir: Path = VENV_BIN,
    workers: int = 1,
    core: int | str = SERVER_CORE,
) -> Server:
    port = free_port()
    argv, note = modelgate_argv(server, port, bin_dir=bin_dir, workers=workers)
    env = clean_env()
    # The usage ledger stays on as it ships (SQLite), in a file of this run rather than ~/.local/state.
    env["MODELGATE_DATABASE_URL"] = f"sqlite:///{log_dir.resolve()}/usage-{server}{tag}-{port}.sqlite3"
    if fake_url is not None:
        env["MODELGATE_OPENROUTER_BASE_URL"] = f"{fake_url}/api/v1"
        env["OPENROUTER_API_KEY"] = FAKE_API_KEY
    proc = start(f"modelgate-{server}{tag}", argv, core=core, log_dir=log_dir, env=env, cwd=log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/models")
    return Server(proc, url, f"modelgate ({server})", note)


# --- Portkey's gateway ----------------------------------------------------------------------------------


#: Headers that make Portkey's gateway relay to the fake as an OpenAI-compatible provider with a custom host.
def portkey_headers(fake_url: str) -> tuple[str, ...]:
    return (
        "x-portkey-provider: openai",
        f"x-portkey-custom-host: {fake_url}/api/v1",
        f"Authorization: Bearer {FAKE_API_KEY}",
    )


def start_portkey(log_dir: Path, server_js: Path) -> Server:
    port = free_port()
    # NODE_ENV=production: no log UI routes; --headless: no browser UI.
    env = clean_env() | {"NODE_ENV": "production"}
    argv = ["node", str(server_js), f"--port={port}", "--headless"]
    proc = start("portkey", argv, core=SERVER_CORE, log_dir=log_dir, env=env, cwd=log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/", timeout=60)
    return Server(proc, url, "Portkey gateway", f"@portkey-ai/gateway {portkey_version(server_js)} on node, patched")


@functools.cache
def portkey_version(server_js: Path) -> str:
    package = server_js.parent.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


# --- nginx ---------------------------------------------------------------------------------------------


def start_nginx(log_dir: Path, body: bytes) -> tuple[Server, str, str]:
    """One nginx (1 worker) with two servers: the body as a static file, and the same with per-request gzip."""
    root = Path(tempfile.mkdtemp(prefix="nginx-", dir=log_dir))
    root.chmod(0o755)  # the worker runs as nobody
    (root / "models.json").write_bytes(body)
    (root / "models.json").chmod(0o644)
    static_port, gzip_port = free_port(), free_port()
    location = f"location = /models {{ default_type application/json; alias {root}/models.json; }}"
    temp = " ".join(f"{kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = textwrap.dedent(
        f"""\
        worker_processes 1;
        daemon off;
        pid {root}/nginx.pid;
        error_log {root}/error.log warn;
        events {{ worker_connections 8192; }}
        http {{
          access_log off;
          {temp}
          sendfile on;
          tcp_nopush on;
          keepalive_requests 1000000;
          server {{ listen 127.0.0.1:{static_port}; {location} }}
          server {{
            listen 127.0.0.1:{gzip_port};
            gzip on; gzip_types application/json; gzip_min_length 0;
            {location}
          }}
        }}
        """
    )
    (root / "nginx.conf").write_text(conf)
    proc = start("nginx", ["nginx", "-p", str(root), "-c", str(root / "nginx.conf")], core=SERVER_CORE, log_dir=log_dir)
    static_url, gzip_url = f"http://127.0.0.1:{static_port}", f"http://127.0.0.1:{gzip_port}"
    wait_http(proc, f"{static_url}/models")
    wait_http(proc, f"{gzip_url}/models")
    return Server(proc, static_url, "nginx", "nginx, 1 worker, access_log off"), static_url, gzip_url


# --- naive FastAPI reference ---------------------------------------------------------------------------


def start_naive(log_dir: Path, body_path: Path) -> Server:
    port = free_port()
    argv = [str(VENV_BIN / "python"), "-m", "uvicorn", "--factory", "naive_app:create_app", "--app-dir", str(BENCH)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log"]
    env = clean_env() | {"BENCH_MODELS_JSON": str(body_path)}
    proc = start("naive", argv, core=SERVER_CORE, log_dir=log_dir, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/models")
    return Server(proc, url, "naive FastAPI", "uvicorn default (httptools, uvloop), 1 worker, no access log")


# --- LiteLLM proxy -------------------------------------------------------------------------------------


def litellm_config(models: dict[str, Any], fake_url: str) -> str:
    """A LiteLLM config listing the same models as the catalogue, each an OpenAI-compatible model at the fake."""
    lines = ["model_list:"]
    for model_id in models["models"]:
        publisher, name = model_id.split("/", 1)
        upstream = models["configurations"][publisher][name]["configuration"]["model"]
        lines += [
            f"  - model_name: {json.dumps(model_id)}",
            "    litellm_params:",
            f"      model: {json.dumps('openai/' + upstream)}",
            f"      api_base: {json.dumps(fake_url + '/api/v1')}",
            f"      api_key: {json.dumps(FAKE_API_KEY)}",
        ]
    # Nothing outside the machine: no telemetry, and token counting with the bundled tiktoken encoding instead of
    # downloading a tokenizer from the Hugging Face hub (which LiteLLM retries for ~15 s per model when offline).
    lines += ["litellm_settings:", "  telemetry: false", "  disable_hf_tokenizer_download: true"]
    lines += ["general_settings: {}"]
    return "\n".join(lines) + "\n"


def start_litellm(log_dir: Path, models: dict[str, Any], fake_url: str) -> Server:
    port = free_port()
    config = log_dir / "litellm.yaml"
    config.write_text(litellm_config(models, fake_url))
    env = clean_env() | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the remote cost map
        "LITELLM_TELEMETRY_DISABLED": "true",
        "LITELLM_MODE": "PRODUCTION",  # no .env loading
        "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
        "HF_HUB_OFFLINE": "1",
    }
    argv = [str(LITELLM_BIN / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    proc = start("litellm", [*argv, "--num_workers", "1"], core=SERVER_CORE, log_dir=log_dir, env=env, cwd=log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/health/liveliness", timeout=180)
    note = f"litellm {litellm_version()}, 1 worker, no database, master key (required to start)"
    return Server(proc, url, "LiteLLM proxy", note)


@functools.cache
def litellm_version() -> str:
    done = subprocess.run(
        [str(LITELLM_BIN / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"
