"""``GET /docs``: Swagger UI for ``/openapi.json``, working offline (no CDN), under a strict CSP.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN (blank without internet) and starts it with an
inline script (which a ``script-src 'self'`` policy forbids). This page instead loads

- Swagger UI's dist files (``swagger-ui-bundle.js``, ``swagger-ui.css``) from the ``fastapi-offline``
  package, which ships them (the Swagger UI 5 build of the npm ``swagger-ui-dist`` package, Apache-2.0),
  served here under ``/docs/assets/{version}/``, where the version is that package's: a new one changes
  the URLs, so an asset is cached as immutable;
- its starter, ``static/docs.js`` (the playground's static tree), which reads the spec URL from the
  page instead of having it written into a script.

Only the page's own origin is allowed (``CONTENT_SECURITY_POLICY``): the documentation never calls
another host, not even Swagger's online validator.
"""

from __future__ import annotations

from html import escape
from importlib import metadata, resources
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelgate.errors import NotFound
from modelgate.routes.playground import HTML, IMMUTABLE, REVALIDATE, static_root, static_version

router = APIRouter(include_in_schema=False)

#: The distribution that ships Swagger UI's dist files, and where they are in it.
ASSETS_DISTRIBUTION = "fastapi-offline"
_ASSETS_PACKAGE = "fastapi_offline"

#: The dist files the page needs, with their media types; nothing else of the package is served.
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}

#: Swagger UI styles elements through the DOM (allowed by ``style-src 'self'``), draws icons from
#: ``data:`` SVGs, and fetches the spec and the "Try it out" calls from this origin only.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API documentation</title>
<link rel="icon" href="{root}/static/{static}/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{root}/docs/assets/{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{openapi}"></div>
<script src="{root}/docs/assets/{assets}/swagger-ui-bundle.js"></script>
<script src="{root}/static/{static}/docs.js"></script>
</body>
</html>
"""


def assets_root() -> Path:
    return Path(str(resources.files(_ASSETS_PACKAGE).joinpath("static")))


def assets_version() -> str:
    return metadata.version(ASSETS_DISTRIBUTION)


@router.api_route("/docs", methods=["GET", "HEAD"])
async def docs(request: Request) -> Response:
    root = escape(request.scope.get("root_path", ""))
    page = _PAGE.format(
        title=escape(request.app.title),
        root=root,
        openapi=escape(request.app.openapi_url or "/openapi.json"),
        assets=escape(assets_version()),
        static=static_version(static_root()),
    )
    headers = {
        "Cache-Control": REVALIDATE,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }
    return Response(page, media_type=HTML, headers=headers)


@router.api_route("/docs/assets/{version}/{name}", methods=["GET", "HEAD"])
async def docs_asset(version: str, name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"No documentation asset {name!r}")
    cache = IMMUTABLE if version == assets_version() else REVALIDATE
    body = (assets_root() / name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})
