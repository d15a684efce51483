"""OpenTelemetry tracing (`fluxgate[otel]`, `tracing.enabled`): the spans of a real job,
caught with the SDK's in-memory exporter, and the `traceparent` that reaches the upstream (a
BFL channel stubbed with respx, BFL's wire format)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import Gateway
from tests.jobs.test_failover import PNG

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

BFL = "https://api.bfl.test"


@pytest.fixture
def bfl(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    monkeypatch.setenv("BFL_TEST_KEY", "key-bfl")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.post(f"{BFL}/v1/flux-kontext-pro").mock(return_value=httpx.Response(
            200, json={"id": "t-1", "polling_url": f"{BFL}/v1/get_result?id=t-1"}))
        mock.get(f"{BFL}/v1/get_result").mock(return_value=httpx.Response(
            200, json={"id": "t-1", "status": "Ready",
                       "result": {"sample": "https://delivery.api.bfl.test/t-1.png"}}))
        mock.get(url__startswith="https://delivery.api.bfl.test/").mock(
            return_value=httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))
        yield mock


def traced(gateway_factory: Any) -> tuple[Gateway, InMemorySpanExporter]:
    gw: Gateway = gateway_factory(
        tracing={"enabled": True},
        channels=[{"name": "bfl", "type": "bfl", "base_url": BFL, "api_key_env": "BFL_TEST_KEY",
                   "result_hosts": ["*.api.bfl.test"]}],
        jobs={"poll_initial": 0.01, "poll_max": 0.05})
    exporter = InMemorySpanExporter()
    assert gw.services.tracing is not None
    gw.services.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return gw, exporter


def spans_once(exporter: InMemorySpanExporter, *names: str, timeout: float = 30,
               ) -> tuple[ReadableSpan, ...]:
    """The finished spans once one of each of `names` has ended (the request's span ends
    after its last byte was sent, the job's a moment after its terminal commit)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = exporter.get_finished_spans()
        if all(any(s.name == name for s in spans) for name in names):
            return spans
        assert time.monotonic() < deadline, f"not every one of {names} within {timeout} s: " \
            f"{[s.name for s in spans]}"
        time.sleep(0.05)


def test_a_job_is_one_trace_from_request_to_upstream(gateway_factory: Any,
                                                     bfl: respx.MockRouter) -> None:
    gw, exporter = traced(gateway_factory)
    _, key = gw.create_key(balance=1_000_000)
    answer = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "flux-kontext-pro", "prompt": "a secret fox",
                              "response_format": "url"})
    assert answer.status_code == 200, answer.text
    spans = spans_once(exporter, "job", "POST /v1/images/generations")
    by_name = {s.name: s for s in spans}
    request = by_name["POST /v1/images/generations"]
    assert request.kind.name == "SERVER" and request.parent is None
    job = by_name["job"]
    trace_id = request.context.trace_id
    assert job.context.trace_id == trace_id and job.parent is not None
    for stage in ("queue", "submit", "upstream", "download", "store", "settle"):
        span = by_name[f"job.{stage}"]
        assert span.context.trace_id == trace_id, stage
        assert span.attributes["fluxgate.channel"] == "bfl"
    assert by_name["job.submit"].parent.span_id == job.context.span_id
    clients = [s for s in spans if s.kind.name == "CLIENT"]
    assert len(clients) >= 3  # submit, poll, download
    # the upstream got our trace: its traceparent names a client span of this trace
    submit = next(c.request for c in bfl.calls
                  if c.request.method == "POST" and c.request.url.host == "api.bfl.test")
    version, sent_trace, sent_parent, _flags = submit.headers["traceparent"].split("-")
    assert version == "00" and int(sent_trace, 16) == trace_id
    assert int(sent_parent, 16) in {c.context.span_id for c in clients}
    # spans carry ids, never the prompt or the key
    text = repr([(s.name, dict(s.attributes or {})) for s in spans])
    assert "secret fox" not in text and key not in text
    # probes are not traced
    assert httpx.get(f"{gw.base_url}/healthz").status_code == 200
    assert not [s for s in exporter.get_finished_spans() if "healthz" in s.name]


def test_tracing_off_sends_no_traceparent(gateway_factory: Any, bfl: respx.MockRouter) -> None:
    gw: Gateway = gateway_factory(
        channels=[{"name": "bfl", "type": "bfl", "base_url": BFL, "api_key_env": "BFL_TEST_KEY",
                   "result_hosts": ["*.api.bfl.test"]}],
        jobs={"poll_initial": 0.01, "poll_max": 0.05})
    assert gw.services.tracing is None
    _, key = gw.create_key(balance=1_000_000)
    answer = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "flux-kontext-pro", "prompt": "a fox"})
    assert answer.status_code == 200, answer.text
    sent = [c.request for c in bfl.calls if c.request.url.host.endswith("api.bfl.test")]
    assert len(sent) >= 3 and all("traceparent" not in r.headers for r in sent)
