"""GET /metrics after real jobs: what an operator's Prometheus scrapes (issue 16).

Success, failure and moderation on the sandbox; failover, a disabled channel, an open breaker
and result downloads on two BFL channels stubbed with respx (BFL's wire format, as in
tests/jobs/test_failover.py); a webhook retried by a loopback receiver; a job left behind by
a crashed replica."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.jobs.tables import JobRow
from gateway.jobs.telemetry import JobTelemetry
from gateway.metrics import Metrics
from tests.conftest import Gateway
from tests.jobs.test_failover import upstreams  # noqa: F401 (a fixture)
from tests.webhooks.conftest import Receiver, receiver  # noqa: F401 (a fixture)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PRO = ("model", "flux-kontext-pro")


def scrape(gw: Gateway, **headers: str) -> Samples:
    answer = httpx.get(f"{gw.base_url}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape_until(gw: Gateway, ready: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    """Scrape until `ready` holds (what the gateway does after an answer, e.g. a webhook
    outcome's commit, may land a moment later on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(gw)
        if ready(m):
            return m
        assert time.monotonic() < deadline, "the metrics never got there"
        time.sleep(0.1)


def value(m: Samples, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def generate(gw: Gateway, key: str, prompt: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", timeout=120,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": prompt,
                            "response_format": "url", **fields})


def test_metrics_count_jobs_money_stages_and_requests(gateway: Gateway) -> None:
    _, key = gateway.create_key("m", balance=1_000_000)
    assert generate(gateway, key, "a fox").status_code == 200
    assert generate(gateway, key, "a cat").status_code == 200
    assert generate(gateway, key, "a dog sandbox:fail").status_code == 502
    m = scrape(gateway)
    ok = (("channel", "sandbox"), ("error_code", ""), PRO, ("status", "succeeded"))
    assert m[("fluxgate_jobs_finished_total", ok)] == 2
    failed = [v for (name, labels), v in m.items() if name == "fluxgate_jobs_finished_total"
              and ("status", "failed") in labels]
    assert failed == [1]
    assert value(m, "fluxgate_jobs_created_total", model="flux-kontext-pro") == 3
    money = {kind: value(m, "fluxgate_money_total", kind=kind, model="flux-kontext-pro")
             for kind in ("reserved", "settled", "fee", "released")}
    assert money == pytest.approx({"reserved": 0.12, "settled": 0.08, "fee": 0,
                                   "released": 0.04})
    route = (("method", "POST"), ("route", "/v1/images/generations"))
    assert m[("fluxgate_http_requests_total", (*route, ("status", "200")))] == 2
    assert m[("fluxgate_http_requests_total", (*route, ("status", "502")))] == 1
    assert value(m, "fluxgate_http_request_seconds_count",
                 route="/v1/images/generations") == 3
    assert m[("fluxgate_upstream_seconds_count", (("channel", "sandbox"),))] == 3
    # every job went through queue, submit, upstream and settle; the two results were stored
    stages = {stage: value(m, "fluxgate_job_stage_seconds_count", stage=stage,
                           channel="sandbox")
              for stage in ("queue", "submit", "upstream", "download", "store", "settle")}
    assert stages == {"queue": 3, "submit": 3, "upstream": 3, "download": 0, "store": 2,
                      "settle": 3}  # the sandbox hands its bytes over: nothing to download
    assert m[("fluxgate_jobs_running", ())] == 0
    assert m[("fluxgate_channel_breaker", (("channel", "sandbox"),))] == 0
    assert m[("fluxgate_db_transactions", (("outcome", "commit"),))] > 0
    assert value(m, "fluxgate_db_query_seconds_count", statement="select") > 0
    assert value(m, "fluxgate_db_query_seconds_count", statement="insert") > 0
    assert value(m, "fluxgate_webhook_backlog") == 0
    assert value(m, "fluxgate_jobs_stuck") == 0
    assert value(m, "fluxgate_settle_failures_total") == 0
    # the loop-lag task measures every 0.5 s from start-up
    scrape_until(gateway, lambda s: value(s, "fluxgate_event_loop_lag_seconds_count") >= 1)
    # no key ids, job ids or prompts in any label
    labels = " ".join(str(labels) for _, labels in m)
    assert "job_" not in labels and "fox" not in labels and "key_" not in labels


def test_metrics_after_failover_a_disabled_channel_and_downloads(
        gateway_factory: Any, upstreams: Any) -> None:  # noqa: F811
    from tests.jobs.test_failover import channels

    a, _b = upstreams
    a.fail = lambda _r: httpx.Response(503, json={"detail": "overloaded"})
    gw = gateway_factory(channels=channels(priority=2, breaker_threshold=1),  # A first
                         jobs={"poll_initial": 0.01, "poll_max": 0.05})
    _, key = gw.create_key(balance=1_000_000)
    assert generate(gw, key, "a fox").status_code == 200  # A refused (503): failed over to B
    m = scrape(gw)
    assert value(m, "fluxgate_upstream_errors_total", channel="A", stage="submit",
                 error="unavailable") == 1
    assert value(m, "fluxgate_channel_breaker", channel="A") == 2  # threshold 1: open
    assert value(m, "fluxgate_channel_breaker", channel="B") == 0
    assert value(m, "fluxgate_jobs_finished_total", channel="B", error_code="",
                 model="flux-kontext-pro", status="succeeded") == 1
    for stage in ("submit", "upstream", "download", "store", "settle"):
        assert value(m, "fluxgate_job_stage_seconds_count", stage=stage, channel="B") == 1
    assert value(m, "fluxgate_job_stage_seconds_count", stage="submit", channel="A") == 1

    # a 402 disables the channel for good (until an admin re-enables it)
    a.fail = lambda _r: httpx.Response(402, json={"detail": "Insufficient credits"})
    gw.services.router.get("A").breaker.success()  # closed again: A is tried first
    assert generate(gw, key, "a cat").status_code == 200
    m = scrape(gw)
    assert value(m, "fluxgate_upstream_errors_total", channel="A", stage="submit",
                 error="auth") == 1
    assert value(m, "fluxgate_channel_enabled", channel="A") == 0
    assert value(m, "fluxgate_channel_enabled", channel="B") == 1
    assert value(m, "fluxgate_channel_active", channel="B") == 0
    assert value(m, "fluxgate_channel_max_concurrency", channel="B") == 500
    assert value(m, "fluxgate_money_total", kind="settled", model="flux-kontext-pro") \
        == pytest.approx(0.08)


def test_metrics_count_webhook_retries_and_backlog(gateway_factory: Any,
                                                   receiver: Receiver) -> None:  # noqa: F811
    # the first retry comes 0.3 s after a failure, the next one an hour later
    gw = gateway_factory(webhooks={"poll_interval": 0.1, "schedule": [0, 0.3, 3600],
                                   "jitter": 0})
    _, key = gw.create_key("wh", balance=1_000_000)
    receiver.script = [(500, {}), (200, {})]
    assert generate(gw, key, "a fox", webhook_url=receiver.url).status_code == 200
    m = scrape_until(gw, lambda s: value(s, "fluxgate_webhook_deliveries_total",
                                         outcome="delivered") >= 1)
    assert value(m, "fluxgate_webhook_deliveries_total", outcome="retry") == 1
    assert value(m, "fluxgate_webhook_deliveries_total", outcome="delivered") == 1
    assert value(m, "fluxgate_webhook_backlog") == 0

    receiver.default = (503, {})  # this receiver is down: the delivery waits an hour
    assert generate(gw, key, "a cat", webhook_url=receiver.url).status_code == 200
    m = scrape_until(gw, lambda s: value(s, "fluxgate_webhook_deliveries_total",
                                         outcome="retry") >= 3)
    assert value(m, "fluxgate_webhook_deliveries_total", outcome="delivered") == 1
    assert value(m, "fluxgate_webhook_deliveries_total", outcome="failed") == 0
    assert value(m, "fluxgate_webhook_backlog") == 1
    assert value(m, "fluxgate_webhook_oldest_pending_seconds") > 0


def test_a_job_left_by_a_crashed_replica_counts_as_stuck(gateway: Gateway) -> None:
    """A job past its deadline that no live runner finishes (its runner crashed and still
    holds the lease): what the `FluxgateJobsStuck` alert is for."""
    key_id, _ = gateway.create_key("stuck")
    long_ago = datetime.now(UTC) - timedelta(hours=1)

    async def leave_a_job() -> None:
        async with gateway.services.sessions.begin() as session:
            session.add(JobRow(
                id="job_left_behind", key_id=key_id, surface="openai.images",
                status="running", stage="submitted", model="flux-kontext-pro",
                operation="generate", spec={}, prompt="x", price=0, outputs=[], polls=0,
                attempts=1, timeline=[], created_at=long_ago, updated_at=long_ago,
                deadline_at=long_ago + timedelta(minutes=10), runner="crashed-replica",
                lease_until=datetime.now(UTC) + timedelta(hours=1)))

    gateway.call(leave_a_job())
    m = scrape(gateway)
    assert value(m, "fluxgate_jobs_stuck") == 1
    assert value(m, "fluxgate_jobs_unfinished", status="running") == 1


@pytest.mark.skipif(not os.environ.get("FLUXGATE_TEST_REDIS_URL"),
                    reason="FLUXGATE_TEST_REDIS_URL is not set")
def test_redis_latency_is_measured(gateway_factory: Any) -> None:
    gw = gateway_factory(redis_url=os.environ["FLUXGATE_TEST_REDIS_URL"])
    _, key = gw.create_key("rpm", rpm=100)
    assert generate(gw, key, "a fox").status_code == 200
    assert value(scrape(gw), "fluxgate_redis_seconds_count") >= 1


def test_a_failed_settle_is_counted() -> None:
    """The terminal transaction raising (the database went away): the money stays reserved,
    and `fluxgate_settle_failures_total` is what pages someone."""
    metrics = Metrics()
    telemetry = JobTelemetry(metrics)
    with pytest.raises(ConnectionError), telemetry.stage("settle", "A"):
        raise ConnectionError("the database went away")
    assert metrics.registry.get_sample_value("fluxgate_settle_failures_total") == 1
    assert metrics.registry.get_sample_value(
        "fluxgate_job_stage_seconds_count", {"stage": "settle", "channel": "A"}) == 1


def test_metrics_token(gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRAPE_TOKEN", "s3cret")
    gw = gateway_factory(metrics_token_env="SCRAPE_TOKEN")
    assert httpx.get(f"{gw.base_url}/metrics").status_code == 403
    wrong = httpx.get(f"{gw.base_url}/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert scrape(gw, authorization="Bearer s3cret")[("fluxgate_jobs_running", ())] == 0
