"""create_app(settings): the composition root. Wires the database, HTTP clients, storage,
adapters, billing and the job service, and mounts every API module."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from billing.limits import RateLimiter
from billing.pricing import PriceTable, to_micro
from gateway import __version__, console, housekeeping
from gateway.api import (
    admin,
    bfl,
    chat,
    credentials,
    edits,
    errors,
    files,
    health,
    home,
    images,
    replicate,
    responses,
    tasks,
    text_guard,
    usage,
)
from gateway.api.bodylimit import BodyLimitMiddleware
from gateway.api.deps import Services
from gateway.api.edits import body_limit
from gateway.api.text_guard import refuse_unstorable_text
from gateway.database import (
    TransactionCounter,
    Writer,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from gateway.datadir import database_line
from gateway.images.budget import PixelBudget
from gateway.images.fetch import ImageFetcher
from gateway.jobs.channel_state import ChannelStateSync
from gateway.jobs.provenance import ProvenancePolicy
from gateway.jobs.routing import build_router
from gateway.jobs.service import JobService
from gateway.jobs.telemetry import JobTelemetry
from gateway.logcontext import AccessLogMiddleware, RequestIdMiddleware
from gateway.loop_lag import LoopLagMonitor
from gateway.metrics import Metrics, MetricsMiddleware
from gateway.serving import DrainMiddleware
from gateway.settings import ConfigError, Settings
from gateway.storage import sweep as storage_sweep
from gateway.storage.base import Storage, StorageError
from gateway.storage.files import FileStore
from gateway.storage.local import LocalStorage
from gateway.storage.signing import UrlSigner, load_or_create_secret
from gateway.tracing import Tracing, build_tracing
from gateway.webhooks.service import WebhookService, gateway_secret

log = logging.getLogger("gateway")


def price_table(settings: Settings) -> PriceTable:
    """The configured prices, plus each catalogue model's default price (gateway/families.py)
    for a model the configuration does not price."""
    prices: dict[str, Any] = dict(settings.model_catalogue().default_prices())
    prices.update(settings.billing.prices)
    return PriceTable.from_config(prices, settings.billing.price_groups)


def redact_url(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _env_secret(field: str, var: str | None) -> str | None:
    """The value of the environment variable named by setting `field`, if one is named."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"storage.s3.{field}: environment variable {var} is not set")
    return value


async def build_storage(settings: Settings) -> Storage:
    """LocalStorage or a started S3Storage, as `storage.kind` says."""
    if settings.storage.kind == "local":
        return LocalStorage(settings.files_dir)
    from gateway.storage.s3 import S3Storage  # aiobotocore only when S3 is configured

    s3 = settings.storage.s3
    assert s3.bucket  # StorageSettings validates it
    storage = S3Storage(bucket=s3.bucket, prefix=s3.prefix, region=s3.region,
                        endpoint_url=s3.endpoint_url,
                        access_key=_env_secret("access_key_env", s3.access_key_env),
                        secret_key=_env_secret("secret_key_env", s3.secret_key_env),
                        addressing_style=s3.addressing_style)
    await storage.start()
    if s3.probe:
        try:
            await storage.probe()
        except StorageError as exc:
            await storage.aclose()
            raise ConfigError(f"storage.s3.bucket: {exc}") from exc
    return storage


async def close_storage(storage: Storage) -> None:
    aclose = getattr(storage, "aclose", None)
    if aclose is not None:
        await aclose()


