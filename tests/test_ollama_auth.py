"""End to end: Ollama that asks for a key — ollama.com's API, an Ollama behind an authenticating proxy — served over
loopback with the fake Ollama refusing a call without ``Authorization: Bearer <key>`` as ollama.com does (401
``{"error": "unauthorized"}``). The key is the instance's ``api_key_env`` (``OLLAMA_API_KEY`` for ollama.com, as
ollama-python reads it); it never appears in an answer or a log line."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, parse_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.fakes import Fakes, Fault, Reply
from tests.servers import serve_in_thread

KEY = "4f1c0ffee0ddba11.ollama-secret-key"
MESSAGES = [{"role": "user", "content": "Say hi"}]


def _catalogue(fakes: Fakes) -> Catalogue:
    text = f"""
[providers.ollama-cloud]
kind = "ollama"
base_url = "{fakes.ollama.url}"
api_key_env = "OLLAMA_API_KEY"
[providers.ollama-open]
kind = "ollama"
base_url = "{fakes.ollama.url}"
""" + "".join(
        (
            model_toml("cloud", "gpt-oss", provider="ollama-cloud", upstream="gpt-oss:120b"),
            model_toml("local", "gemma", provider="ollama-open", upstream="gemma3:4b"),
        )
    )
    return parse_catalogue(tomllib.loads(text), source="ollama.toml")


@pytest.fixture
def serve(fakes: Fakes) -> Iterator[Callable[[dict[str, str]], str]]:
    fakes.ollama.token = KEY
    with ExitStack() as stack:

        def start(env: dict[str, str]) -> str:
            app = create_app(Settings.from_env({"MODELGATE_PROBE_INTERVAL": "0", **env}), _catalogue(fakes))
            return stack.enter_context(serve_in_thread(app))

        yield start


def chat(url: str, model: str, *, stream: bool) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_key_of_api_key_env_reaches_ollama_as_a_bearer_token(
    serve: Callable[[dict[str, str]], str], fakes: Fakes, stream: bool
) -> None:
    url = serve({"OLLAMA_API_KEY": KEY})
    response = chat(url, "cloud/gpt-oss", stream=stream)
    assert response.status_code == 200, response.text
    assert b"[DONE]" in response.content if stream else response.json()["choices"][0]["message"]["content"]
    sent = fakes.ollama.last
    assert (sent.path, sent.json["stream"]) == ("/api/chat", stream)
    assert sent.headers["authorization"] == f"Bearer {KEY}"


def test_the_probe_lists_the_models_with_the_key(serve: Callable[[dict[str, str]], str], fakes: Fakes) -> None:
    url = serve({"OLLAMA_API_KEY": KEY, "MODELGATE_PROBE_INTERVAL": "0.05"})
    deadline = time.monotonic() + 15
    providers: dict[str, Any] = {}
    while time.monotonic() < deadline:
        providers = httpx.get(f"{url}/api/status", timeout=5).json()["providers"]
        if all(providers[name]["last_checked_at"] for name in ("ollama-cloud", "ollama-open")):
            break
        time.sleep(0.05)
    assert providers["ollama-cloud"]["status"] == "ok", providers["ollama-cloud"]
    assert providers["ollama-open"]["status"] != "ok", providers["ollama-open"]  # the proxy refuses it
    assert f"Bearer {KEY}" in {listing.headers.get("authorization") for listing in fakes.ollama.listings}


def test_a_refused_key_is_a_clear_error_that_never_shows_the_key(
    serve: Callable[[dict[str, str]], str], fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    wrong = KEY[:-1] + "X"
    url = serve({"OLLAMA_API_KEY": wrong})
    response = chat(url, "cloud/gpt-oss", stream=True)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "our credentials were refused (HTTP 401); check OLLAMA_API_KEY" in message
    assert len(fakes.ollama.requests) == 1  # a refused key is not retried
    # A 403 is the upstream's own words (ollama.com, a proxy); a key echoed in them is taken out. (Another server:
    # the refused key blocks this one's models for a while.)
    fakes.ollama.token = None
    fakes.ollama.script(Reply(fault=Fault.status(403, message=f"key {wrong} may not use gpt-oss:120b")))
    denied = chat(serve({"OLLAMA_API_KEY": wrong}), "cloud/gpt-oss", stream=False)
    assert denied.status_code == 502 and "access denied (HTTP 403): key " in denied.text, denied.text
    assert "gpt-oss:120b" in denied.text
    captured = caplog.text + response.text + str(response.headers) + denied.text + str(denied.headers)
    assert sum(r.name == "modelgate.access" for r in caplog.records) >= 2  # the request log was captured
    assert wrong not in captured and wrong[:-1] not in captured


def test_an_instance_without_a_key_asked_for_one_says_to_set_api_key_env(
    serve: Callable[[dict[str, str]], str], fakes: Fakes
) -> None:
    url = serve({})
    response = chat(url, "local/gemma", stream=False)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "asks for a key (HTTP 401)" in message and "api_key_env" in message, message
    assert "authorization" not in fakes.ollama.last.headers
    # The keyed instance without its variable is not configured: refused before any call.
    unset = chat(url, "cloud/gpt-oss", stream=False)
    assert unset.status_code == 503 and "set OLLAMA_API_KEY" in unset.text, unset.text
    assert len(fakes.ollama.requests) == 1


def test_a_local_ollama_not_signed_in_for_a_cloud_model_says_to_run_ollama_signin(
    serve: Callable[[dict[str, str]], str], fakes: Fakes
) -> None:
    fakes.ollama.token = None
    fakes.ollama.signin_url = "https://ollama.com/connect?name=gpu-box&key=c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJ"
    url = serve({})
    response = chat(url, "local/gemma", stream=True)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "not signed in to ollama.com" in message and "ollama signin" in message, message
    assert "gemma3:4b" in message and "connect?name" not in message
    assert len(fakes.ollama.requests) == 1  # no retry cures it
