"""Image inputs as a client names them: a ``data:`` URL (inline, base64) or an ``https:`` URL, checked once
for every route that takes images (``/v1`` ``image_url`` parts; AI SDK image parts).

Inline images are bounded per image and per request (``Settings.max_image_bytes`` / ``max_images_bytes``),
413 naming the limit. A remote URL is passed on as a URL to providers that take URLs; modelgate itself never
fetches a URL a client names (no server-side request forgery, no unbounded download).
"""

from __future__ import annotations

import re

from modelgate.chat import Image
from modelgate.errors import BadRequest, PayloadTooLarge

#: Only the head is checked; the provider decodes the data.
_DATA_URL = re.compile(r"data:image/[a-zA-Z0-9.+-]{1,64};base64,")


def decoded_size(data: str) -> int:
    """The bytes base64 ``data`` decodes to, without decoding it: its ``=`` padding stands for no bytes (so an image
    exactly at the limit is within it); unpadded data counts its whole 6-bit groups."""
    padding = 2 if data.endswith("==") else 1 if data.endswith("=") else 0
    return len(data) * 3 // 4 - padding


class ImageBudget:
    """Checks a request's images one by one, counting the decoded bytes of inline ones against the limits."""

    def __init__(self, per_image: int, per_request: int, *, param: str = "messages") -> None:
        self.per_image, self.per_request, self.total = per_image, per_request, 0
        self.param = param

    def image(self, url: str, where: str, *, detail: str | None = None) -> Image:
        if url.startswith("data:"):
            if not _DATA_URL.match(url):
                raise BadRequest(f"{where}: a data: URL must be data:image/<type>;base64,<data>", param=self.param)
            size = decoded_size(url.partition(",")[2])
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
        elif not url.startswith("https://"):
            raise BadRequest(f"{where}: an image URL must be a data: URL or an https: URL", param=self.param)
        return Image(url=url, detail=detail)
