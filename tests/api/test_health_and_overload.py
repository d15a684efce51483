"""Liveness, readiness and back-pressure: what a load balancer and an overloaded client see."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import Gateway, jobs_of, ledger_of


def test_healthz_never_touches_the_database(gateway: Gateway) -> None:
    """With the database unreachable, /healthz (liveness) still answers 200 at once and
    /readyz (readiness) answers 503 with Retry-After."""
    ready = httpx.get(f"{gateway.base_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert isinstance(ready.json()["database"]["transactions"], int)
    broken = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    healthy_engine = gateway.services.engine
    gateway.services.engine = broken
    try:
        live = httpx.get(f"{gateway.base_url}/healthz", timeout=10)
        assert live.status_code == 200 and live.json()["status"] == "ok"
        unready = httpx.get(f"{gateway.base_url}/readyz", timeout=10)
        assert unready.status_code == 503
        assert unready.headers["retry-after"] == "1"
        assert unready.json()["status"] == "unavailable"
    finally:
        gateway.services.engine = healthy_engine
        gateway.call(broken.dispose())


def test_overload_answers_503_with_retry_after_and_loses_nothing(gateway_factory: Any) -> None:
    """Ten times more concurrent creates than `jobs.max_in_flight` allows: every answer is a
    200 or a 503 with Retry-After (never a 500), every job created ends, and each succeeded
    job is charged exactly once; refused requests create and charge nothing."""
    gw = gateway_factory(jobs={"max_in_flight": 4})
    key_id, key = gw.create_key("load", balance=10_000_000)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=120,
                                     headers={"authorization": f"Bearer {key}"}) as client:
            return list(await asyncio.gather(*(client.post(
                "/v1/images/generations",
                json={"model": "flux-kontext-pro", "prompt": f"fox {i} sandbox:latency=1",
                      "response_format": "url"}) for i in range(40))))

    answers = asyncio.run(burst())
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 4 and statuses[503] >= 1, statuses
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers.get("retry-after"), refused.headers
        assert refused.json()["error"]["code"] == "overloaded"
    deadline = time.monotonic() + 120
    while True:  # every job that was created reaches its end
        jobs = jobs_of(gw, key_id)
        if all(j.finished_at for j in jobs):
            break
        assert time.monotonic() < deadline, [j.status for j in jobs]
        time.sleep(0.1)
    assert Counter(j.status for j in jobs) == {"succeeded": statuses[200]}
    balance, total, rows = ledger_of(gw, key_id)
    kinds = Counter(kind for kind, _ in rows)
    assert kinds == {"topup": 1, "reserve": statuses[200], "settle": statuses[200]}
    assert balance == total


def test_an_idle_connection_outlives_the_clients_pool_expiry(gateway: Gateway) -> None:
    """httpx (so the openai SDKs) and Node's agent keep an idle connection 5 s; a server that
    also closes at 5 s (uvicorn's default) races them, and the client's next request on that
    connection dies with a reset. Idle 6 s, the connection still carries a request."""
    import socket

    host, port = gateway.base_url.removeprefix("http://").split(":")
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def answer(sock: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            assert chunk, f"the server closed the connection (got {data!r})"
            data += chunk
        return data

    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # idle longer than the clients' own 5 s expiry
        sock.sendall(request)
        assert answer(sock).startswith(b"HTTP/1.1 200")
