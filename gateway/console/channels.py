"""The operator's channels page: health, breaker, concurrency in use, disabled reason, and
the enable/disable switch (stored, as the admin API's; gateway/jobs/channel_state.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.api.deps import ServicesDep
from gateway.console.access import ConsoleDenied, OperatorDep, OperatorPostDep
from gateway.console.render import page
from gateway.jobs import channel_state

router = APIRouter()


@router.get("/console/channels")
async def channels(request: Request, services: ServicesDep, session: OperatorDep) -> Response:
    return page(request, "channels.html", session, channels=services.router.channels,
                done=request.query_params.get("done"))


@router.post("/console/channels/{name}/{action}")
async def toggle(name: str, action: str, services: ServicesDep,
                 session: OperatorPostDep) -> Response:
    channel = services.router.get(name)
    if channel is None:
        raise ConsoleDenied(f"No channel named {name!r}.", 404)
    if action == "disable":
        await channel_state.disable(services.sessions, channel, "disabled by an admin")
    elif action == "enable":
        await channel_state.enable(services.sessions, channel)
    else:
        raise ConsoleDenied(f"Unknown action {action!r}.", 404)
    return RedirectResponse(f"/console/channels?done={action}d {name}", status_code=303)
