"""``GET /`` and ``/static/{version}/...`` over a real socket: caching, confinement, offline-only assets."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.routes.playground import CONTENT_SECURITY_POLICY, IMMUTABLE, REVALIDATE, static_root, static_version
from modelgate.settings import Settings
from tests.servers import serve_in_thread

STATIC = Path(__file__).resolve().parent.parent / "src" / "modelgate" / "static"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with serve_in_thread(create_app(Settings())) as url, httpx.Client(base_url=url, trust_env=False) as http:
        yield http


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


def test_the_page_is_served_at_the_root_and_always_revalidated(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == REVALIDATE
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "__STATIC_VERSION__" not in response.text
    again = client.get("/", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_assets_under_the_current_version_are_immutable_and_others_revalidate(client: httpx.Client) -> None:
    html = client.get("/").text
    version = static_version(static_root())
    urls = asset_urls(html)
    assert {u.rsplit("/", 1)[1] for u in urls} >= {"app.js", "style.css", "favicon.svg", "LICENSES.md"}
    for url in urls:
        assert url.startswith(f"/static/{version}/")
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["x-content-type-options"] == "nosniff"
        assert client.get(url, headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    stale = client.get("/static/0000000000000000/app.js")
    assert stale.status_code == 200
    assert stale.headers["cache-control"] == REVALIDATE
    assert stale.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get(f"/static/{version}/LICENSES.md").headers["content-type"] == "text/plain; charset=utf-8"


def test_the_version_changes_when_an_asset_changes(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("one")
    before = static_version(tmp_path)
    (tmp_path / "app.js").write_text("two")
    assert static_version(tmp_path) != before


@pytest.mark.parametrize(
    "path",
    [
        "/static/v/../catalogue.toml",
        "/static/v/%2e%2e/catalogue.toml",
        "/static/v/..%2fcatalogue.toml",
        "/static/v/index.html",  # the page is only served at / (with its headers)
        "/static/v/nope.js",
        "/static/v/.hidden.js",
        "/static/v/",
    ],
)
def test_nothing_outside_the_assets_is_served(client: httpx.Client, path: str) -> None:
    # http.client sends the path as written (httpx would resolve the dot segments first).
    connection = http.client.HTTPConnection(client.base_url.host, client.base_url.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 404, path
    assert json.loads(body)["statusCode"] == 404
    assert b"[tool" not in body and b"models_order" not in body


def test_no_asset_loads_anything_from_another_host() -> None:
    """Offline by construction: no absolute URL in a script/style load, a fetch, an @import or a url()."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r'<(script|link|img|iframe)[^>]+(src|href)="(https?:)?//', html)
    for path in STATIC.glob("*.js"):
        source = path.read_text()
        assert not re.search(r"""(import|fetch)\s*\(?\s*["'`](https?:)?//""", source), path.name
        assert not re.search(r"""from\s+["'](https?:)?//""", source), path.name
    css = (STATIC / "style.css").read_text()
    assert "@import" not in css
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", css)


def test_icons_ship_for_every_icon_of_the_default_catalogue_but_microsoft() -> None:
    shipped = json.loads((STATIC / "icons.json").read_text())["icons"]
    used = {model.icon for model in load_catalogue().models}
    # Simple Icons removed Microsoft's logos at Microsoft's request: a monogram stands in (LICENSES.md).
    assert set(shipped) == used - {"simple-icons:microsoft"}
    for icon_id, icon in shipped.items():
        assert re.fullmatch(r"0 0 \d+ \d+", icon["viewBox"]), icon_id
        assert icon["paths"] and all(re.fullmatch(r"[MmLlHhVvCcSsQqTtAaZz0-9eE.,\s-]+", d) for d in icon["paths"])
    licences = (STATIC / "LICENSES.md").read_text()
    for icon_id in used:
        assert f"`{icon_id}`" in licences
    assert "Lorc" in licences and "Delapouite" in licences and "CC BY 3.0" in licences


def test_head_of_the_page_has_headers_and_no_body() -> None:
    with serve_in_thread(create_app(Settings())) as url:
        get = httpx.get(url + "/")
        head = httpx.head(url + "/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-type"] == get.headers["content-type"]
