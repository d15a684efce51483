"""JobService edge cases found in review, through the real gateway with upstreams stubbed at the
transport (respx) in their documented wire formats."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from billing import ledger
from billing.tables import LedgerRow
from gateway.jobs.model import JobSpec, JobStatus, Stage
from gateway.jobs.tables import JobRow
from tests.conftest import Gateway
from tests.jobs.test_failover import PNG, A, FakeBfl, channels, generate, upstreams

__all__ = ["upstreams"]  # the fixture, re-exported for pytest


def start(gateway_factory: Any, **overrides: Any) -> Gateway:
    overrides.setdefault("channels", channels())
    gw: Gateway = gateway_factory(jobs={"poll_initial": 0.01, "poll_max": 0.05}, **overrides)
    return gw

API = "https://api.replicate.test/v1"


def ledger_rows(gw: Gateway, key_id: str) -> list[tuple[str, int]]:
    async def go() -> list[tuple[str, int]]:
        async with gw.services.sessions() as s:
            found = (await s.execute(select(LedgerRow).where(LedgerRow.key_id == key_id)
                                     .order_by(LedgerRow.id))).scalars()
            return [(r.kind, r.amount) for r in found]
    result: list[tuple[str, int]] = gw.call(go())
    return result


@pytest.fixture
def one_bfl(monkeypatch: pytest.MonkeyPatch) -> Any:
    """respx with the result host routed first (the test decides its answers), then BFL `A`."""
    monkeypatch.setenv("A_KEY", "key-a")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        delivery = mock.get(url__startswith="https://delivery.a.bfl.test/")
        yield delivery, FakeBfl(mock, A, "a")


def test_transient_result_download_failure_is_retried(gateway_factory: Any,
                                                      one_bfl: Any) -> None:
    """A result download is a safe GET: a 503 from the delivery host is retried (bounded)
    instead of failing a job the upstream already produced (and billed us for)."""
    delivery, _a = one_bfl
    delivery.mock(side_effect=[
        httpx.Response(503, text="busy"),
        httpx.Response(200, content=PNG, headers={"content-type": "image/png"})])
    gw = start(gateway_factory, channels=channels()[:1])
    key_id, key = gw.create_key(balance=1_000_000)
    resp = generate(gw, key)
    assert resp.status_code == 200, resp.text
    assert delivery.call_count == 2
    assert ledger_rows(gw, key_id) == [("topup", 1_000_000), ("reserve", -40_000),
                                       ("settle", 0)]


def test_expired_result_url_is_not_retried(gateway_factory: Any, one_bfl: Any) -> None:
    """404 on the result URL (expired) fails the job at once and releases the money."""
    delivery, _a = one_bfl
    delivery.mock(return_value=httpx.Response(404, text="expired"))
    gw = start(gateway_factory, channels=channels()[:1])
    key_id, key = gw.create_key(balance=1_000_000)
    resp = generate(gw, key)
    assert resp.status_code == 502, resp.text
    assert delivery.call_count == 1
    assert ledger_rows(gw, key_id)[-1] == ("release", 40_000)


def test_reserved_job_past_its_deadline_is_released_on_resume(gateway_factory: Any,
                                                              upstreams: Any) -> None:
    """Crash point 1 (after reserve, before submit), found again after the job's deadline:
    it is released as a timeout and never sent to a paid upstream."""
    a, b = upstreams
    gw = start(gateway_factory)
    key_id, _ = gw.create_key(balance=1_000_000)
    spec = JobSpec(key_id=key_id, model="flux-kontext-pro", prompt="late fox", seed=1)

    async def crashed_after_reserve() -> str:
        now = datetime.now(UTC)
        async with gw.services.sessions.begin() as s:
            s.add(JobRow(id="job_late", key_id=key_id, surface="openai.images",
                         status=JobStatus.QUEUED.value, stage=Stage.RESERVED.value,
                         model=spec.model, operation="generate",
                         spec=spec.model_dump(mode="json"), prompt=spec.prompt, seed=1,
                         price=40_000, outputs=[], polls=0, attempts=0, timeline=[],
                         created_at=now - timedelta(hours=1),
                         updated_at=now - timedelta(hours=1),
                         deadline_at=now - timedelta(minutes=50)))
            await s.flush()
            await ledger.reserve(s, key_id, "job_late", 40_000)
        await gw.services.jobs.resume()
        [row] = await gw.services.jobs.wait(["job_late"], within=20)
        return f"{row.status}:{row.error_code}"

    assert gw.call(crashed_after_reserve()) == "failed:timeout"
    assert a.submits + b.submits == 0
    assert ledger_rows(gw, key_id)[-2:] == [("reserve", -40_000), ("release", 40_000)]


def prediction(status: str, pred: str) -> dict[str, object]:
    return {"id": pred, "model": "black-forest-labs/flux-kontext-pro", "version": "hidden",
            "input": {}, "logs": "", "output": None, "error": None, "status": status,
            "created_at": "2025-07-01T10:00:00.000Z",
            "urls": {"cancel": f"{API}/predictions/{pred}/cancel",
                     "get": f"{API}/predictions/{pred}"}}


def test_deadline_with_an_unreachable_cancel_is_still_a_timeout(
        gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the deadline the upstream job is cancelled best-effort: a cancel that cannot reach
    the upstream must not turn the job's `timeout` into an `internal_error`."""
    monkeypatch.setenv("R_KEY", "r8_test")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
            return_value=httpx.Response(201, json=prediction("starting", "p1")))
        mock.get(f"{API}/predictions/p1").mock(
            return_value=httpx.Response(200, json=prediction("processing", "p1")))
        cancel = mock.post(f"{API}/predictions/p1/cancel").mock(
            side_effect=httpx.ConnectError("down"))
        gw: Gateway = gateway_factory(
            channels=[{"name": "R", "type": "replicate", "base_url": API.removesuffix("/v1"),
                       "api_key_env": "R_KEY", "options": {"wait": 0}}],
            jobs={"poll_initial": 0.05, "poll_max": 0.1, "deadline": 1.0})
        key_id, key = gw.create_key(balance=1_000_000)
        started = time.monotonic()
        resp = generate(gw, key)
        assert time.monotonic() - started < 15
    assert cancel.call_count == 1
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "timeout"
    assert ledger_rows(gw, key_id)[-1] == ("release", 40_000)


