"""A loopback webhook receiver with a scripted list of answers, and a fake clock."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # time.monotonic() when the request arrived


@dataclass
class Receiver:
    """Records every POST; answers `script` in order (then `default`). An answer is
    (status, headers); `hold` makes the next request wait until `release` is set; `delay`
    makes every answer take that many seconds (cut short by `release`, set at teardown)."""

    base_url: str
    requests: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: tuple[int, dict[str, str]] = (200, {})
    hold: threading.Event | None = None
    release: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} webhook(s) received, wanted {count}")
            time.sleep(0.02)
        return self.requests


def _serve() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = holder["r"]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            rec.requests.append(Received(self.path, {k.lower(): v for k, v in
                                                     self.headers.items()}, body,
                                         time.monotonic()))
            if rec.hold is not None:
                rec.hold.set()
                rec.release.wait(10)
            if rec.delay:
                rec.release.wait(rec.delay)
            status, headers = rec.script.pop(0) if rec.script else rec.default
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # 40+ deliveries may connect at once

    httpd = Server(("127.0.0.1", 0), Handler)
    holder["r"] = Receiver(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder["r"]
    holder["r"].release.set()
    httpd.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


@pytest.fixture
def slow_receiver() -> Iterator[Receiver]:
    """A second receiver (its own port: its own endpoint) that answers 200 only after 110 s
    (or at teardown): slower than any test, so its attempts are still in flight whatever the
    machine's speed. Use it with `SLOW_RECEIVER` settings, whose attempt timeout outlasts it."""
    for rec in _serve():
        rec.delay = 110.0
        yield rec


class FakeClock:
    """A settable UTC clock whose `sleep` advances it instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
