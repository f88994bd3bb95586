"""Run ``modelgate`` as a real subprocess: the CLI and ``modelgate serve`` exactly as an operator would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")

#: Every upstream points at a closed loopback port: a served subprocess has no conftest socket guard,
#: so nothing it might probe may lead off this machine.
OFFLINE = {
    "MODELGATE_HUGGINGFACE_BASE_URL": "http://127.0.0.1:9",
    "MODELGATE_CLOUDFLARE_BASE_URL": "http://127.0.0.1:9",
    "MODELGATE_OPENROUTER_BASE_URL": "http://127.0.0.1:9",
    "MODELGATE_OLLAMA_BASE_URL": "http://127.0.0.1:9",
}


def modelgate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelgate", *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The (already cleaned) test environment, offline upstreams, and ``extra``."""
    return {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1", **(extra or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        modelgate_command(*args), env=cli_env(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll until ``condition`` returns something truthy (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)


@contextmanager
def serve_subprocess(
    args: Sequence[str], tmp_path: Path, *, env: dict[str, str] | None = None, startup: float = 60.0
) -> Iterator[Served]:
    """``modelgate serve --port 0 ARGS``; yields once it listens; SIGTERM and reap on exit.

    One worker unless ARGS say otherwise: the default (``--workers auto``) depends on the machine's cores, and
    a test asserts one process's behaviour (its connection cap, its in-process reload) unless it asks for more.
    """
    log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
    workers = [] if any(arg.startswith("--workers") for arg in args) else ["--workers", "1"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            modelgate_command("serve", "--port", "0", *workers, *args),
            env=cli_env(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"modelgate serve exited with {process.returncode}:\n{log_path.read_text()}")
            found = _RUNNING.search(log_path.read_text(encoding="utf-8", errors="replace"))
            return found.group(1) if found else None

        url = wait_for(listening, "modelgate serve to listen", timeout=startup)
        yield Served(url=url, process=process, log_path=log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
