"""Key IP allow-lists behind a reverse proxy: X-Forwarded-For is believed only from the peers
in `trusted_proxies` (default: loopback, where a local nginx or Caddy sits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Gateway

ALLOWED = "203.0.113.7"


def models(gw: Gateway, key: str, forwarded: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if forwarded:
        headers["x-forwarded-for"] = forwarded
    return httpx.get(f"{gw.base_url}/v1/models", headers=headers, timeout=10)


def test_allow_list_sees_the_client_behind_a_trusted_proxy(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory()  # default trusted_proxies: loopback, which is where the test runs
    _, key = gw.create_key(ip_allow=[ALLOWED])
    assert models(gw, key, ALLOWED).status_code == 200
    # a proxy chain: the right-most address not a trusted proxy is the client
    assert models(gw, key, f"198.51.100.9, {ALLOWED}").status_code == 200
    refused = models(gw, key, "198.51.100.9")
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == \
        "This API key may not be used from this address."
    assert models(gw, key, None).status_code == 403  # the proxy itself is not the client


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
        gateway_factory: Callable[..., Gateway], tmp_path: Any) -> None:
    gw = gateway_factory(trusted_proxies=["10.0.0.0/8"])  # the test client is not a proxy
    _, key = gw.create_key(ip_allow=[ALLOWED])
    assert models(gw, key, ALLOWED).status_code == 403  # a spoofed header changes nothing
    _, local_key = gw.create_key(ip_allow=["127.0.0.1"])
    assert models(gw, local_key, ALLOWED).status_code == 200  # the socket peer counts
