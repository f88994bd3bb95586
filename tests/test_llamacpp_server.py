"""modelgate in front of a real server no one here wrote: llama.cpp's OpenAI-compatible server.

One llama.cpp server (``tests/llamacpp.py``: SmolLM2-135M, n_ctx 512, temperature 0) is the upstream of an
``openai`` instance, and of the ``huggingface`` (router) and ``openrouter`` kinds through their base URLs:
they all speak Chat Completions. modelgate runs as a real ``modelgate serve`` process. Every reply is
compared with what the same server answers directly, non-streamed, for the same request: temperature 0
makes the text deterministic, and only a non-streamed reply carries the server's own token counts (it
sends none on a stream).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.cli_process import Served, serve_subprocess, wait_for
from tests.conftest import strip_environ
from tests.llamacpp import ALIAS, N_CTX, Completion, LlamaServer, llama_server
from tests.node_parsers import parse_data_stream, parse_ui_stream, requires_node_parsers

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(300)]

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]
#: The same conversation as AI SDK 5+ ``useChat`` posts it (``parts`` only).
AI_SDK_5_MESSAGES = [
    {"id": f"m{i}", "role": m["role"], "parts": [{"type": "text", "text": m["content"]}]}
    for i, m in enumerate(MESSAGES)
]
#: Few tokens keep the suite fast; "length" is then the finish reason, which the cap test relies on.
MAX_NEW_TOKENS = 8
#: Models of the shared catalogue: one per provider kind that speaks Chat Completions, all on the one server.
VIA = {"openai": "smol/via-openai", "huggingface": "smol/via-huggingface", "openrouter": "smol/via-openrouter"}
UNLISTED = "smol/unlisted"
#: The keys the huggingface and openrouter kinds need to be configured; llama.cpp's server checks none.
DUMMY_KEYS = {"HF_TOKEN": "hf_dummy", "OPENROUTER_API_KEY": "sk-or-dummy"}


def model_toml(name: str, provider: str, upstream: str, *, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    return f"""
[[models]]
publisher = "smol"
name = "{name}"
provider = "{provider}"
type = "chat"
description = "SmolLM2-135M-Instruct on llama.cpp's server"
icon = "mdi:test"
[models.configuration]
model = "{upstream}"
[models.configuration.parameters]
max_new_tokens = {max_new_tokens}
typical_p = -1
repetition_penalty = -1
truncate = {N_CTX - max_new_tokens}
return_full_text = false
temperature = 0
"""


def catalogue(llama: LlamaServer, *models: str) -> str:
    return f'[providers.llama]\nkind = "openai"\nbase_url = "{llama.v1}"\n' + "".join(models)


def upstream_env(llama: LlamaServer) -> dict[str, str]:
    """The huggingface and openrouter kinds pointed at the llama server (the same wire format)."""
    return {
        "MODELGATE_HUGGINGFACE_BASE_URL": llama.v1,
        "MODELGATE_OPENROUTER_BASE_URL": llama.v1,
        **DUMMY_KEYS,
    }


@pytest.fixture(scope="module")
def _module_environ() -> Iterator[None]:
    """The cleaned test environment for the module's own ``modelgate serve`` (started before any test)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        strip_environ(monkeypatch)
        yield


def serve(llama: LlamaServer, tmp: Path, *models: str) -> Any:
    path = tmp / "catalogue.toml"
    path.write_text(catalogue(llama, *models), encoding="utf-8")
    return serve_subprocess(["--config", str(path)], tmp, env=upstream_env(llama))


@pytest.fixture(scope="module")
def gateway(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory, _module_environ: None) -> Iterator[Served]:
    models = [
        model_toml("via-openai", "llama", ALIAS),
        model_toml("via-huggingface", "huggingface", ALIAS),
        model_toml("via-openrouter", "openrouter", ALIAS),
    ]
    with serve(llama, tmp_path_factory.mktemp("gateway"), *models) as served:
        yield served


