"""The key is checked before the body: a request whose body FastAPI could not read or
validate is first asked for its key, so a caller without a valid key learns that (401/403)
and not what its body lacks. FastAPI parses a declared body before running dependencies, so
the validation error handler calls `key_error` before describing the body's fault."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant

from gateway.api.deps import authenticate, get_services


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is authenticate or _needs_key(d) for d in dependant.dependencies)


async def key_error(request: Request) -> Exception | None:
    """The error authenticating `request` raises, when its route takes a key and the key is
    missing, invalid or refused; None when the key is good or the route takes none."""
    dependant: Dependant | None = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None or not _needs_key(dependant):
        return None
    try:
        await authenticate(request, get_services(request))
    except Exception as exc:  # AuthenticationError, InvalidKey, KeyForbidden (rendered as usual)
        return exc
    return None
