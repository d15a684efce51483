"""User URLs reach the SSRF-safe fetcher from every entry point of the generations API:
without an allow-list, loopback and metadata addresses are refused before any connection."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ImageServer, png_bytes


@pytest.mark.parametrize("where", ["prompt", "input_image", "input_image_2"])
def test_loopback_url_refused_at_every_entry_point(gateway_factory: Any, image_server: ImageServer,
                                                   where: str) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    url = image_server.add("secret.png", png_bytes())
    body: dict[str, Any] = {"model": "flux-kontext-pro", "prompt": "edit it"}
    if where == "prompt":
        body["prompt"] = f"{url} edit it"
    elif where == "input_image":
        body["input_image"] = url
    else:
        body["input_image"] = "data:image/png;base64," + __import__("base64").b64encode(
            png_bytes()).decode()
        body["input_image_2"] = url
    resp = httpx.post(f"{gw.base_url}/v1/images/generations", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "url_not_allowed"
    assert image_server.hits == []  # no connection reached the canary


def test_metadata_address_refused(gateway_factory: Any) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    resp = httpx.post(f"{gw.base_url}/v1/images/generations",
                      json={"model": "flux-kontext-pro",
                            "prompt": "http://169.254.169.254/latest/meta-data/x.png edit"},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "url_not_allowed"