def test_half_open_probe_is_not_claimed_by_a_job_that_never_tries_the_channel(
        gateway_factory: Any, upstreams: Any) -> None:
    """Listing a half-open channel as a fallback must not take its single probe: a job that
    succeeds on an earlier channel would hold that probe for four cooldowns, and the next job
    that needs the (recovered) fallback would find no channel at all."""
    a, b = upstreams
    chans = channels()
    chans[0].update(priority=2, breaker_threshold=1, breaker_cooldown=1.0)
    chans[1].update(breaker_threshold=1, breaker_cooldown=1.0)
    gw: Gateway = gateway_factory(channels=chans,
                                  jobs={"poll_initial": 0.01, "poll_max": 0.05,
                                        "submit_rounds": 1})
    _, key = gw.create_key()
    a.fail = b.fail = lambda _r: httpx.Response(503, json={"detail": "overloaded"})
    assert generate(gw, key).status_code == 503  # both breakers open
    time.sleep(1.1)  # both half-open
    a.fail = b.fail = None
    assert generate(gw, key).status_code == 200  # A's probe succeeds; B is never tried
    assert b.accepted == 0
    a.fail = lambda _r: httpx.Response(503, json={"detail": "overloaded"})
    resp = generate(gw, key)  # A fails again: B (healthy, half-open) must get its probe
    assert resp.status_code == 200, resp.text
    assert b.accepted == 1
