"""Log context: the request id, job id and channel bound via contextvars and added to every
log record; the ASGI middleware that assigns request ids (`x-request-id`)."""

from __future__ import annotations

import logging
import secrets
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: ContextVar[str] = ContextVar("request_id", default="-")
job_id: ContextVar[str] = ContextVar("job_id", default="-")
channel: ContextVar[str] = ContextVar("channel", default="-")

LOG_FORMAT = ("%(asctime)s %(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s "
              "ch=%(channel)s] %(message)s")


class ContextFilter(logging.Filter):
    """Adds request_id, job_id and channel to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        record.channel = channel.get()
        return True


def configure(level: str) -> None:
    """Root logging with the context fields (call once, from the CLI)."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class RequestIdMiddleware:
    """Takes `x-request-id` from the client (if sane) or makes one; echoes it in the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if given and len(given) <= 64 and given.isprintable() \
            else f"req_{secrets.token_hex(8)}"
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
