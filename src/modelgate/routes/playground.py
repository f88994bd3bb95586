"""``GET /``: the playground page, and ``GET /static/{version}/{path}``: its assets, shipped in the package.

The page is plain HTML/CSS/JS from ``modelgate/static/`` (no build step, no third-party host: it
works offline). Asset URLs carry a version, the hash of the whole static tree, so that

- the page itself is always revalidated (``no-cache`` + ETag), and
- an asset requested under the current version is cached for a year (``immutable``): a new package
  (or an edited file in a dev checkout) changes the version and so every URL. ES modules import each
  other relatively (``./markdown.js``), so the version travels with them without any rewriting.

An asset requested under another version is still served (a page cached before an upgrade keeps
working) but with ``no-cache``. Paths are resolved inside the static directory only.

The versions are recomputed per request: the tree is a few tens of kilobytes, the page is not a hot
path, and it keeps this module free of state (see STYLE.md habit 7).
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelgate.errors import NotFound

router = APIRouter(include_in_schema=False)

#: The placeholder ``index.html`` uses for the asset version.
VERSION_PLACEHOLDER = "__STATIC_VERSION__"

HTML = "text/html; charset=utf-8"

#: Asset types served under ``/static``; anything else in the tree (index.html, a stray .py) is not.
MEDIA_TYPES: dict[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",  # shown, not downloaded (LICENSES.md)
    ".txt": "text/plain; charset=utf-8",
}

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

#: Defence in depth behind the page's own sanitizer: nothing but this origin, no inline script,
#: no plugins, no framing. ``connect-src 'self'`` also keeps the page from calling any other host.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def static_root() -> Path:
    return Path(str(resources.files("modelgate").joinpath("static")))


def static_version(root: Path) -> str:
    """Hash of every served file (path and bytes): changes whenever any asset does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in MEDIA_TYPES):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match", "")
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def _respond(request: Request, body: bytes, media_type: str, headers: dict[str, str]) -> Response:
    etag = _etag(body)
    headers = {**headers, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def resolve_asset(root: Path, path: str) -> Path:
    """``path`` inside ``root`` as a served file, or ``NotFound`` (never anything outside the tree)."""
    parts = path.split("/")
    if not all(_SEGMENT.match(part) for part in parts):
        raise NotFound(f"No static file {path!r}")
    file = root.joinpath(*parts)
    if file.suffix not in MEDIA_TYPES or not file.is_file() or not file.resolve().is_relative_to(root.resolve()):
        raise NotFound(f"No static file {path!r}")
    return file


@router.api_route("/", methods=["GET", "HEAD"])
async def playground(request: Request) -> Response:
    root = static_root()
    html = (root / "index.html").read_text(encoding="utf-8")
    body = html.replace(VERSION_PLACEHOLDER, static_version(root)).encode()
    headers = {
        "Cache-Control": REVALIDATE,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    return _respond(request, body, HTML, headers)


@router.api_route("/static/{version}/{path:path}", methods=["GET", "HEAD"])
async def static_asset(request: Request, version: str, path: str) -> Response:
    root = static_root()
    file = resolve_asset(root, path)
    cache = IMMUTABLE if version == static_version(root) else REVALIDATE
    return _respond(request, file.read_bytes(), MEDIA_TYPES[file.suffix], {"Cache-Control": cache})
