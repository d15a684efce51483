"""End-to-end billing harness: the real gateway under uvicorn on a loopback port (a copy of
the shape of the main test harness, kept local so the two can merge without conflict)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from billing import keys as key_service
from billing import ledger
from gateway.app import create_app
from gateway.settings import Settings, load_settings

ADMIN_TOKEN = "admin-secret-for-tests"


@dataclass
class BillingGateway:
    base_url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    app: Any
    loop: asyncio.AbstractEventLoop = field(init=False)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def create_key(self, name: str = "test", *, balance: int | None = None,
                   mode: str = "live", **kwargs: Any) -> tuple[str, str]:
        async def go() -> tuple[str, str]:
            async with self.services.sessions.begin() as session:
                created = await key_service.create_key(session, name=name, mode=mode,
                                                       balance=balance, **kwargs)
                return created.row.id, created.plaintext

        result: tuple[str, str] = self.call(go())
        return result

    def ledger_rows(self, job_id: str) -> list[tuple[str, int]]:
        from sqlalchemy import select

        from billing.tables import LedgerRow

        async def go() -> list[tuple[str, int]]:
            async with self.services.sessions() as s:
                rows = await s.execute(select(LedgerRow.kind, LedgerRow.amount)
                                       .where(LedgerRow.job_id == job_id)
                                       .order_by(LedgerRow.id))
                return [(k, a) for k, a in rows]

        result: list[tuple[str, int]] = self.call(go())
        return result

    def key_rows(self, key_id: str) -> list[tuple[str | None, str, int]]:
        from sqlalchemy import select

        from billing.tables import LedgerRow

        async def go() -> list[tuple[str | None, str, int]]:
            async with self.services.sessions() as s:
                rows = await s.execute(select(LedgerRow.job_id, LedgerRow.kind, LedgerRow.amount)
                                       .where(LedgerRow.key_id == key_id)
                                       .order_by(LedgerRow.id))
                return [(j, k, a) for j, k, a in rows]

        result: list[tuple[str | None, str, int]] = self.call(go())
        return result

    def balance(self, key_id: str) -> tuple[int, int, int]:
        """(balance, ledger sum, number of drifting keys)."""

        async def go() -> tuple[int, int, int]:
            async with self.services.sessions() as s:
                row = await key_service.get_key(s, key_id)
                return (row.balance, await ledger.ledger_sum(s, key_id),
                        len(await ledger.reconcile(s)))

        result: tuple[int, int, int] = self.call(go())
        return result

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start(data_dir: Path, **overrides: Any) -> BillingGateway:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    overrides.setdefault("admin_token", ADMIN_TOKEN)
    settings = load_settings(None, data_dir=data_dir, host="127.0.0.1", port=port,
                             public_base_url=f"http://127.0.0.1:{port}", **overrides)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    holder: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve(sockets=[sock]))
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name=f"billing-gw:{port}")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    gw = BillingGateway(f"http://127.0.0.1:{port}", settings, server, thread, app)
    gw.loop = holder["loop"]
    return gw


@pytest.fixture
def billing_gateway_factory(tmp_path: Path) -> Iterator[Callable[..., BillingGateway]]:
    started: list[BillingGateway] = []

    def make(**overrides: Any) -> BillingGateway:
        gw = start(tmp_path / "data", **overrides)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def bgw(billing_gateway_factory: Callable[..., BillingGateway]) -> BillingGateway:
    return billing_gateway_factory(billing={"moderation_fee": 0.005})
