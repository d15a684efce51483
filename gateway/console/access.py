"""Who may see a console page: the signed-in session (FastAPI dependencies), the operator-only
guard (403) and the CSRF check every state-changing request passes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from billing.errors import BillingError
from gateway.api.deps import Services, ServicesDep
from gateway.console.session import COOKIE, ConsoleSession, SessionCodec, csrf_matches
from gateway.settings import Settings
from gateway.storage.signing import load_or_create_secret


class SignInRequired(Exception):
    """No valid session: the console answers with the sign-in page (a redirect for GETs)."""


class ConsoleDenied(Exception):
    """The session may not do this (403) or the thing is not there (404), rendered as HTML."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def console_secret(settings: Settings) -> bytes:
    """The secret sessions are signed with: the one file URLs are signed with."""
    if settings.storage.signing_secret:
        return settings.storage.signing_secret.encode()
    return load_or_create_secret(settings.data_dir / "secret.key")


def codec_of(request: Request, services: Services) -> SessionCodec:
    codec: SessionCodec | None = getattr(request.app.state, "console_codec", None)
    if codec is None:
        codec = SessionCodec(console_secret(services.settings))
        request.app.state.console_codec = codec
    return codec


async def current_session(request: Request, services: ServicesDep) -> ConsoleSession:
    """The signed-in session; raises SignInRequired. A customer's key is checked again on
    every request (revoked, disabled, expired: signed out)."""
    session = codec_of(request, services).read(request.cookies.get(COOKIE),
                                                services.settings.admin_token)
    if session is None:
        raise SignInRequired()
    if not session.operator:
        assert session.key is not None
        try:
            async with services.sessions() as db:
                info = await services.key_cache.authenticate(db, session.key)
        except BillingError as exc:
            raise SignInRequired() from exc
        if info.id != session.key_id:
            raise SignInRequired()
    request.state.console = session
    return session


SessionDep = Annotated[ConsoleSession, Depends(current_session)]


async def operator_session(session: SessionDep) -> ConsoleSession:
    """The session, if it is the operator's; raises ConsoleDenied (403)."""
    if not session.operator:
        raise ConsoleDenied("This page is for the operator only.")
    return session


OperatorDep = Annotated[ConsoleSession, Depends(operator_session)]


async def checked_post(request: Request, session: SessionDep) -> ConsoleSession:
    """The session of a state-changing request that repeats its CSRF token (form field
    `csrf` or header `X-CSRF-Token`); raises ConsoleDenied (403) without it."""
    presented = request.headers.get("x-csrf-token")
    if not presented:
        form = await request.form()  # cached: the handler reads the same form
        value = form.get("csrf")
        presented = value if isinstance(value, str) else None
    if not csrf_matches(session.csrf, presented):
        raise ConsoleDenied("The form's CSRF token is missing or wrong: reload the page and "
                            "try again.")
    return session


PostDep = Annotated[ConsoleSession, Depends(checked_post)]


async def operator_post(session: PostDep) -> ConsoleSession:
    if not session.operator:
        raise ConsoleDenied("This action is for the operator only.")
    return session


OperatorPostDep = Annotated[ConsoleSession, Depends(operator_post)]
