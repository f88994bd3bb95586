"""Images to a Cloudflare Workers AI vision model, in the vision models' input: ``image_url`` content parts, each a
``data:`` URL (``providers/cloudflare.py``), over loopback against the fake, which checks message content as the real
schemas do: image parts only for vision models, never an HTTP URL, and the top-level ``image`` byte array only for
llama-3.2-11b-vision, the one model whose schema has it."""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, parse_catalogue
from modelgate.settings import Settings
from tests.fakes import Fakes, Reply
from tests.fakes.cloudflare import ACCOUNT, TOKEN
from tests.servers import serve_in_thread

VISION_UPSTREAM = "@cf/meta/llama-3.2-11b-vision-instruct"
#: A vision model whose input has no top-level ``image``: only image parts reach it.
SCOUT_UPSTREAM = "@cf/meta/llama-4-scout-17b-16e-instruct"
#: A real (1 by 1, transparent) PNG: the bytes must arrive intact.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def _model(name: str, upstream: str, capabilities: str) -> str:
    return f"""
[[models]]
publisher = "cf"
name = "{name}"
provider = "cloudflare"
type = "chat"
capabilities = {capabilities}
[models.configuration]
model = "{upstream}"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = -1
truncate = 2048
"""


def vision_catalogue() -> Catalogue:
    text = (
        _model("vision", VISION_UPSTREAM, '["vision"]')
        + _model("scout", SCOUT_UPSTREAM, '["vision", "json"]')
        + _model("text", "@cf/meta/llama-3.3-70b-instruct-fp8-fast", '["tools", "json"]')
    )
    return parse_catalogue(tomllib.loads(text), source="vision.toml")


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, vision_catalogue())) as url:
        yield url


@pytest.fixture
def client(service: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=service + "/v1", api_key="unused", max_retries=0)


def _ask(*images: str) -> list[Any]:
    parts: list[Any] = [{"type": "text", "text": "What is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]


@pytest.mark.parametrize("model", ["cf/vision", "cf/scout"])
def test_an_image_reaches_the_vision_model_as_an_image_part(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fakes.cloudflare.script(Reply(tokens=["A ", "dot."]))
    stream = client.chat.completions.create(model=model, messages=_ask(DATA_URL), stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "A dot."
    sent = fakes.cloudflare.last
    assert sent.path.endswith(f"/ai/run/{VISION_UPSTREAM if model == 'cf/vision' else SCOUT_UPSTREAM}")
    assert "image" not in sent.json
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": DATA_URL}},
            ],
        },
    ]
    assert sent.json["stream"] is True


def test_several_images_reach_it_in_the_clients_order(client: openai.OpenAI, fakes: Fakes) -> None:
    """Cloudflare's own provider sends several image parts since 3.1.4; their order against the text is kept."""
    fakes.cloudflare.script(Reply(tokens=["Two dots."]))
    second = "data:image/png;base64," + base64.b64encode(PNG[:-1] + b"\x00").decode()
    parts: Any = [
        {"type": "image_url", "image_url": {"url": DATA_URL}},
        {"type": "text", "text": "against"},
        {"type": "image_url", "image_url": {"url": second}},
    ]
    reply = client.chat.completions.create(model="cf/scout", messages=[{"role": "user", "content": parts}])
    assert reply.choices[0].message.content == "Two dots."
    assert fakes.cloudflare.last.json["messages"] == [{"role": "user", "content": parts}]


def test_json_mode_with_an_image_is_one_whole_call_with_the_part(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=['{"shape": "dot"}']))
    reply = client.chat.completions.create(
        model="cf/scout", messages=_ask(DATA_URL), response_format={"type": "json_object"}
    )
    assert json.loads(reply.choices[0].message.content or "") == {"shape": "dot"}
    sent = fakes.cloudflare.last.json
    assert "stream" not in sent and sent["response_format"]["type"] == "json_schema"
    assert sent["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": DATA_URL}}


