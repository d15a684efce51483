"""Signing in and out of the console: with the admin token (operator) or an API key
(customer). The secret is only ever posted in a form body, never put in a URL."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from billing.errors import BillingError
from gateway.api.deps import ServicesDep
from gateway.console.access import PostDep, codec_of
from gateway.console.render import page
from gateway.console.session import (
    COOKIE,
    MAX_AGE,
    PATH,
    SIGNIN_COOKIE,
    SIGNIN_MAX_AGE,
    csrf_matches,
)

router = APIRouter()

#: sign-in attempts per minute from one client address (the limiter of API keys' rpm)
SIGNIN_PER_MINUTE = 20


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _signin_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = page(request, "signin.html", None, signin_csrf=token, error=error,
                    status=status)
    response.set_cookie(SIGNIN_COOKIE, token, max_age=SIGNIN_MAX_AGE, path=PATH,
                        httponly=True, samesite="strict", secure=_secure(request))
    return response


@router.get("/console/login")
async def signin_form(request: Request) -> Response:
    return _signin_page(request)


@router.post("/console/login")
async def sign_in(request: Request, services: ServicesDep) -> Response:
    """Check the posted token: the admin token opens the operator's console, an API key its
    holder's own. A post without the sign-in form's own token is refused (403); more than
    SIGNIN_PER_MINUTE attempts a minute from one address are refused (429)."""
    form = await request.form()
    presented = form.get("csrf")
    expected = request.cookies.get(SIGNIN_COOKIE)
    if not expected or not csrf_matches(expected, presented if isinstance(presented, str)
                                        else None):
        return _signin_page(request, "The sign-in form expired: please try again.", 403)
    client = request.client.host if request.client else "unknown"
    decision = await services.rate_limiter.hit(f"console-signin:{client}", SIGNIN_PER_MINUTE)
    if decision is not None and not decision.allowed:
        response = _signin_page(request, "Too many sign-in attempts from this address: try "
                                f"again in {decision.retry_after} s.", 429)
        response.headers["retry-after"] = str(decision.retry_after)
        return response
    value = form.get("token")
    token = value.strip() if isinstance(value, str) else ""
    codec = codec_of(request, services)
    admin = services.settings.admin_token
    if admin and token and hmac.compare_digest(token.encode(), admin.encode()):
        cookie, _ = codec.operator(admin)
        target = "/console/keys"
    else:
        try:
            async with services.sessions() as db:
                info = await services.key_cache.authenticate(db, token)
        except BillingError:
            return _signin_page(request, "That is neither the admin token nor a valid API "
                                "key.", 401)
        cookie, _ = codec.customer(info.id, token, info.name)
        target = "/console/usage"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=MAX_AGE, path=PATH, httponly=True,
                        samesite="strict", secure=_secure(request))
    response.delete_cookie(SIGNIN_COOKIE, path=PATH)
    return response


@router.post("/console/logout")
async def sign_out(session: PostDep) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path=PATH)
    return response


@router.get("/console")
@router.get("/console/")
async def console_home(request: Request, services: ServicesDep) -> Response:
    session = codec_of(request, services).read(request.cookies.get(COOKIE),
                                               services.settings.admin_token)
    if session is None:
        return RedirectResponse("/console/login", status_code=303)
    return RedirectResponse("/console/keys" if session.operator else "/console/usage",
                            status_code=303)
