"""Log context: the request id, job id and channel bound via contextvars and added to every
log record; the ASGI middleware that assigns request ids (`x-request-id`) and the one that
writes one access line per request; the two formats (`log_format`: text or JSON lines).

A JSON line holds `time`, `level`, `logger`, `message`, `request_id`, `job_id`, `channel`,
and what the record adds: the access line `method`, `route` (the template, never a raw path
with its query string, which may hold a signed URL's signature), `path`, `status`,
`duration_ms`, `key_id` (the key's id, never the key); the job line (`job_line`) `model`,
`status`, `error_code`, `price`, `charged`, `duration_s`, and `prompt` (its first
`PROMPT_CHARS` characters) only with `log_prompts: true`. Nothing logs keys, secrets or
images.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from gateway.jobs.tables import JobRow

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


LogFormat = Literal["text", "json"]
#: the fields every JSON line starts with (then whatever the record adds)
JSON_FIELDS = ("time", "level", "logger", "message", "request_id", "job_id", "channel")
PROMPT_CHARS = 200
access_log = logging.getLogger("gateway.access")
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})
job_log = logging.getLogger("gateway.jobs.finished")


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    return Formatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s "
                     "%(job_id)s %(channel)s",
                     rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                     json_ensure_ascii=False)


def handler(fmt: LogFormat = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing `fmt` lines with the context fields to `stream` (stderr)."""
    out = logging.StreamHandler(stream or sys.stderr)
    out.addFilter(ContextFilter())
    out.setFormatter(_json_formatter() if fmt == "json" else logging.Formatter(LOG_FORMAT))
    return out


def configure(level: str, fmt: LogFormat = "text") -> None:
    """Root logging with the context fields (call once, from the CLI)."""
    logging.basicConfig(level=level.upper(), handlers=[handler(fmt)], force=True)


def job_line(row: JobRow, *, prompts: bool = False) -> None:
    """The one line of a finished job (INFO), with its prompt only when `prompts`."""
    fields: dict[str, Any] = {
        "model": row.model, "status": row.status, "error_code": row.error_code,
        "price": row.price, "charged": row.charged, "attempts": row.attempts}
    if row.finished_at is not None and row.created_at is not None:
        created = row.created_at if row.created_at.tzinfo is not None \
            else row.created_at.replace(tzinfo=UTC)
        fields["duration_s"] = round((row.finished_at - created).total_seconds(), 3)
    if prompts:
        fields["prompt"] = row.prompt[:PROMPT_CHARS]
    job_log.info("job %s %s", row.id, row.status, extra=fields)


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


class AccessLogMiddleware:
    """One INFO line per answered request on `gateway.access`: method, route template,
    status, duration and the key's id (set by authentication on `request.state`); DEBUG for
    successful probes and scrapes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            principal = (scope.get("state") or {}).get("principal")
            duration = round((time.perf_counter() - started) * 1000, 1)
            # probes and scrapes arrive every few seconds: DEBUG while they succeed
            level = logging.DEBUG if route in _QUIET and status < 400 else logging.INFO
            access_log.log(level, "%s %s %d %.1f ms", scope["method"], route, status, duration,
                           extra={"method": scope["method"], "route": route,
                                  "path": scope.get("path", ""), "status": status,
                                  "duration_ms": duration,
                                  "key_id": getattr(principal, "key_id", None)})
