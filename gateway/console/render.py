"""The console's Jinja2 environment and how a page is answered (HTML, autoescaped)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from gateway import __version__
from gateway.console.session import ConsoleSession

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def money(micro: int | None, currency: str = "") -> str:
    """Micro-units as a decimal amount (`1.25`, `0.0045`), '' for None."""
    if micro is None:
        return ""
    text = f"{micro / 1_000_000:,.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    text = f"{whole}.{frac.ljust(2, '0')}"
    return f"{text} {currency}".strip()


def when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["money"] = money
templates.env.filters["when"] = when

#: navigation: (path, label, operator only)
NAV = (("/console/keys", "Keys", True), ("/console/key", "My key", False),
       ("/console/usage", "Usage", None), ("/console/jobs", "Jobs", None),
       ("/console/channels", "Channels", True), ("/console/playground", "Playground", None))


def page(request: Request, name: str, session: ConsoleSession | None, *, status: int = 200,
         **context: Any) -> HTMLResponse:
    """Template `name` rendered for `session` (None: signed out)."""
    services = getattr(request.app.state, "services", None)
    currency = services.settings.billing.currency if services is not None else ""
    nav = [(path, label) for path, label, op in NAV
           if session is not None and (op is None or op == session.operator)]
    response = templates.TemplateResponse(request, name, {
        "session": session, "nav": nav, "version": __version__, "currency": currency,
        "path": request.url.path, **context}, status_code=status)
    response.headers["cache-control"] = "no-store"
    response.headers["x-frame-options"] = "DENY"
    response.headers["referrer-policy"] = "same-origin"
    return response