@pytest.fixture(scope="module")
def reference(llama: LlamaServer) -> Completion:
    """What the server itself answers to the request modelgate makes (non-streamed: with its counts)."""
    return llama.complete(MESSAGES, max_tokens=MAX_NEW_TOKENS)


def chat_url(gateway: Served, model: str, protocol: str | None = None) -> str:
    return f"{gateway.url}/api/ai/{model}/chat" + (f"?protocol={protocol}" if protocol else "")


def check_usage(prompt: int, completion: int, estimated: bool, reference: Completion) -> None:
    """Usage presented as reported must be the server's own; an estimate must say so and be near it.

    The estimate has no tokenizer (about four characters per token, plus the chat template's few tokens per
    message), so it cannot be exact: within a quarter of the server's prompt count (or 3 tokens, for tiny
    prompts) is what a template-aware estimate reaches, and it still fails one that counts only the message
    texts (for this prompt, about half of what the server counts). The completion count is one per streamed
    token, which is how llama.cpp's server streams, so it may be off by a token at most.
    """
    if not estimated:
        assert (prompt, completion) == (reference.prompt_tokens, reference.completion_tokens)
        return
    assert abs(prompt - reference.prompt_tokens) <= max(3, reference.prompt_tokens // 4), (prompt, reference)
    assert abs(completion - reference.completion_tokens) <= 1, (completion, reference)


# --- the server itself, so the rows below compare with something known --------------------------------


def test_the_reference_reply_is_capped_by_max_tokens(reference: Completion) -> None:
    assert reference.text and reference.finish_reason == "length"
    assert reference.completion_tokens == MAX_NEW_TOKENS
    assert reference.prompt_tokens > 0


# --- streamed text, finish reason and usage in every output protocol, through each provider kind ---------


@requires_node_parsers
@pytest.mark.parametrize("kind", list(VIA))
def test_data_stream_and_ui_stream_token_by_token(gateway: Served, reference: Completion, kind: str) -> None:
    url = chat_url(gateway, VIA[kind])
    data = parse_data_stream(url, {"messages": MESSAGES})  # an AI SDK 4 body: the data stream, unasked
    assert data["status"] == 200, data
    assert data["headers"]["x-vercel-ai-data-stream"] == "v1"
    assert data["text"] == reference.text
    assert data["partTypes"].count("text") >= 2, data["partTypes"]  # streamed, not one buffered part
    assert data["errors"] == []
    finish = data["finishMessage"]
    assert finish["finishReason"] == reference.finish_reason
    estimated = {"usageEstimated": True} in data["annotations"]
    check_usage(finish["usage"]["promptTokens"], finish["usage"]["completionTokens"], estimated, reference)

    ui = parse_ui_stream(url, {"messages": AI_SDK_5_MESSAGES}, sdk="ai5latest")  # AI SDK 5: the UI stream, unasked
    assert ui["status"] == 200, ui
    assert ui["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert ui["text"] == reference.text
    assert ui["chunkTypes"].count("text-delta") >= 2, ui["chunkTypes"]
    assert ui["finish"]["finishReason"] == reference.finish_reason
    metadata = ui["message"]["metadata"]
    assert metadata["finishReason"] == reference.finish_reason
    usage = metadata["usage"]
    check_usage(usage["inputTokens"], usage["outputTokens"], metadata.get("usageEstimated", False), reference)


@pytest.mark.parametrize("kind", list(VIA))
def test_text_protocol_token_by_token(gateway: Served, reference: Completion, kind: str) -> None:
    reads: list[str] = []
    body = {"messages": MESSAGES}
    with httpx.stream("POST", chat_url(gateway, VIA[kind], "text"), json=body, timeout=120) as response:
        assert response.status_code == 200
        reads.extend(chunk for chunk in response.iter_text() if chunk)
    assert "".join(reads) == reference.text
    assert len(reads) >= 2, reads


@pytest.mark.parametrize("kind", list(VIA))
def test_openai_sdk_stream_token_by_token(gateway: Served, reference: Completion, kind: str) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model=VIA[kind],
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
    assert "".join(pieces) == reference.text
    assert len(pieces) >= 2, pieces
    assert finish == reference.finish_reason
    assert usage is not None
    # A stream's headers leave before the usage is known: the usage chunk itself says it is an estimate.
    check_usage(
        usage.prompt_tokens, usage.completion_tokens, (usage.model_extra or {}).get("estimated") is True, reference
    )


# --- max_new_tokens ---------------------------------------------------------------------------------------


def test_max_tokens_caps_the_reply_as_the_server_counts_it(gateway: Served, llama: LlamaServer) -> None:
    direct = llama.complete(MESSAGES, max_tokens=3)
    assert (direct.completion_tokens, direct.finish_reason) == (3, "length")
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        for model in VIA.values():
            raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
            completion = raw.parse()
            assert completion.choices[0].message.content == direct.text, model
            assert completion.choices[0].finish_reason == "length"
            usage = completion.usage
            assert usage is not None
            estimated = (usage.model_extra or {}).get("estimated") is True
            assert estimated == (raw.headers.get("x-modelgate-usage") == "estimated"), (model, raw.headers)
            check_usage(usage.prompt_tokens, usage.completion_tokens, estimated, direct)


# --- a prompt over the context window ---------------------------------------------------------------------

TOO_LONG = [{"role": "user", "content": "Repeat after me: " + "lorem ipsum dolor sit amet " * 150}]


@pytest.fixture(scope="module")
def context_error(llama: LlamaServer) -> str:
    """The server's own reason, from a direct non-streamed call."""
    response = llama.chat(TOO_LONG, max_tokens=MAX_NEW_TOKENS)
    assert response.status_code == 400, response.text
    message: str = response.json()["error"]["message"]
    return message


def test_over_the_context_window_is_a_4xx_with_the_servers_reason(gateway: Served, context_error: str) -> None:
    for model in VIA.values():
        response = httpx.post(chat_url(gateway, model), json={"messages": TOO_LONG}, timeout=120)
        assert response.status_code == 400, (model, response.text)
        assert context_error in response.json()["statusMessage"], (model, response.text)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model=VIA["openai"], messages=TOO_LONG, stream=stream)  # type: ignore[call-overload]
            assert context_error in refused.value.message, (stream, refused.value.message)


# --- /api/status: the listing is the only truth (this server answers any id with its one model) -----------


def test_a_model_the_server_does_not_list_is_down_within_seconds(
    llama: LlamaServer, tmp_path: Path, _module_environ: None
) -> None:
    models = [model_toml("via-openai", "llama", ALIAS), model_toml("unlisted", "llama", "no-such-model")]
    with serve(llama, tmp_path, *models) as served:

        def down() -> dict[str, Any] | None:
            status: dict[str, Any] = httpx.get(served.url + "/api/status", timeout=10).json()
            return status if status["models"][UNLISTED]["status"] == "down" else None

        status = wait_for(down, "the unlisted model to be down", timeout=20)
    assert "no-such-model" in status["models"][UNLISTED]["reason"]
    assert status["models"]["smol/via-openai"]["status"] == "ok"


# --- the server dies mid-stream ---------------------------------------------------------------------------


def test_the_server_killed_mid_stream_gives_an_error_part(tmp_path: Path, _module_environ: None) -> None:
    long_reply = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
    with (
        llama_server(tmp_path, dict(os.environ)) as doomed,
        serve(doomed, tmp_path, model_toml("doomed", "llama", ALIAS, max_new_tokens=400)) as served,
    ):
        parts: list[tuple[str, Any]] = []
        with httpx.stream("POST", chat_url(served, "smol/doomed"), json={"messages": long_reply}, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                code, _, value = line.partition(":")
                parts.append((code, json.loads(value)))
                if code == "0" and len([p for p in parts if p[0] == "0"]) == 2:
                    doomed.kill()
    codes = [code for code, _ in parts]
    assert codes.count("0") >= 2
    assert "3" in codes, parts  # the error part
    error = next(value for code, value in parts if code == "3")
    assert isinstance(error, str) and error
