"""Shared dependencies: the service container and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing import keys
from billing.pricing import PriceTable
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.images.fetch import ImageFetcher
from gateway.jobs.routing import Router
from gateway.jobs.service import JobService
from gateway.settings import Settings
from gateway.storage.files import FileStore


@dataclass(slots=True)
class Services:
    """Everything a request handler may use; built once by `create_app`."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    router: Router
    files: FileStore
    fetcher: ImageFetcher
    jobs: JobService
    prices: PriceTable


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a key that passed authentication (never the plaintext)."""

    key_id: str
    name: str
    mode: str  # live | test
    models: tuple[str, ...] | None
    price_group: str | None

    def check_model(self, model: str) -> None:
        """Raise PermissionDenied when this key may not use `model`."""
        if self.models is not None and model not in self.models:
            raise PermissionDenied(f"This API key may not use the model `{model}`.",
                                   param="model", code="model_not_allowed")


def presented_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer`, `x-api-key` or BFL's `x-key`."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for header in ("x-api-key", "x-key"):
        if request.headers.get(header):
            return request.headers[header].strip()
    return None


async def authenticate(request: Request, services: ServicesDep) -> Principal:
    """The caller's key; raises AuthenticationError (401) or billing's InvalidKey (401)."""
    key = presented_key(request)
    if not key:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key")
    async with services.sessions() as session:
        row = await keys.authenticate(session, key)
    principal = Principal(key_id=row.id, name=row.name, mode=row.mode,
                          models=tuple(row.models) if row.models is not None else None,
                          price_group=row.price_group)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
