"""Mounts the console on the app: its pages, its static files and how its refusals answer
(HTML pages; a missing session sends a browser to the sign-in page)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from gateway.console import channels, jobs, keys, playground, signin, usage
from gateway.console.access import ConsoleDenied, SignInRequired
from gateway.console.render import HERE, page

STATIC = "/console/static"


def install(app: FastAPI) -> None:
    """Add the console's routes, static files and error pages to `app`."""

    async def signed_out(request: Request, exc: Exception) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/console/login", status_code=303)
        return page(request, "error.html", None, status=401,
                    message="Please sign in to the console.")

    async def denied(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleDenied)
        return page(request, "error.html", getattr(request.state, "console", None),
                    status=exc.status, message=exc.message)

    app.add_exception_handler(SignInRequired, signed_out)
    app.add_exception_handler(ConsoleDenied, denied)
    for module in (signin, keys, usage, jobs, channels, playground):
        app.include_router(module.router, include_in_schema=False)
    app.mount(STATIC, StaticFiles(directory=HERE / "static"), name="console-static")