async def build_services(settings: Settings, tracing: Tracing | None = None) -> Services:
    """Create every long-lived component (call `close_services` to release them); with
    `tracing`, jobs get spans and every channel's HTTP clients send `traceparent`."""
    try:  # the signing key's files are read once, here
        provenance = ProvenancePolicy.from_settings(settings.provenance)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    storage = await build_storage(settings)  # it may stop start-up (ConfigError)
    db = settings.database
    engine = make_engine(settings.resolved_database_url, pool_size=db.pool_size,
                         max_overflow=db.max_overflow, pool_timeout=db.pool_timeout)
    transactions = TransactionCounter()
    transactions.attach(engine)
    metrics = Metrics()
    metrics.watch_engine(engine)  # statement latency
    if settings.auto_migrate:
        await upgrade(engine)
    sessions = make_sessionmaker(engine)
    secret = (settings.storage.signing_secret.encode() if settings.storage.signing_secret
              else load_or_create_secret(settings.data_dir / "secret.key"))
    signer = UrlSigner(secret, settings.resolved_public_base_url, settings.storage.url_ttl)
    file_store = FileStore(storage, sessions, signer)
    router = build_router(settings)  # each channel owns its pools (jobs/connections.py)
    if tracing is not None:
        for channel in router.channels:
            if channel.clients is not None:
                tracing.instrument(channel.clients.api)
                tracing.instrument(channel.clients.results)
    fetcher = ImageFetcher(max_bytes=settings.limits.max_image_bytes,
                           timeout=settings.limits.fetch_timeout,
                           allow=settings.limits.fetch_allow)
    prices = price_table(settings)
    webhooks = WebhookService(sessions=sessions, files=file_store, settings=settings.webhooks,
                              secret=gateway_secret(settings),
                              allow=settings.limits.fetch_allow,
                              observer=metrics.webhook_outcome)
    # SQLite has one writer at a time: the job pipeline's writes are grouped into shared
    # transactions instead of queueing for the lock; PostgreSQL runs them side by side
    writer = Writer(sessions, group_commit=engine.dialect.name == "sqlite")
    telemetry = JobTelemetry(metrics, tracing, log_prompts=settings.log_prompts)
    jobs = JobService(sessions=sessions, router=router, files=file_store, prices=prices,
                      settings=settings.jobs, writer=writer, observer=telemetry.finished,
                      moderation_fee=to_micro(settings.billing.moderation_fee),
                      outbox=webhooks.outbox, catalogue=settings.model_catalogue(),
                      provenance=provenance, telemetry=telemetry)
    channel_sync = ChannelStateSync(sessions, router, settings.jobs.channel_sync_interval)
    await channel_sync.apply()  # stored disables hold from the first request on
    services = Services(
        settings=settings, engine=engine, transactions=transactions, metrics=metrics,
        pixel_budget=PixelBudget(settings.limits.decode_pixel_budget,
                                 settings.limits.decode_wait),
        sessions=sessions, router=router, channel_sync=channel_sync, files=file_store,
        fetcher=fetcher, jobs=jobs, prices=prices, webhooks=webhooks,
        rate_limiter=RateLimiter(settings.redis_url, timeout=settings.limits.rate_limit_timeout,
                                 cooldown=settings.limits.rate_limit_cooldown,
                                 replicas=settings.limits.replicas,
                                 observe=metrics.redis_seconds.observe),
        tracing=tracing)
    metrics.watch(services)
    return services


async def close_services(services: Services) -> None:
    await services.channel_sync.close()
    await services.jobs.close()
    await services.jobs.writer.close()
    if services.pending_writes:  # e.g. the stored answer of a request cut off by shutdown
        await asyncio.gather(*services.pending_writes, return_exceptions=True)
    await services.webhooks.close()
    await services.fetcher.aclose()
    await services.router.aclose()
    await close_storage(services.files.storage)
    await services.engine.dispose()
    if services.tracing is not None:
        services.tracing.shutdown()


