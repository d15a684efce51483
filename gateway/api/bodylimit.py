"""A cap on every request body, before it is read into memory.

FastAPI reads a JSON body whole; without a cap, one request with a few hundred MB of data URLs
(chat shells resend a whole conversation) could exhaust the server. The cap is what the
largest valid request needs: every input image and a mask at the byte limit, as base64.
The error is raised from inside the route's body read, so each API family renders its own
413 (OpenAI envelope, Replicate problem, or BFL's `{"detail"}`)."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """413: the body exceeds the cap (FastAPI passes HTTPException through its body read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes, the limit for "
                              "one request.")


class BodyLimitMiddleware:
    """Refuse a body whose Content-Length exceeds `limit` before reading any of it, and stop
    reading a body without one (chunked) as soon as more than `limit` bytes arrived."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        too_big = declared.isdigit() and int(declared) > self.limit
        total = 0

        async def limited() -> Message:
            nonlocal total
            if too_big:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)
