"""The README's provider examples cannot drift: each TOML block of its "Providers" sections is loaded, and served
against the fakes (the router, an ``openai`` server, a TGI), with the request the fake received checked."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings
from tests.fakes import Fakes
from tests.servers import serve_in_thread

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def provider_blocks() -> list[str]:
    start = README.index("\n### Providers\n")
    end = README.index("\n## ", start)
    return re.findall(r"```toml\n(.*?)```", README[start:end], re.S)


def block_with(word: str) -> str:
    (found,) = [block for block in provider_blocks() if word in block]
    return found


def test_every_block_is_a_valid_catalogue(tmp_path: Path) -> None:
    blocks = provider_blocks()
    assert len(blocks) == 5
    kinds = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block, encoding="utf-8")
        catalogue = load_catalogue(path)
        (model,) = catalogue.models
        instance = catalogue.instance(model.provider)
        kinds.append((instance.name, instance.kind, instance.api))
    assert kinds == [
        ("huggingface", "huggingface", "router"),
        ("ollama-cloud", "ollama", None),
        ("llama", "openai", None),
        ("vllm", "openai", None),
        ("tgi", "huggingface", "tgi"),
    ]


def serve_block(tmp_path: Path, block: str, settings: Settings, path: str) -> httpx.Response:
    file = tmp_path / "catalogue.toml"
    file.write_text(block, encoding="utf-8")
    with serve_in_thread(create_app(settings, load_catalogue(file))) as url:
        return httpx.post(url + path, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)


def test_the_routing_example_pins_a_serving_provider(tmp_path: Path, fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    response = serve_block(tmp_path, block_with("routing"), settings, "/api/ai/huggingface/Qwen2.5-72B-Instruct/chat")
    assert response.status_code == 200
    assert fakes.huggingface.last.json["model"] == "Qwen/Qwen2.5-72B-Instruct:together"


def test_the_ollama_cloud_example_sends_its_key_as_ollama_com_takes_it(tmp_path: Path, fakes: Fakes) -> None:
    fakes.ollama.token = "ollama-secret"
    fakes.ollama.thinking_models.add("gpt-oss:120b")  # it thinks, as the catalogue entry says
    env = {"MODELGATE_OLLAMA_CLOUD_BASE_URL": fakes.ollama.url, "OLLAMA_API_KEY": "ollama-secret"}
    response = serve_block(
        tmp_path, block_with("ollama.com"), Settings.from_env(env), "/api/ai/ollama-cloud/gpt-oss-120b/chat"
    )
    assert response.status_code == 200 and '0:"Hello"' in response.text, response.text
    sent = fakes.ollama.last
    assert (sent.path, sent.json["model"]) == ("/api/chat", "gpt-oss:120b")
    assert sent.headers["authorization"] == "Bearer ollama-secret"


def test_the_llama_cpp_example_needs_no_key(tmp_path: Path, fakes: Fakes) -> None:
    block = block_with("llama.cpp").replace("http://127.0.0.1:8080/v1", fakes.openai.url)
    response = serve_block(tmp_path, block, Settings(), "/api/ai/llama/smollm2/chat")
    assert response.status_code == 200 and '0:"Hello"' in response.text
    sent = fakes.openai.last
    assert sent.json["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "authorization" not in sent.headers
    assert sent.json["repeat_penalty"] == 1.1 and "repetition_penalty" not in sent.json  # the mapped name
    assert response.headers["x-modelgate-dropped-params"] == "truncate"  # unmapped: named, not sent


@pytest.mark.parametrize("key", [None, "vllm-secret"])
def test_the_vllm_example_sends_the_key_its_variable_holds(tmp_path: Path, fakes: Fakes, key: str | None) -> None:
    fakes.openai.token = "vllm-secret"
    settings = Settings.from_env(
        {"MODELGATE_VLLM_BASE_URL": fakes.openai.url, **({"VLLM_API_KEY": key} if key else {})}
    )
    response = serve_block(tmp_path, block_with("vLLM"), settings, "/api/ai/vllm/Qwen2.5-7B-Instruct/chat")
    if key is None:
        assert response.status_code == 503 and "set VLLM_API_KEY" in response.json()["statusMessage"]
    else:
        assert response.status_code == 200
        assert fakes.openai.last.headers["authorization"] == "Bearer vllm-secret"


def test_the_tgi_example_speaks_tgi(tmp_path: Path, fakes: Fakes) -> None:
    block = block_with('api = "tgi"').replace("http://tgi:8080", fakes.huggingface.url)
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    response = serve_block(tmp_path, block, settings, "/api/ai/tgi/Mistral-7B-Instruct-v0.3/chat")
    assert response.status_code == 200 and '0:"Hello"' in response.text
    sent = fakes.huggingface.last
    assert sent.path == "/generate_stream" and sent.json["inputs"] == "[INST] hi[/INST]"  # TGI adds the BOS
    assert sent.json["parameters"]["typical_p"] == 0.2
