"""The upstream connection pool (gateway/aiohttp_transport.py) against real loopback servers:
what reaches the wire, how failures are classified (a request that went out is never "not
sent", or failover would bill the job twice), the pool's cap and its reuse of connections."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from adapters.base import UpstreamAmbiguous, UpstreamRejected
from adapters.transport import submit_call
from gateway.aiohttp_transport import AiohttpTransport
from gateway.jobs.connections import channel_clients
from gateway.settings import ChannelSettings

PHASES = httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=30.0)


@dataclass
class Seen:
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Seen], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def answer(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        seen.open_now += 1
        seen.most_open = max(seen.most_open, seen.open_now)
        try:
            await handler(reader, writer, seen)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            seen.open_now -= 1
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        srv.close()


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          seen: Seen) -> None:
    while True:
        request = await read_request(reader)
        seen.requests.append(request)
        writer.write(answer(json.dumps({"n": len(seen.requests)}).encode(),
                            "Content-Type: application/json", "X-Twice: a", "X-Twice: b"))
        await writer.drain()


async def test_the_request_reaches_the_wire_whole_and_connections_are_reused() -> None:
    async with server(keep_alive_echo) as (url, seen), httpx.AsyncClient(
            transport=AiohttpTransport(limits=httpx.Limits(max_connections=4))) as client:
        files = {"image": ("a.png", b"\x89PNG" + bytes(range(256)) * 4, "image/png")}
        resp = await client.post(f"{url}/v1/edit?x=a%2Fb&y=%C3%A9", files=files,
                                 data={"prompt": "p"}, headers={"X-Key": "k"})
        assert resp.status_code == 200 and resp.json() == {"n": 1}
        assert resp.headers.get_list("x-twice") == ["a", "b"]
        line, headers, body = seen.requests[0]
        assert line == "POST /v1/edit?x=a%2Fb&y=%C3%A9 HTTP/1.1"
        assert headers["x-key"] == "k" and headers["host"] == url.removeprefix("http://")
        assert headers["content-type"].startswith("multipart/form-data; boundary=")
        assert b"\x89PNG" + bytes(range(256)) * 4 in body and b'name="prompt"' in body
        for _ in range(9):
            assert (await client.get(f"{url}/poll")).status_code == 200
    assert seen.connections == 1  # ten sequential calls, one kept-alive connection


async def test_a_compressed_answer_is_decoded_once() -> None:
    payload = json.dumps({"ok": True}).encode() * 50

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      seen: Seen) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(payload), "Content-Encoding: gzip"))
        await writer.drain()

    async with server(gzipped) as (url, _), httpx.AsyncClient(
            transport=AiohttpTransport()) as client:
        assert (await client.get(url)).content == payload


async def test_refused_connection_is_not_sent_and_may_fail_over() -> None:
    async with server(keep_alive_echo) as (url, _):
        pass  # closed: nothing listens on its port any more
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(UpstreamRejected) as caught:
            await submit_call(client, "POST", f"{url}/v1/x", deadline=30, phases=PHASES, json={})
    assert caught.value.code == "connect_error" and caught.value.retryable


@pytest.mark.parametrize("behaviour", ["closes", "stays_silent"])
async def test_a_request_that_went_out_is_ambiguous_never_a_connect_error(behaviour: str) -> None:
    """The upstream read the whole create request, then hung up or never answered: it may
    have accepted the job, so this must not be retried elsewhere (double billing)."""
    received = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      seen: Seen) -> None:
        seen.requests.append(await read_request(reader))
        received.set()
        if behaviour == "stays_silent":
            await asyncio.sleep(3600)

    phases = httpx.Timeout(connect=2.0, read=0.5, write=30.0, pool=30.0)
    async with server(swallow) as (url, seen), httpx.AsyncClient(
            transport=AiohttpTransport()) as client:
        with pytest.raises(UpstreamAmbiguous):
            await submit_call(client, "POST", f"{url}/v1/x", deadline=60, phases=phases,
                              json={"prompt": "p"})
        assert received.is_set() and seen.requests[0][2] == b'{"prompt":"p"}'


async def test_a_channel_pool_never_opens_more_connections_than_its_size() -> None:
    release, three_in = asyncio.Event(), asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   seen: Seen) -> None:
        while True:
            seen.requests.append(await read_request(reader))
            if len(seen.requests) == 3:
                three_in.set()
            await release.wait()
            writer.write(answer(b"{}", "Content-Type: application/json"))
            await writer.drain()

    async with server(held) as (url, seen):
        cs = ChannelSettings(name="capped", type="openai", base_url=url, max_connections=3)
        clients = channel_clients(cs, max_concurrency=None, download_timeout=30)
        assert clients.size == 3
        try:
            calls = [asyncio.create_task(clients.api.get(f"{url}/v1/{i}")) for i in range(7)]
            async with asyncio.timeout(60):
                await three_in.wait()
            assert seen.most_open == 3  # the other four wait for a free connection
            release.set()
            answers = await asyncio.gather(*calls)
        finally:
            await clients.aclose()
    assert [r.status_code for r in answers] == [200] * 7
    assert seen.most_open == 3 and seen.connections == 3 and len(seen.requests) == 7