def startup_report(services: Services) -> list[str]:
    """What the start-up log says: address, database, storage, upstreams and their models."""
    s = services.settings
    lines = [f"fluxgate {__version__} listening on http://{s.host}:{s.port} "
             f"(public URL {s.resolved_public_base_url})",
             database_line(s),
             f"storage: {services.files.storage.name}",
             f"rate limits: {'redis' if s.redis_url else 'in-process'}"]
    for ch in services.router.channels:
        label = " [SANDBOX: synthetic images, no real model]" if ch.kind == "sandbox" else ""
        unusable = ("" if ch.disabled_reason is None
                    else f"; UNUSABLE: {ch.disabled_reason}")
        lines.append(f"upstream {ch.name} ({ch.kind}){label}: {', '.join(ch.model_map)}"
                     f"{unusable}")
    if not services.router.models():
        lines.append("no upstream is usable: live keys get 503 until one is fixed (test-mode "
                     "keys use the sandbox); see the UNUSABLE lines above")
    return lines


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path: what start-up built (modules,
    settings, the app) is frozen out of every collection, and the young generation is
    collected ten times less often. With thousands of jobs in flight, CPython's default
    (a collection every 700 allocations, full ones scanning the whole heap) took an ever
    larger share of the CPU as the heap grew (`/healthz` p99 with 5,000 jobs in flight: 124 ms
    before, 85 ms after); most of what a request allocates is freed by reference counting.
    Called by `fluxgate serve` (a process that is only this server), not by `create_app`."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 7000), gen1, gen2)


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application for `settings`."""
    tracing = build_tracing(settings.tracing)  # None unless tracing.enabled

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings, tracing)
        app.state.services = services
        app.state.drain = services.jobs.drain  # called by GatewayServer when a stop begins
        for line in startup_report(services):
            log.info(line)
        await services.jobs.resume()
        services.webhooks.start()  # delivers what is pending, including rows from before
        services.channel_sync.start()
        interval = settings.billing.idempotency_purge_interval
        purge = (asyncio.create_task(housekeeping.run(services.sessions, interval),
                                     name="idempotency-purge") if interval else None)
        # orphan sweep (issue 17 item 6; gateway/storage/sweep.py)
        sweeper = storage_sweep.start(services.files.storage, services.sessions, settings)
        loop_lag = LoopLagMonitor(services.metrics.loop_lag.observe)
        loop_lag.start()
        try:
            yield
        finally:
            await loop_lag.close()
            await storage_sweep.stop(sweeper)
            if purge is not None:
                purge.cancel()
                await asyncio.gather(purge, return_exceptions=True)
            await close_services(services)

    # /docs and /redoc with their assets served from this server (no CDN; gateway/api/home.py)
    app = FastAPIOffline(title="fluxgate", version=__version__, lifespan=lifespan,
                         description="OpenAI-compatible gateway for FLUX.1 Kontext",
                         static_url=home.DOCS_ASSETS,
                         dependencies=[Depends(refuse_unstorable_text)])  # NUL & co: 400 first
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                       allow_methods=["*"], allow_headers=["*"], expose_headers=["*"],
                       allow_credentials=False,
                       allow_private_network=settings.cors_private_network)
    # edits read their own (same-sized) cap first and name it; this one guards every route
    app.add_middleware(BodyLimitMiddleware, limit=body_limit(settings.limits) + 1024 * 1024)
    app.add_middleware(MetricsMiddleware)  # requests by route template and status
    app.add_middleware(DrainMiddleware)  # a stop under way: 503 + Retry-After to newcomers
    app.add_middleware(AccessLogMiddleware)  # one log line per request (gateway/logcontext.py)
    app.add_middleware(RequestIdMiddleware)
    if tracing is not None:  # a span per request, around everything but the proxy headers
        middleware, options = tracing.middleware()
        app.add_middleware(middleware, **options)
    # outermost: the client address behind a trusted reverse proxy, for IP allow-lists and logs
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    errors.install(app)
    text_guard.install(app)  # the OpenAPI document says free text holds no NUL
    for module in (home, health, images, edits, tasks, chat, bfl, replicate, files, usage,
                   admin, credentials, responses):
        app.include_router(module.router)
    console.install(app)  # the web console at /console (gateway/console/)
    return app
