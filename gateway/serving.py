"""The HTTP server: uvicorn's, told when a stop begins.

uvicorn's graceful stop closes the listener, then waits (up to `timeout_graceful_shutdown`)
for open requests, then cancels them: a synchronous request waiting for its image would get a
bare text 500 and its SDK would retry on another replica, which runs the same job again and
charges twice. `GatewayServer` calls the app's `state.drain()` first (see `create_app`), so
every open wait answers at once with a JSON error that tells SDKs not to retry and names the
job, streams end with an error event and `[DONE]`, and requests still arriving get 503 with
Retry-After. The jobs themselves are left to `JobService.close`, which releases their leases
for another replica (or the next start) to finish.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import error_response, family_of
from gateway.errors import ServiceUnavailable

#: seconds a stop waits for open requests before cancelling them (uvicorn's
#: timeout_graceful_shutdown, set by `fluxgate serve`); a pod's terminationGracePeriodSeconds
#: must exceed it plus its preStop pause (deploy/kubernetes/deployment.yaml)
DRAIN_SECONDS = 25


def server_config(app: Any, settings: Any, **options: Any) -> uvicorn.Config:
    """The uvicorn settings `fluxgate serve` runs the app with (the tests use the same)."""
    options.setdefault("timeout_graceful_shutdown", DRAIN_SECONDS)
    return uvicorn.Config(app, host=settings.host, port=settings.port,
                          timeout_keep_alive=settings.keep_alive_seconds,
                          proxy_headers=False,  # the app applies `trusted_proxies` itself
                          access_log=False,  # the app writes the access lines
                          **options)


class GatewayServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: Any = getattr(self.config.app, "state", None)
        drain = getattr(state, "drain", None)
        if callable(drain):
            drain()
        await super().shutdown(sockets=sockets)


class DrainMiddleware:
    """While a stop is under way, requests that arrive anyway (on a connection still open)
    get 503 `shutting_down` with Retry-After in their API family's shape: nothing of theirs
    was started, so they are safe to send elsewhere. `/healthz` (liveness) still answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/healthz":
            services = getattr(scope["app"].state, "services", None) if "app" in scope \
                else None
            if services is not None and services.jobs.draining:
                request = Request(scope, receive)
                answer = error_response(ServiceUnavailable(
                    "The gateway is restarting; retry shortly.", code="shutting_down",
                    retry_after=2), family_of(request))
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)