@pytest.mark.parametrize(("detail", "reported"), [("low", True), ("high", True), ("auto", False), (None, False)])
def test_an_image_detail_the_protocol_cannot_carry_is_reported(
    client: openai.OpenAI, fakes: Fakes, detail: str | None, reported: bool
) -> None:
    """Workers AI takes the image's bytes and nothing else: a ``detail`` hint (the resolution the image is read
    at, and so its cost) is named as dropped, never lost without a word; ``auto`` asks for nothing."""
    fakes.cloudflare.script(Reply(tokens=["A dot."]))
    image: dict[str, Any] = {"url": DATA_URL} | ({"detail": detail} if detail else {})
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": image}]}
    ]
    raw = client.chat.completions.with_raw_response.create(model="cf/vision", messages=messages)
    assert raw.parse().choices[0].message.content == "A dot."
    dropped = raw.headers.get("x-modelgate-dropped-params", "")
    assert ("image_url.detail" in dropped.split(",")) is reported, dropped
    assert "detail" not in fakes.cloudflare.last.json


def test_an_ai_sdk_5_file_part_reaches_it_the_same_way(service: str, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["A dot."]))
    parts = [{"type": "text", "text": "What is this?"}, {"type": "file", "mediaType": "image/png", "url": DATA_URL}]
    body = {"id": "c", "messages": [{"id": "m", "role": "user", "parts": parts}], "trigger": "submit-message"}
    response = httpx.post(service + "/api/ai/cloudflare/vision/chat", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert '"delta":"A dot."' in response.text
    assert fakes.cloudflare.last.json["messages"] == [{"role": "user", "content": parts_sent()}]


def test_a_remote_image_url_is_refused_before_any_upstream_call(client: openai.OpenAI, fakes: Fakes) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="cf/vision", messages=_ask("https://example.org/cat.png"))
    message = refused.value.response.json()["error"]["message"]
    assert "cf/vision" in message and "only inline" in message and "does not fetch" in message
    assert fakes.cloudflare.requests == []


def test_an_image_with_broken_base64_is_refused(client: openai.OpenAI, fakes: Fakes) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="cf/vision", messages=_ask("data:image/png;base64,not*base64!"))
    assert "not valid base64" in refused.value.response.json()["error"]["message"]
    assert fakes.cloudflare.requests == []


def test_a_cloudflare_model_without_vision_refuses_images(client: openai.OpenAI, fakes: Fakes) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="cf/text", messages=_ask(DATA_URL))
    error = refused.value.response.json()["error"]
    assert "cf/text" in error["message"] and "'vision'" in error["message"]
    assert fakes.cloudflare.requests == []


def test_text_without_images_sends_no_image_field(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["Hi"]))
    reply = client.chat.completions.create(model="cf/vision", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == "Hi"
    assert "image" not in fakes.cloudflare.last.json
    assert fakes.cloudflare.last.json["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("model", "image", "accepted"),
    [
        (VISION_UPSTREAM, list(PNG), True),
        (VISION_UPSTREAM, [0, 256], False),
        (VISION_UPSTREAM, [1.5], False),
        (VISION_UPSTREAM, "binary", True),  # the schema's other form (modelgate sends the array)
        ("@cf/meta/llama-3.3-70b-instruct-fp8-fast", list(PNG), False),  # no image in a text model's schema
        (SCOUT_UPSTREAM, list(PNG), False),  # nor in Llama 4 Scout's: it takes image parts only
    ],
)
def test_the_fake_checks_the_image_field(fakes: Fakes, model: str, image: Any, accepted: bool) -> None:
    """The fake is strict where the real schema is, so the adapter's shape is really checked."""
    body = {"messages": [{"role": "user", "content": "What is this?"}], "image": image}
    url = f"{fakes.cloudflare.url}/accounts/{ACCOUNT}/ai/run/{model}"
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (response.status_code == 200) is accepted, response.text
    if not accepted:
        assert response.json()["errors"][0]["code"] == 5006


@pytest.mark.parametrize(
    ("model", "url", "accepted"),
    [
        (SCOUT_UPSTREAM, DATA_URL, True),
        (VISION_UPSTREAM, DATA_URL, True),
        (SCOUT_UPSTREAM, "https://example.org/cat.png", False),  # "HTTP URL will not be accepted"
        ("@cf/meta/llama-3.3-70b-instruct-fp8-fast", DATA_URL, False),  # a text model's parts are text
    ],
)
def test_the_fake_checks_image_parts(fakes: Fakes, model: str, url: str, accepted: bool) -> None:
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"messages": [{"role": "user", "content": parts}]}
    response = httpx.post(
        f"{fakes.cloudflare.url}/accounts/{ACCOUNT}/ai/run/{model}",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert (response.status_code == 200) is accepted, response.text


def parts_sent() -> list[Any]:
    return [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": DATA_URL}}]
