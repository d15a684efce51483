"""GET / and the API docs pages, which must work with no internet access."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlparse

import httpx

from tests.conftest import Gateway


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


def test_docs_pages_load_every_asset_from_the_gateway(gateway: Gateway) -> None:
    for page, needed in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
                         ("/redoc", ("redoc.standalone.js",))):
        resp = httpx.get(gateway.base_url + page)
        assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
        urls = _asset_urls(resp.text)
        assert all(name in " ".join(urls) for name in needed), urls
        assert "cdn.jsdelivr.net" not in resp.text and "fonts.googleapis" not in resp.text
        for url in urls:
            absolute = urljoin(gateway.base_url + page, url)
            assert urlparse(absolute).netloc == urlparse(gateway.base_url).netloc, url
            asset = httpx.get(absolute)
            assert asset.status_code == 200 and len(asset.content) > 100, url
        # the schema the page loads is served too
        assert "/openapi.json" in resp.text
    assert httpx.get(gateway.base_url + "/openapi.json").json()["info"]["title"] == "fluxgate"


def test_root_links_to_docs_and_health(gateway: Gateway) -> None:
    page = httpx.get(gateway.base_url + "/", headers={"accept": "text/html"})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    links = _asset_urls(page.text)
    for path in ("/docs", "/redoc", "/healthz", "/openapi.json"):
        assert path in links, links
        assert httpx.get(gateway.base_url + path).status_code == 200, path
    as_json = httpx.get(gateway.base_url + "/", headers={"accept": "application/json"})
    assert as_json.status_code == 200
    assert as_json.json()["links"]["/docs"] == "/docs"
