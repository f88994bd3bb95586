"""Run a chat reply through the Vercel AI SDK's own parsers (Node, ``tests/js``), for any test that has a URL.

``parse_data_stream(url, body)`` reads the reply with ``ai@4.3.19`` (``callChatApi`` + ``processDataStream``,
what AI SDK 4 ``useChat`` runs); ``parse_ui_stream(url, body, sdk=...)`` with AI SDK 5's
``DefaultChatTransport`` + ``readUIMessageStream`` (``ai5`` = ai@5.0.0 with its strict chunk schemas,
``ai5latest``, ``ai6``, ``ai7`` = current 5.x, 6.x, 7.x); ``run_chat_session(url, steps)`` holds a whole
conversation with AI SDK 5's ``Chat`` (the class behind ``useChat``). Each returns the script's JSON summary (see the
``.mjs`` files for its keys: ``status``, ``headers``, ``text``, ``reasoning``, ``errors``, the finish parts,
what ``useChat`` assembled, ``raw``) and raises ``NodeParserError`` when the SDK rejects the stream. A non-2xx
answer is returned, not raised (``status`` and ``body``). The request is made by Node, so the URL must be a
loopback server (``tests/servers.serve_in_thread``).

Tests using these mark themselves with ``requires_node_parsers``: they skip only when ``node`` or
``tests/js/node_modules`` is missing (``scripts/test.sh`` installs both with ``npm ci``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

JS_DIR = Path(__file__).parent / "js"
DEFAULT_BODY: Mapping[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
#: Generous: a guard against a hung stream, not a speed check.
_TIMEOUT_SECONDS = 60


def unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "ai" / "package.json").is_file():
        return "tests/js/node_modules is missing (run: cd tests/js && npm ci)"
    return None


requires_node_parsers = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def requires_js_package(name: str) -> pytest.MarkDecorator:
    """Skip unless ``tests/js/node_modules`` has the npm package ``name`` (``scripts/test.sh`` installs them all)."""
    installed = (JS_DIR / "node_modules" / name / "package.json").is_file()
    return pytest.mark.skipif(not installed, reason=f"tests/js/node_modules lacks {name} (run: cd tests/js && npm ci)")


class NodeParserError(AssertionError):
    """The AI SDK's parser rejected the stream (or the script could not run)."""


def _run(script: str, *args: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise NodeParserError("node is not installed")
    completed = subprocess.run(
        [node, script, *args], cwd=JS_DIR, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS, check=False
    )
    if completed.returncode != 0:
        raise NodeParserError(f"{script} exited {completed.returncode}: {completed.stderr.strip()}")
    summary: dict[str, Any] = json.loads(completed.stdout)
    return summary


def _json(body: Mapping[str, Any] | str) -> str:
    return body if isinstance(body, str) else json.dumps(body)


def parse_data_stream(url: str, body: Mapping[str, Any] | str = DEFAULT_BODY) -> dict[str, Any]:
    """POST ``body`` to ``url`` and read the reply as AI SDK 4 ``useChat`` does (data stream protocol v1)."""
    return _run("data-stream.mjs", url, _json(body))


def parse_ui_stream(
    url: str,
    body: Mapping[str, Any] | str = DEFAULT_BODY,
    *,
    sdk: Literal["ai5", "ai5latest", "ai6", "ai7"] = "ai5",
) -> dict[str, Any]:
    """POST ``body`` to ``url`` and read the reply as AI SDK 5 ``useChat`` does (UI message stream v1)."""
    return _run("ui-stream.mjs", sdk, url, _json(body))


def run_chat_session(url: str, steps: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Hold a conversation at ``url`` with AI SDK 5's own ``Chat`` (what ``useChat`` runs; ``chat-session.mjs``):
    for each step (``{"send": text}``, ``{"regenerate": True}``, ``{"continue": True}``) the body it posted,
    its ``status``, ``error``, ``finishes`` and the ``messages`` it holds afterwards."""
    steps_done: list[dict[str, Any]] = _run("chat-session.mjs", url, json.dumps(steps))["steps"]
    return steps_done


def run_ai_sdk_openai(
    sdk: str,
    base_url: str,
    model: str,
    mode: str,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Call ``base_url`` (a ``/v1``) with the AI SDK core and an OpenAI provider (``ai-sdk-openai.mjs``): ``v7``/``v5``
    speak the Responses API (``@ai-sdk/openai``), ``compatible`` Chat Completions (``@ai-sdk/openai-compatible``).
    ``mode``: generate, stream, two-turn, tools, tools-stream, object, image; ``options`` go into the call."""
    return _run("ai-sdk-openai.mjs", sdk, base_url, model, mode, json.dumps(options or {}))
