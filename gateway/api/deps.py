"""Shared dependencies: the service container and the authenticated caller."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing import keys
from billing.errors import RateLimited
from billing.limits import RateLimiter
from billing.pricing import PriceTable
from gateway.database import TransactionCounter
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.images.budget import PixelBudget
from gateway.images.fetch import ImageFetcher
from gateway.jobs.channel_state import ChannelStateSync
from gateway.jobs.routing import Router
from gateway.jobs.service import JobService
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.storage.files import FileStore
from gateway.tracing import Tracing
from gateway.webhooks.service import WebhookService


@dataclass(slots=True)
class Services:
    """Everything a request handler may use; built once by `create_app`."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    router: Router
    files: FileStore
    fetcher: ImageFetcher
    jobs: JobService
    prices: PriceTable
    webhooks: WebhookService
    channel_sync: ChannelStateSync
    transactions: TransactionCounter = field(default_factory=TransactionCounter)
    metrics: Metrics = field(default_factory=Metrics)
    pixel_budget: PixelBudget = field(
        default_factory=lambda: PixelBudget(100_000_000, 5.0))  # replaced from settings
    key_cache: keys.KeyCache = field(default_factory=keys.KeyCache)
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)
    # admission per key; an entry lives only while some request holds or waits for its lock
    key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary)
    #: writes that must land before shutdown closes the database (see api/guards.py)
    pending_writes: set[asyncio.Future[None]] = field(default_factory=set)
    tracing: Tracing | None = None  # OpenTelemetry, when `tracing.enabled` (gateway/tracing.py)


def from_sandbox(services: Services, channel: str | None) -> bool:
    """Whether a job's channel is the sandbox (its results are labelled as such)."""
    found = services.router.get(channel) if channel else None
    return found is not None and found.kind == "sandbox"


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
    rpm: int | None = None
    max_concurrency: int | None = None
    provenance: str | None = None  # off | metadata | signed; None: group's or default
    grounding: bool = False  # FLUX 3 web grounding by default (the key's `meta.grounding`)

    def check_model(self, model: str) -> None:
        """Raise PermissionDenied when this key may not use `model`."""
        if self.models is not None and model not in self.models:
            raise PermissionDenied(f"This API key may not use the model `{model}`.",
                                   param="model", code="model_not_allowed")


def presented_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer` (or Replicate's older `Token`), `x-api-key` or
    BFL's `x-key`."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
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
        row = await services.key_cache.authenticate(session, key)  # <= 5 s stale at most
    keys.check_ip(row, request.client.host if request.client else None)
    principal = Principal(key_id=row.id, name=row.name, mode=row.mode,
                          models=tuple(row.models) if row.models is not None else None,
                          price_group=row.price_group, rpm=row.rpm,
                          max_concurrency=row.max_concurrency, provenance=row.provenance,
                          grounding=(row.meta or {}).get("grounding") is True)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def rate_limited(request: Request, principal: PrincipalDep,
                       services: ServicesDep) -> Principal:
    """The caller, after counting this request against its requests-per-minute limit;
    raises billing's RateLimited (429 with retry-after and x-ratelimit-* headers)."""
    decision = await services.rate_limiter.hit(principal.key_id, principal.rpm)
    if decision is not None:
        request.state.rate_headers = decision.headers()
        if not decision.allowed:
            exc = RateLimited(f"Rate limit reached: {decision.limit} requests per minute for "
                              f"this API key. Retry after {decision.retry_after} s.",
                              retry_after=decision.retry_after, limit=decision.limit,
                              headers=decision.headers())
            raise exc
    return principal


LimitedPrincipalDep = Annotated[Principal, Depends(rate_limited)]
