"""Image inputs as a client names them: a ``data:`` URL (inline, base64) or an ``https:`` URL, checked once
for every route that takes images (``/v1`` ``image_url`` parts; AI SDK image parts).

Inline images are bounded per image and per request (``Settings.max_image_bytes`` / ``max_images_bytes``),
413 naming the limit. A remote URL is passed on as a URL to providers that take URLs; modelgate itself never
fetches a URL a client names (no server-side request forgery, no unbounded download).

An inline image's data must be base64 (a 400 otherwise, before any upstream call: Ollama decodes it with Go's strict
decoder, and a server that cannot decode an image may answer with a 5xx that would count against its health). Its
first bytes say what it is (``IMAGE_SIGNATURES``): data that a PNG, JPEG, GIF or WebP label promises but that is none
of them is a 400, and an image labelled as another of those formats goes on under its own type (Anthropic, behind
OpenRouter, refuses an image whose media type is not its format; Ollama and OpenAI read the bytes and do not mind).
Data missing its ``=`` padding goes on padded, as every decoder takes it. Other image types go on as labelled,
to the providers that take them (``Provider.check`` refuses them where the protocol cannot).
"""

from __future__ import annotations

import base64
import binascii
import re

from modelgate.chat import Image
from modelgate.errors import BadRequest, PayloadTooLarge

#: Only the head is checked here; the data is checked by decoding it.
_DATA_URL = re.compile(r"data:image/[a-zA-Z0-9.+-]{1,64};base64,")

#: The formats every image-reading upstream takes (OpenAI's and Anthropic's list), by their first bytes.
IMAGE_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF87a"),
    ("image/gif", b"GIF89a"),
)
#: The labels of those formats (``image/jpg``, not a registered type, is what some clients and Ollama call JPEG).
_SIGNED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp"})


def decoded_size(data: str) -> int:
    """The bytes base64 ``data`` decodes to, without decoding it: its ``=`` padding stands for no bytes (so an image
    exactly at the limit is within it); unpadded data counts its whole 6-bit groups."""
    padding = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return len(data) * 3 // 4 - padding


def image_type(data: bytes) -> str | None:
    """The media type ``data`` starts as (PNG, JPEG, GIF or WebP), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media_type for media_type, start in IMAGE_SIGNATURES if data.startswith(start)), None)


class ImageBudget:
    """Checks a request's images one by one, counting the decoded bytes of inline ones against the limits."""

    def __init__(self, per_image: int, per_request: int, *, param: str = "messages") -> None:
        self.per_image, self.per_request, self.total = per_image, per_request, 0
        self.param = param

    def image(self, url: str, where: str, *, detail: str | None = None) -> Image:
        if url.startswith("data:"):
            if not _DATA_URL.match(url):
                raise BadRequest(f"{where}: a data: URL must be data:image/<type>;base64,<data>", param=self.param)
            head, _, data = url.partition(",")
            size = decoded_size(data)
            if size > self.per_image:
                raise PayloadTooLarge(
                    f"{where}: the image is {size} bytes, more than the limit of {self.per_image} bytes per image",
                    data={"limit": self.per_image},
                )
            self.total += size
            if self.total > self.per_request:
                raise PayloadTooLarge(
                    f"{where}: the images add up to more than the limit of {self.per_request} bytes per request",
                    data={"limit": self.per_request},
                )
            url = self._inline(where, head.removeprefix("data:").removesuffix(";base64").lower(), data)
        elif not url.startswith("https://"):
            raise BadRequest(f"{where}: an image URL must be a data: URL or an https: URL", param=self.param)
        return Image(url=url, detail=detail)

    def _inline(self, where: str, declared: str, data: str) -> str:
        """The data: URL that goes on: padded, under the type its bytes are (module docstring)."""
        data += "=" * (-len(data) % 4)
        try:
            actual = image_type(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: the image's data: URL is not valid base64", param=self.param) from None
        if actual is None and declared in _SIGNED_TYPES:
            raise BadRequest(
                f"{where}: the data: URL says {declared}, but its data is no PNG, JPEG, GIF or WebP image",
                param=self.param,
            )
        return f"data:{actual or declared};base64,{data}"
