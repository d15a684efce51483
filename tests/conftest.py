"""Test harness: the real gateway on a loopback port, keys made with the CLI's service code,
and a small loopback image server for input-image URLs."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import respx.mocks
import uvicorn
from PIL import Image
from sqlalchemy import select

from billing import keys as key_service
from billing.ledger import ledger_sum
from billing.tables import ApiKeyRow, LedgerRow
from gateway.api.deps import Services
from gateway.app import create_app
from gateway.jobs.tables import JobRow
from gateway.serving import GatewayServer, server_config
from gateway.settings import Settings, load_settings

# The gateway's upstream pool (gateway/aiohttp_transport.py) speaks httpcore's interface: respx
# stubs it exactly as it stubs httpcore's own pools.
respx.mocks.HTTPCoreMocker.add_targets("gateway.aiohttp_transport.AiohttpPool")


@dataclass
class Gateway:
    """A running gateway. `services` is the live container (same process, other thread)."""

    base_url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    app: Any

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's event loop (for reading its state in tests)."""
        loop = self.server_loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=timeout)

    server_loop: asyncio.AbstractEventLoop = field(init=False)

    def create_key(self, name: str = "test", *, balance: int | None = None, mode: str = "live",
                   **kwargs: Any) -> tuple[str, str]:
        """(key id, plaintext) of a new key, made with the same code as `fluxgate keys`."""

        async def go() -> tuple[str, str]:
            async with self.services.sessions.begin() as session:
                created = await key_service.create_key(session, name=name, mode=mode,
                                                       balance=balance, **kwargs)
                return created.row.id, created.plaintext

        result: tuple[str, str] = self.call(go())
        return result

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def jobs_of(gw: Gateway, key_id: str | None = None) -> list[JobRow]:
    """A key's job rows (every key's without one), oldest first."""
    async def go() -> list[JobRow]:
        query = select(JobRow).order_by(JobRow.created_at)
        if key_id is not None:
            query = query.where(JobRow.key_id == key_id)
        async with gw.services.sessions() as s:
            return list((await s.execute(query)).scalars())
    result: list[JobRow] = gw.call(go())
    return result


def wait_for_job(gw: Gateway, key_id: str, *, submitted: bool = True,
                 timeout: float = 30.0) -> JobRow:
    """The key's one job, once it exists (and, with `submitted`, once it has an upstream id).
    Polls instead of trusting a short client timeout: a loaded CI machine can take seconds."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_of(gw, key_id)
        if jobs and (jobs[0].upstream_id or not submitted):
            assert len(jobs) == 1, jobs
            return jobs[0]
        assert time.monotonic() < deadline, f"no job for {key_id} within {timeout} s"
        time.sleep(0.05)


def traced_while(request: Callable[[], None], gw: Gateway) -> tuple[float, float]:
    """Run `request` in a thread; (MB allocated and still held once its job is waiting on the
    upstream, peak MB), both over the start. The server runs in this process, so tracemalloc
    sees its allocations (and the client's): give `request` a slow sandbox job
    (`sandbox:latency=5`). "Waiting on the upstream" is a condition, not a time: a new job
    row with an upstream id (the request's own buffers are gone by then)."""
    import gc
    import tracemalloc

    before = {job.id for job in jobs_of(gw)}

    def waiting() -> bool:
        return any(job.id not in before and job.upstream_id and job.finished_at is None
                   for job in jobs_of(gw))

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 120
        while not waiting():
            assert thread.is_alive(), "the request ended before its job reached the upstream"
            assert time.monotonic() < deadline, "the job never reached the upstream"
            time.sleep(0.05)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        thread.join()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return held / 1e6, peak / 1e6


def ledger_of(gw: Gateway, key_id: str) -> tuple[int, int, list[tuple[str, int]]]:
    """(balance, sum of ledger rows, [(kind, amount)] in order) of a key."""
    async def go() -> tuple[int, int, list[tuple[str, int]]]:
        async with gw.services.sessions() as s:
            row = await s.get(ApiKeyRow, key_id)
            assert row is not None
            rows = (await s.execute(select(LedgerRow).where(LedgerRow.key_id == key_id)
                                    .order_by(LedgerRow.id))).scalars()
            return row.balance, await ledger_sum(s, key_id), [(r.kind, r.amount) for r in rows]
    result: tuple[int, int, list[tuple[str, int]]] = gw.call(go())
    return result


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def start_gateway(data_dir: Path, *, cls: type[Gateway] | None = None,
                  **overrides: Any) -> Gateway:
    """Start the real app under uvicorn in a thread, on a free loopback port."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    overrides.setdefault("limits", {"fetch_allow": ["127.0.0.1", "localhost"]})
    settings = load_settings(None, data_dir=data_dir, host="127.0.0.1", port=port,
                             public_base_url=f"http://127.0.0.1:{port}", **overrides)
    app = create_app(settings)
    config = server_config(app, settings, log_level="warning", lifespan="on",
                           timeout_graceful_shutdown=1)  # as `fluxgate serve`
    server = GatewayServer(config)  # as `fluxgate serve`
    holder: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve(sockets=[sock]))
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name=f"gateway:{port}")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    gw = (cls or Gateway)(base_url=f"http://127.0.0.1:{port}", settings=settings,
                          server=server, thread=thread, app=app)
    gw.server_loop = holder["loop"]
    return gw


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with settings overrides; all are stopped after the test."""
    started: list[Gateway] = []

    def make(data_dir: Path | None = None, **overrides: Any) -> Gateway:
        gw = start_gateway(data_dir or tmp_path / "data", **overrides)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory()


@pytest.fixture
def api_key(gateway: Gateway) -> str:
    return gateway.create_key("default")[1]


def png_bytes(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30),
              fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@dataclass
class ImageServer:
    """Serves registered byte blobs at http://127.0.0.1:PORT/<name> and counts hits."""

    base_url: str
    files: dict[str, tuple[bytes, str]]
    hits: list[str]

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[name] = (data, content_type)
        return f"{self.base_url}/{name}"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    files: dict[str, tuple[bytes, str]] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/").split("?")[0]
            hits.append(name)
            if name not in files:
                self.send_error(404)
                return
            data, ctype = files[name]
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield ImageServer(f"http://127.0.0.1:{httpd.server_address[1]}", files, hits)
    httpd.shutdown()


# PostgreSQL ------------------------------------------------------------------------------------
#: a server where the user may create databases (`.ci/run` starts one); tests skip without it
PG_URL = os.environ.get("FLUXGATE_TEST_PG_URL")


async def _pg_admin(sql: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_URL or "", isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(sql))
    await engine.dispose()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped after the test."""
    from sqlalchemy.engine import make_url

    if not PG_URL:
        pytest.skip("FLUXGATE_TEST_PG_URL is not set")
    name = f"fg_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", "postgres"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL: SQLite, then PostgreSQL (skipped without FLUXGATE_TEST_PG_URL)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/any.db"
    url: str = request.getfixturevalue("pg_database")
    return url
