"""Prometheus metrics at `GET /metrics` (prometheus-client), low-cardinality labels only: never a
key id, a prompt or a job id.

What is counted where it happens costs a dictionary lookup on the hot path: requests by route
template and status (`MetricsMiddleware`), and finished jobs by model, channel and outcome with
their money and upstream latency (`Metrics.job_finished`, called by the job service after its
terminal commit). What is a state (jobs running, channel concurrency and breakers, database
transactions, the decoding budget) is read only when scraped (`_StateCollector`).

Access: with `metrics.token_env` naming an environment variable, `/metrics` wants
`Authorization: Bearer <that value>`; without one, only loopback clients may scrape it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from gateway.api.deps import Services
    from gateway.jobs.tables import JobRow

_BREAKER = {"closed": 0, "half_open": 1, "open": 2}
_MICRO = 1_000_000


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
            "fluxgate_money", "Money of finished jobs in the currency unit: `charged` (settled, "
            "or the fee kept on a failure) and `released` (given back).",
            ["model", "kind"], registry=self.registry)
        self.upstream_seconds = Histogram(
            "fluxgate_upstream_seconds", "From submit to the upstream's terminal answer.",
            ["channel"], registry=self.registry,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
        self.job_seconds = Histogram(
            "fluxgate_job_seconds", "From creation to the terminal state.", ["model"],
            registry=self.registry, buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))

    def watch(self, services: Services) -> None:
        """Report `services`' state (read at scrape time)."""
        self.registry.register(_StateCollector(lambda: services))

    def job_finished(self, row: JobRow) -> None:
        channel = row.channel or "none"
        self.jobs.labels(row.model, channel, row.status, row.error_code or "").inc()
        charged = row.charged or 0
        self.money.labels(row.model, "charged").inc(charged / _MICRO)
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
