"""What the job service tells operators about a job while it runs: stage durations and
upstream errors (Prometheus, gateway/metrics.py) and a span per job and per stage
(OpenTelemetry, gateway/tracing.py, when tracing is on).

The stages (`gateway.metrics.STAGES`): `queue` (waiting for a channel slot), `submit` (the
upstream's submit call), `upstream` (polling until the upstream's terminal answer), `download`
(the result's bytes, retries included), `store` (format, re-encode and store it), `settle`
(the terminal transaction: state, files, settle or release, webhook row).

A stage that raises is recorded as failed: in `submit`, `upstream` and `download` as an
upstream error of its class; in `settle` as a settle failure (the money stays reserved).
Errors that the service handles inside a stage (a failed poll that is retried) are counted
with `upstream_error`. Telemetry never changes how a job runs: with neither metrics nor
tracing it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from adapters.base import (
    UpstreamAmbiguous,
    UpstreamAuthError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway import logcontext

if TYPE_CHECKING:
    from gateway.jobs.tables import JobRow
    from gateway.metrics import Metrics
    from gateway.tracing import Tracing

_UPSTREAM_STAGES = frozenset({"submit", "upstream", "download"})


def error_class(exc: BaseException) -> str:
    """The low-cardinality class of an upstream failure (`metrics.UPSTREAM_ERRORS`)."""
    if isinstance(exc, UpstreamAuthError):
        return "auth"
    if isinstance(exc, UpstreamRejected):
        if exc.status == 429:
            return "throttled"
        # a retryable refusal with a 5xx (or no status: a connection refused) is an outage
        return "unavailable" if exc.retryable and (exc.status or 500) >= 500 else "rejected"
    if isinstance(exc, UpstreamAmbiguous):
        return "ambiguous"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


class JobTelemetry:
    """Stage timing, error counts and spans of jobs; either part may be absent."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None, *,
                 log_prompts: bool = False) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.log_prompts = log_prompts

    def finished(self, row: JobRow) -> None:
        """A job is terminal (after its terminal commit): counted, and its one log line."""
        if self.metrics is not None:
            self.metrics.job_finished(row)
        logcontext.job_line(row, prompts=self.log_prompts)

    def created(self, rows: Sequence[JobRow]) -> None:
        """Jobs were created, their money reserved (after the creating commit)."""
        if self.metrics is not None:
            self.metrics.jobs_reserved(rows)

    def job(self, row: JobRow) -> contextlib.AbstractContextManager[None]:
        """The span of one run of a job (in its own task; a child of the creating request)."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.span("job", {"fluxgate.job.id": row.id,
                                         "fluxgate.model": row.model,
                                         "fluxgate.operation": row.operation})

    @contextlib.contextmanager
    def stage(self, name: str, channel: str | None) -> Iterator[None]:
        """Time the block as stage `name` on `channel`, in a span `job.<name>`."""
        label = channel or "none"
        span = self.tracing.span(f"job.{name}", {"fluxgate.channel": label}) \
            if self.tracing is not None else contextlib.nullcontext()
        started = time.perf_counter()
        with span:
            try:
                yield
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.metrics is not None:
                    if name in _UPSTREAM_STAGES:
                        self.metrics.upstream_error(label, name, error_class(exc))
                    elif name == "settle":
                        self.metrics.settle_failures.inc()
                raise
            finally:
                if self.metrics is not None:
                    self.metrics.stage_seconds.labels(name, label).observe(
                        time.perf_counter() - started)

    def upstream_error(self, channel: str, stage: str, exc: BaseException) -> None:
        """An upstream call failed and the service handles it (e.g. a poll it retries)."""
        if self.metrics is not None:
            self.metrics.upstream_error(channel, stage, error_class(exc))
