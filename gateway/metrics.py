"""Prometheus metrics at `GET /metrics` (prometheus-client), low-cardinality labels only: never a
key id, a prompt or a job id.

What is counted where it happens costs a dictionary lookup on the hot path: requests by route
template and status (`MetricsMiddleware`), and finished jobs by model, channel and outcome with
their money and upstream latency (`Metrics.job_finished`, called by the job service after its
terminal commit). What is a state (jobs running, channel concurrency and breakers, database
transactions, the decoding budget) is read only when scraped (`_StateCollector`).

What lives in the database (the webhook backlog, jobs past their deadline on any replica) is
read by `Metrics.refresh`, which `GET /metrics` awaits before answering (a few indexed
counts, bounded by `_REFRESH_TIMEOUT`); those gauges are the same on every replica, so alert
on their `max()`. Database statement latency is timed by engine events (`watch_engine`), Redis
latency by the rate limiter's `observe` hook, event-loop lag by `gateway/loop_lag.py`.

Metric names and what an alert or dashboard reads are listed in deploy/prometheus/alerts.yaml
and deploy/grafana/fluxgate.json; tests/deploy/test_observability_files.py checks that every
name they use is exposed here.

Access: with `metrics.token_env` naming an environment variable, `/metrics` wants
`Authorization: Bearer <that value>`; without one, only loopback clients may scrape it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.api.deps import Services
    from gateway.jobs.tables import JobRow

_BREAKER = {"closed": 0, "half_open": 1, "open": 2}
_MICRO = 1_000_000
#: the job stages timed by `fluxgate_job_stage_seconds` (see gateway/jobs/telemetry.py)
STAGES = ("queue", "submit", "upstream", "download", "store", "settle")
#: upstream error classes (`fluxgate_upstream_errors_total{error}`): a closed set
UPSTREAM_ERRORS = ("auth", "rejected", "throttled", "unavailable", "ambiguous", "timeout",
                   "other")
#: webhook attempt outcomes (`fluxgate_webhook_deliveries_total{outcome}`)
WEBHOOK_OUTCOMES = ("delivered", "retry", "failed", "disabled")
_STATEMENTS = frozenset({"select", "insert", "update", "delete"})
_REFRESH_TIMEOUT = 2.0  # seconds for the scrape-time database reads
#: a job still unfinished this long after its deadline is stuck (its runner should have
#: failed it at the deadline; its lease is adopted within `jobs.lease`)
STUCK_AFTER = 120.0
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """The gateway's metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fluxgate_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=self.registry)
        self.jobs = Counter(
            "fluxgate_jobs_finished", "Jobs that reached a terminal state.",
            ["model", "channel", "status", "error_code"], registry=self.registry)
        self.money = Counter(
            "fluxgate_money", "Money in the currency unit, by kind: `reserved` (when a job "
            "is created), `settled` (charged for a result), `fee` (kept on a failure, e.g. "
            "moderation) and `released` (given back).",
            ["model", "kind"], registry=self.registry)
        self.upstream_seconds = Histogram(
            "fluxgate_upstream_seconds", "From submit to the upstream's terminal answer.",
            ["channel"], registry=self.registry,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
        self.job_seconds = Histogram(
            "fluxgate_job_seconds", "From creation to the terminal state.", ["model"],
            registry=self.registry, buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
        self.request_seconds = Histogram(
            "fluxgate_http_request_seconds", "Time to answer a request (to its last byte).",
            ["route"], registry=self.registry, buckets=_SLOW)
        self.jobs_created = Counter(
            "fluxgate_jobs_created", "Jobs created (their money reserved).", ["model"],
            registry=self.registry)
        self.stage_seconds = Histogram(
            "fluxgate_job_stage_seconds", "Time a job spent in a stage: queue (waiting for a "
            "channel slot), submit, upstream (polling to its answer), download, store "
            "(re-encode and store the result), settle (the terminal transaction).",
            ["stage", "channel"], registry=self.registry, buckets=_SLOW)
        self.upstream_errors = Counter(
            "fluxgate_upstream_errors", "Failed upstream calls, by stage and error class "
            "(auth, rejected, throttled, unavailable, ambiguous, timeout, other).",
            ["channel", "stage", "error"], registry=self.registry)
        self.settle_failures = Counter(
            "fluxgate_settle_failures", "Terminal transactions (settle or release) that "
            "failed: the job's money stays reserved until it is retried or adopted.",
            registry=self.registry)
        self.webhook_deliveries = Counter(
            "fluxgate_webhook_deliveries", "Webhook attempts, by outcome (delivered, retry, "
            "failed: schedule exhausted, disabled: the receiver answered 410).",
            ["outcome"], registry=self.registry)
        self.webhook_backlog = Gauge(
            "fluxgate_webhook_backlog", "Webhook deliveries pending (all replicas).",
            registry=self.registry)
        self.webhook_oldest = Gauge(
            "fluxgate_webhook_oldest_pending_seconds",
            "Age of the oldest pending webhook delivery (0: none).", registry=self.registry)
        self.jobs_stuck = Gauge(
            "fluxgate_jobs_stuck", f"Unfinished jobs {STUCK_AFTER:.0f} s past their deadline "
            "(all replicas).", registry=self.registry)
        self.jobs_unfinished = Gauge(
            "fluxgate_jobs_unfinished", "Unfinished jobs in the database (all replicas).",
            ["status"], registry=self.registry)
        self.db_seconds = Histogram(
            "fluxgate_db_query_seconds", "Database statement latency.", ["statement"],
            registry=self.registry, buckets=_FAST)
        self.redis_seconds = Histogram(
            "fluxgate_redis_seconds", "Redis (rate-limit backend) call latency.",
            registry=self.registry, buckets=_FAST)
        self.loop_lag = Histogram(
            "fluxgate_event_loop_lag_seconds", "How late the event loop ran a timer: time "
            "every coroutine of this process waited for the CPU.", registry=self.registry,
            buckets=_FAST)
        self.scrape_errors = Counter(
            "fluxgate_metrics_refresh_errors", "Scrape-time database reads that failed "
            "(their gauges keep the last value).", registry=self.registry)

    def watch(self, services: Services) -> None:
        """Report `services`' state (read at scrape time)."""
        self.registry.register(_StateCollector(lambda: services))

    def watch_engine(self, engine: AsyncEngine) -> None:
        """Time every statement `engine` runs (`fluxgate_db_query_seconds`)."""
        target = engine.sync_engine

        def before(conn: Any, _cursor: Any, _stmt: str, _params: Any, context: Any,
                   _many: bool) -> None:
            context._fluxgate_started = time.perf_counter()

        def after(conn: Any, _cursor: Any, statement: str, _params: Any, context: Any,
                  _many: bool) -> None:
            started = getattr(context, "_fluxgate_started", None)
            if started is None:
                return
            verb = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else ""
            self.db_seconds.labels(verb if verb in _STATEMENTS else "other").observe(
                time.perf_counter() - started)

        event.listen(target, "before_cursor_execute", before)
        event.listen(target, "after_cursor_execute", after)

    def jobs_reserved(self, rows: Sequence[JobRow]) -> None:
        """Jobs were created and their price reserved."""
        for row in rows:
            self.jobs_created.labels(row.model).inc()
            if row.price > 0:
                self.money.labels(row.model, "reserved").inc(row.price / _MICRO)

    def upstream_error(self, channel: str, stage: str, error: str) -> None:
        self.upstream_errors.labels(channel, stage, error).inc()

    def webhook_outcome(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome).inc()

    async def refresh(self, services: Services) -> None:
        """Read the database-wide gauges (webhook backlog, stuck and unfinished jobs). A
        failure or timeout is counted and leaves the last values; never raises."""
        from gateway.jobs.tables import JobRow
        from gateway.webhooks.tables import WebhookDeliveryRow

        now = datetime.now(UTC)
        try:
            with anyio.fail_after(_REFRESH_TIMEOUT):
                async with services.sessions() as session:
                    pending, oldest = (await session.execute(
                        select(func.count(), func.min(WebhookDeliveryRow.created_at))
                        .where(WebhookDeliveryRow.status == "pending"))).one()
                    by_status = {status: count for status, count in await session.execute(
                        select(JobRow.status, func.count())
                        .where(JobRow.status.in_(("queued", "running")))
                        .group_by(JobRow.status))}
                    stuck = (await session.execute(
                        select(func.count()).select_from(JobRow)
                        .where(JobRow.status.in_(("queued", "running")),
                               JobRow.deadline_at < now - timedelta(seconds=STUCK_AFTER))
                        )).scalar_one()
        except Exception:  # the database is down or slow: /readyz says so; keep scraping
            self.scrape_errors.inc()
            return
        self.webhook_backlog.set(pending)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        self.webhook_oldest.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        for status in ("queued", "running"):
            self.jobs_unfinished.labels(status).set(by_status.get(status, 0))
        self.jobs_stuck.set(stuck)

    def job_finished(self, row: JobRow) -> None:
        channel = row.channel or "none"
        self.jobs.labels(row.model, channel, row.status, row.error_code or "").inc()
        charged = row.charged or 0
        kind = "settled" if row.status == "succeeded" else "fee"
        if charged:
            self.money.labels(row.model, kind).inc(charged / _MICRO)
        if row.price > charged:
            self.money.labels(row.model, "released").inc((row.price - charged) / _MICRO)
        if row.upstream_latency is not None:
            self.upstream_seconds.labels(channel).observe(row.upstream_latency)
        if row.finished_at is not None and row.created_at is not None:
            created = row.created_at
            if created.tzinfo is None and row.finished_at.tzinfo is not None:
                created = created.replace(tzinfo=row.finished_at.tzinfo)
            self.job_seconds.labels(row.model).observe(
                max(0.0, (row.finished_at - created).total_seconds()))


class _StateCollector(Collector):
    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services

    def collect(self) -> Iterator[Any]:
        s = self._services()
        running = GaugeMetricFamily("fluxgate_jobs_running", "Jobs running in this process.")
        running.add_metric([], s.jobs.running)
        yield running
        active = GaugeMetricFamily("fluxgate_channel_active", "Jobs holding a channel slot.",
                                   labels=["channel"])
        limit = GaugeMetricFamily("fluxgate_channel_max_concurrency",
                                  "A channel's concurrency cap (0: none).", labels=["channel"])
        breaker = GaugeMetricFamily("fluxgate_channel_breaker",
                                    "Breaker state: 0 closed, 1 half-open, 2 open.",
                                    labels=["channel"])
        enabled = GaugeMetricFamily("fluxgate_channel_enabled", "1 when the channel routes.",
                                    labels=["channel"])
        for ch in s.router.channels:
            active.add_metric([ch.name], ch.active)
            limit.add_metric([ch.name], ch.max_concurrency or 0)
            breaker.add_metric([ch.name], _BREAKER.get(ch.breaker.state, 2))
            enabled.add_metric([ch.name], 1 if ch.disabled_reason is None else 0)
        yield from (active, limit, breaker, enabled)
        tx = GaugeMetricFamily("fluxgate_db_transactions",
                               "Database transactions ended since start.", labels=["outcome"])
        tx.add_metric(["commit"], s.transactions.commits)
        tx.add_metric(["rollback"], s.transactions.rollbacks)
        yield tx
        budget = GaugeMetricFamily("fluxgate_decode_pixels_in_use",
                                   "Pixels being decoded now (see limits.decode_pixel_budget).")
        budget.add_metric([], s.pixel_budget.in_use)
        yield budget
        oldest = GaugeMetricFamily("fluxgate_jobs_oldest_running_seconds",
                                   "Age of the oldest job running in this process (0: none).")
        oldest.add_metric([], s.jobs.oldest_age())
        yield oldest
        limiter = GaugeMetricFamily("fluxgate_rate_limit_backend_errors",
                                    "Failed or slow rate-limit backend (Redis) calls since "
                                    "start.")
        limiter.add_metric([], s.rate_limiter.backend_errors)
        yield limiter


class MetricsMiddleware:
    """Counts every HTTP answer by method, route template (never the raw path: ids would make
    a label per job) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            services = getattr(scope["app"].state, "services", None) if "app" in scope \
                else None
            if services is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                services.metrics.requests.labels(scope["method"], route, str(status)).inc()
                services.metrics.request_seconds.labels(route).observe(
                    time.perf_counter() - started)
