"""URLs an upstream names get the SSRF policy (issue 17 item 1), and each channel has its own
connection pools (issue 9): through the real gateway with upstreams stubbed at the transport
(respx) in their documented wire formats, and a real loopback "canary" server that counts the
connections it receives (respx lets loopback through, so a request that is not refused really
arrives there). The gateway's tests set `limits.fetch_allow` to loopback: it must not open
loopback to upstream-named URLs."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import respx

from adapters.base import UpstreamOutput, UpstreamRequest, UpstreamState
from gateway.jobs.connections import UNLIMITED_POOL, pool_size
from gateway.jobs.routing import build_router
from gateway.settings import ChannelSettings, Settings
from tests.conftest import Gateway, jobs_of, ledger_of
from tests.images.httpserver import Request, Server, response
from tests.jobs.test_failover import PNG

A = "https://a.bfl.test"
RESELLER = "https://reseller.test"
BALANCE = 1_000_000


@dataclass
class Canary:
    """A loopback HTTP server answering a PNG to any GET; counts connections."""

    port: int
    connections: list[tuple[str, int]] = field(default_factory=list)

    def url(self, path: str = "internal.png") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


@pytest.fixture
def canary() -> Iterator[Canary]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: Any) -> None:
            pass

    found: list[tuple[str, int]] = []

    class Counting(ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            found.append(client_address)
            return True

    httpd = Counting(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Canary(httpd.server_address[1], found)
    httpd.shutdown()


@pytest.fixture
def mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    monkeypatch.setenv("A_KEY", "key-a")
    monkeypatch.setenv("R_KEY", "key-r")
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()  # the gateway itself, and the canary
        yield router


def bfl(mock: respx.MockRouter, *, sample: str, polling_url: str = f"{A}/v1/get_result?id=t1"
        ) -> respx.Route:
    """A BFL upstream at A: create -> {id, polling_url}; polling_url -> Ready + sample."""
    mock.post(f"{A}/v1/flux-kontext-pro").mock(return_value=httpx.Response(
        200, json={"id": "t1", "polling_url": polling_url}))
    return mock.get(polling_url.split("?")[0]).mock(return_value=httpx.Response(200, json={
        "id": "t1", "status": "Ready", "result": {"sample": sample}}))


def start(gateway_factory: Any, channel: dict[str, Any]) -> tuple[Gateway, str, str]:
    gw: Gateway = gateway_factory(channels=[channel],
                                  jobs={"poll_initial": 0.01, "poll_max": 0.05})
    key_id, key = gw.create_key(balance=BALANCE)
    return gw, key_id, key


def bfl_channel(**extra: Any) -> dict[str, Any]:
    return {"name": "A", "type": "bfl", "base_url": A, "api_key_env": "A_KEY", **extra}


def generate(gw: Gateway, key: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": "a fox",
                            "response_format": "url"}, timeout=60)


def assert_failed_uncharged(gw: Gateway, key_id: str, resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == code
    [job] = jobs_of(gw, key_id)
    assert (job.status, job.error_code) == ("failed", code), job.error_message
    balance, total, _rows = ledger_of(gw, key_id)
    assert balance == total == BALANCE  # reserved, then released: nothing charged


# --- result URLs ------------------------------------------------------------------------------

def test_bfl_result_on_loopback_is_refused_uncontacted(gateway_factory: Any, canary: Canary,
                                                       mock: respx.MockRouter) -> None:
    bfl(mock, sample=canary.url())
    gw, key_id, key = start(gateway_factory, bfl_channel(result_hosts=["*.a.bfl.test"]))
    assert_failed_uncharged(gw, key_id, generate(gw, key), "result_url_not_allowed")
    assert canary.connections == []


def test_openai_compatible_data_url_on_loopback_is_refused(gateway_factory: Any, canary: Canary,
                                                           mock: respx.MockRouter) -> None:
    mock.post(f"{RESELLER}/v1/images/generations").mock(return_value=httpx.Response(
        200, json={"created": 1, "data": [{"url": canary.url()}]}))
    gw, key_id, key = start(gateway_factory, {
        "name": "R", "type": "openai", "base_url": RESELLER, "api_key_env": "R_KEY",
        "options": {"response_format": "url"}})
    assert_failed_uncharged(gw, key_id, generate(gw, key), "result_url_not_allowed")
    assert canary.connections == []


def test_redirect_from_an_allowed_host_to_loopback_is_refused(
        gateway_factory: Any, canary: Canary, mock: respx.MockRouter) -> None:
    allowed = mock.get("https://delivery.a.bfl.test/t1.png").mock(return_value=httpx.Response(
        302, headers={"location": canary.url()}))
    bfl(mock, sample="https://delivery.a.bfl.test/t1.png")
    gw, key_id, key = start(gateway_factory, bfl_channel(result_hosts=["*.a.bfl.test"]))
    assert_failed_uncharged(gw, key_id, generate(gw, key), "result_url_not_allowed")
    assert allowed.call_count == 1  # not retried: a refusal is final
    assert canary.connections == []


def test_polling_url_on_a_foreign_host_is_refused_uncontacted(
        gateway_factory: Any, canary: Canary, mock: respx.MockRouter) -> None:
    mock.post(f"{A}/v1/flux-kontext-pro").mock(return_value=httpx.Response(
        200, json={"id": "t1", "polling_url": canary.url("v1/get_result?id=t1")}))
    gw, key_id, key = start(gateway_factory, bfl_channel())
    assert_failed_uncharged(gw, key_id, generate(gw, key), "polling_url_not_allowed")
    assert canary.connections == []


def test_listed_result_host_and_bfl_documented_hosts_work(
        gateway_factory: Any, canary: Canary, mock: respx.MockRouter) -> None:
    """A `result_hosts` entry (host:port) opens exactly that destination; BFL's own polling
    and delivery hosts (*.bfl.ai) need no entry."""
    bfl(mock, sample=canary.url())
    gw, key_id, key = start(gateway_factory,
                            bfl_channel(result_hosts=[f"127.0.0.1:{canary.port}"]))
    assert generate(gw, key).status_code == 200
    assert len(canary.connections) == 1
    assert jobs_of(gw, key_id)[0].charged == 40_000

    sample = "https://delivery-eu1.bfl.ai/results/t2/sample.png?sig=x"
    delivery = mock.get(sample).mock(return_value=httpx.Response(
        200, content=PNG, headers={"content-type": "image/png"}))
    bfl(mock, sample=sample, polling_url="https://api.eu2.bfl.ai/v1/get_result?id=t1")
    gw2, _key_id, key2 = start(gateway_factory, bfl_channel())
    resp = generate(gw2, key2)
    assert resp.status_code == 200, resp.text
    assert delivery.call_count == 1
    assert "x-key" not in delivery.calls.last.request.headers


# --- connection pools -------------------------------------------------------------------------

async def test_pool_size_follows_the_concurrency_cap() -> None:
    assert pool_size(500) == 625
    assert pool_size(24, max_connections=5) == 5
    router = build_router(Settings(channels=[
        ChannelSettings(name="bfl", type="bfl"),  # BFL's default cap, 24
        ChannelSettings(name="r", type="openai", base_url=RESELLER),  # no cap
        ChannelSettings(name="s", type="sandbox", max_concurrency=3, max_connections=7)]),
        env={"BFL_API_KEY": "k"})
    shown = {c.name: c.describe()["max_connections"] for c in router.channels}
    assert shown == {"bfl": 32, "r": UNLIMITED_POOL, "s": 7}  # as the admin API lists them
    await router.aclose()


def _b64_answer() -> bytes:
    body = {"created": 1, "data": [{"b64_json": base64.b64encode(PNG).decode()}]}
    return response(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


async def test_a_channel_reaches_its_concurrency_and_downloads_do_not_queue() -> None:
    """A channel capped at N (more than the 200 connections the shared client had) gets N
    submits to its upstream at once, and while they all hang a result download still
    completes at once on its own pool; shutdown closes the pools."""
    n = 210
    held: list[Request] = []
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_upstream(request: Request, writer: asyncio.StreamWriter) -> None:
        held.append(request)
        if len(held) >= n:
            arrived.set()
        await release.wait()
        writer.write(_b64_answer())
        await writer.drain()

    async def cdn(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, PNG, {"Content-Type": "image/png"}))
        await writer.drain()

    async with Server(slow_upstream) as upstream, Server(cdn) as results:
        settings = Settings(channels=[ChannelSettings(
            name="slow", type="openai", base_url=upstream.url, max_concurrency=n,
            result_hosts=[f"127.0.0.1:{results.port}"])])
        router = build_router(settings, env={})
        [channel] = router.channels
        req = UpstreamRequest(model="flux-kontext-pro", prompt="x")
        submits = [asyncio.create_task(channel.adapter.submit(req)) for _ in range(n)]
        try:
            await asyncio.wait_for(arrived.wait(), timeout=60)
            assert len(held) == n and upstream.connections == n  # all in flight at once
            data = await asyncio.wait_for(
                channel.adapter.download(UpstreamOutput(url=f"{results.url}/r.png")), 10)
            assert data == PNG and results.connections == 1
        finally:
            release.set()
            done = await asyncio.gather(*submits, return_exceptions=True)
        assert all(getattr(j, "state", None) is UpstreamState.SUCCEEDED for j in done), done[:3]
        await router.aclose()
        assert channel.clients is not None and channel.clients.api.is_closed
        assert channel.clients.results.is_closed
