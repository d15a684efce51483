"""OpenTelemetry tracing, optional (`pip install 'fluxgate[otel]'`, `tracing.enabled: true`).

What is traced: a span per HTTP request (the ASGI instrumentation, outermost but for the
proxy-header middleware; `/healthz`, `/readyz` and `/metrics` are left out), a `job` span per
job with a child span per stage (`job.queue`, `job.submit`, `job.upstream`, `job.download`,
`job.store`, `job.settle`; gateway/jobs/telemetry.py), and a client span per upstream HTTP
call (the httpx instrumentation on every channel's clients), which also sends the W3C
`traceparent` header, so an upstream that traces sees our trace. A job runs in a task of its
own: it starts inside the creating request's context, so its spans are that request's
children. Webhook deliveries are not instrumented: a customer's receiver has no business
with our trace ids.

Spans carry ids (job id, channel, model, route) and never prompts, keys or images.

Export: OTLP over HTTP to `tracing.otlp_endpoint`, else to the endpoint the standard
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables name; with none
of them, spans are made (and sent upstream as `traceparent`) but not exported. Each app gets
a `TracerProvider` of its own, never the process-global one, so several apps (tests) in one
process keep their spans apart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.settings import ConfigError, TracingSettings

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider

#: paths without request spans: probes and scrapes, many per minute, tell nothing
UNTRACED = "healthz,readyz,metrics"


class Tracing:
    """An app's tracer provider and the instrumentation that uses it."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("fluxgate", __version__)

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, str | int | float]) -> Iterator[None]:
        """A span around the block, current inside it; an exception is recorded on it and
        sets its status to error, and is raised on."""
        with self.tracer.start_as_current_span(name, attributes=attributes):
            yield

    def middleware(self) -> tuple[Any, dict[str, Any]]:
        """The ASGI middleware class and its options (for `app.add_middleware`)."""
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware, {"tracer_provider": self.provider,
                                         "excluded_urls": UNTRACED}

    def instrument(self, client: httpx.AsyncClient) -> None:
        """Client spans and `traceparent` on every request `client` sends."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=self.provider)

    def shutdown(self) -> None:
        """Export what is buffered and stop (at shutdown)."""
        self.provider.shutdown()


def build_tracing(settings: TracingSettings) -> Tracing | None:
    """The app's tracing, or None when `tracing.enabled` is off. Raises ConfigError when it
    is on and the `otel` extra is not installed."""
    if not settings.enabled:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError("tracing.enabled needs the OpenTelemetry packages: "
                          "pip install 'fluxgate[otel]'") from exc
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name,
                                  SERVICE_VERSION: __version__}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    endpoint = settings.otlp_endpoint
    if endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") \
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracing(provider)
