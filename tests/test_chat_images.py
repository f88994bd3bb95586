"""Images on ``/api/ai/...``: AI SDK 5 ``file`` parts and AI SDK 4 ``experimental_attachments`` reach a vision
model's provider in its own format (OpenRouter: ``image_url`` parts), over loopback against the fakes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.errors import PayloadTooLarge
from modelgate.images import ImageBudget
from modelgate.settings import Settings
from tests.fakes import Fakes
from tests.servers import serve_in_thread

VISION = "/api/ai/openrouter/gemini-2.0-pro-exp-02-05/chat"  # capabilities: tools, json, vision
TEXT_ONLY = "/api/ai/openrouter/deepseek-chat/chat"
IMAGE = "data:image/png;base64,iVBORw0KGgo="
EXPECTED = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": IMAGE}}],
    }
]


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        yield url


def _v5(file_part: dict[str, Any]) -> dict[str, Any]:
    parts = [{"type": "text", "text": "What is this?"}, file_part]
    return {"id": "c1", "messages": [{"id": "m1", "role": "user", "parts": parts}], "trigger": "submit-message"}


def test_ai_sdk_5_file_part(service: str, fakes: Fakes) -> None:
    response = httpx.post(service + VISION, json=_v5({"type": "file", "mediaType": "image/png", "url": IMAGE}))
    assert response.status_code == 200, response.text
    assert fakes.openrouter.last.json["messages"] == EXPECTED


@pytest.mark.parametrize("media_type", ["image", "image/*"])
def test_a_file_part_named_an_image_by_its_top_level_type_is_an_image(
    service: str, fakes: Fakes, media_type: str
) -> None:
    """AI SDK 7's ``FileUIPart.mediaType`` may be the top-level segment alone (``image``; ``image/*`` is the same),
    and its providers read such a part as an image (provider-utils ``getTopLevelMediaType``)."""
    response = httpx.post(service + VISION, json=_v5({"type": "file", "mediaType": media_type, "url": IMAGE}))
    assert response.status_code == 200, response.text
    assert fakes.openrouter.last.json["messages"] == EXPECTED


def test_ai_sdk_4_attachments(service: str, fakes: Fakes) -> None:
    attachment = {"name": "x.png", "contentType": "image/png", "url": IMAGE}
    body = {"messages": [{"role": "user", "content": "What is this?", "experimental_attachments": [attachment]}]}
    response = httpx.post(service + VISION, json=body)
    assert response.status_code == 200, response.text
    assert fakes.openrouter.last.json["messages"] == EXPECTED


def test_ai_sdk_5_parts_keep_their_order(service: str, fakes: Fakes) -> None:
    """An image before the text (``useChat`` puts the files first): the text and images go upstream in that
    order, each text part its own, as the AI SDK's ``convertToModelMessages`` hands them to a provider."""
    file = {"type": "file", "mediaType": "image/png", "url": IMAGE}
    parts = [file, {"type": "text", "text": "What is this"}, {"type": "text", "text": "?"}]
    body = {"messages": [{"id": "m1", "role": "user", "parts": parts}], "trigger": "submit-message"}
    response = httpx.post(service + VISION, json=body)
    assert response.status_code == 200, response.text
    assert fakes.openrouter.last.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": IMAGE}},
                {"type": "text", "text": "What is this"},
                {"type": "text", "text": "?"},
            ],
        }
    ]


def test_an_image_for_a_model_without_vision_is_refused(service: str, fakes: Fakes) -> None:
    response = httpx.post(service + TEXT_ONLY, json=_v5({"type": "file", "mediaType": "image/png", "url": IMAGE}))
    assert response.status_code == 400
    assert "openrouter/deepseek-chat" in response.text and "'vision'" in response.text
    assert fakes.openrouter.requests == []


def test_a_file_that_is_not_an_image_is_refused(service: str, fakes: Fakes) -> None:
    pdf = {"type": "file", "mediaType": "application/pdf", "url": "data:application/pdf;base64,JVBERi0="}
    response = httpx.post(service + VISION, json=_v5(pdf))
    assert response.status_code == 400
    assert "not supported unless it is an image" in response.text and "messages[0].parts[1]" in response.text
    assert fakes.openrouter.requests == []


@pytest.mark.parametrize("size", [4, 5, 6])  # base64 padded with "==", "=" and not at all
@pytest.mark.parametrize("padded", [True, False])
def test_an_image_is_counted_by_its_decoded_bytes(size: int, padded: bool) -> None:
    data = base64.b64encode(b"\xff\xd8\xff" + b"\0" * (size - 3)).decode()  # a JPEG's first bytes
    url = f"data:image/jpeg;base64,{data if padded else data.rstrip('=')}"
    ImageBudget(per_image=size, per_request=2 * size).image(url, "x")  # exactly at the limit: within it
    two = ImageBudget(per_image=size, per_request=2 * size)
    two.image(url, "x")
    two.image(url, "y")  # the request's total counts the same bytes
    assert two.total == 2 * size
    with pytest.raises(PayloadTooLarge, match="per image"):
        ImageBudget(per_image=size - 1, per_request=100).image(url, "x")
    over = ImageBudget(per_image=size, per_request=2 * size - 1)
    over.image(url, "x")
    with pytest.raises(PayloadTooLarge, match="per request"):
        over.image(url, "y")
