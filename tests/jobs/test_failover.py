"""Failover through the real job service: two BFL channels stubbed at the transport (respx)
with BFL's documented wire format (`{id, polling_url}`, `get_result` -> `Ready` +
`result.sample`)."""

from __future__ import annotations

import io
import random
from collections import Counter
from typing import Any

import httpx
import pytest
import respx
from PIL import Image
from sqlalchemy import select

from billing.tables import LedgerRow
from gateway.jobs.model import JobSpec
from gateway.jobs.tables import JobRow
from tests.conftest import Gateway

A, B = "https://a.bfl.test", "https://b.bfl.test"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


PNG = png()


def channels(**a_extra: Any) -> list[dict[str, Any]]:
    # the result hosts (delivery.a.bfl.test...) do not resolve and are not BFL's own *.bfl.ai:
    # each channel lists them, as an operator lists a reseller's CDN
    return [
        {"name": "A", "type": "bfl", "base_url": A, "api_key_env": "A_KEY", "priority": 1,
         "max_concurrency": 500, "result_hosts": ["*.a.bfl.test"], **a_extra},
        {"name": "B", "type": "bfl", "base_url": B, "api_key_env": "B_KEY", "priority": 1,
         "max_concurrency": 500, "result_hosts": ["*.b.bfl.test"]},
    ]


class FakeBfl:
    """A BFL upstream at `base`: counts submits; `fail` decides a submit's fate."""

    def __init__(self, mock: respx.MockRouter, base: str, name: str) -> None:
        self.submits = 0
        self.accepted = 0
        self.fail: Any = None  # callable(request) -> httpx.Response | Exception | None
        self.base = base
        self.name = name
        mock.post(f"{base}/v1/flux-kontext-pro").mock(side_effect=self._submit)
        mock.get(f"{base}/v1/get_result").mock(side_effect=self._poll)
        mock.get(url__startswith=f"https://delivery.{name}.bfl.test/").mock(
            return_value=httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))

    def _submit(self, request: httpx.Request) -> httpx.Response:
        self.submits += 1
        if self.fail is not None:
            outcome = self.fail(request)
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None:
                return outcome
        self.accepted += 1
        task = f"{self.name}-{self.accepted}"
        return httpx.Response(200, json={"id": task,
                                         "polling_url": f"{self.base}/v1/get_result?id={task}"})

    def _poll(self, request: httpx.Request) -> httpx.Response:
        task = request.url.params["id"]
        return httpx.Response(200, json={
            "id": task, "status": "Ready",
            "result": {"sample": f"https://delivery.{self.name}.bfl.test/{task}.png"}})


@pytest.fixture
def upstreams(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("A_KEY", "key-a")
    monkeypatch.setenv("B_KEY", "key-b")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        yield FakeBfl(mock, A, "a"), FakeBfl(mock, B, "b")


def start(gateway_factory: Any, **a_extra: Any) -> Gateway:
    gw: Gateway = gateway_factory(channels=channels(**a_extra),
                                  jobs={"poll_initial": 0.01, "poll_max": 0.05})
    return gw


def generate(gw: Gateway, key: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": "a fox",
                            "response_format": "url"}, timeout=60)


def test_refused_submit_fails_over(gateway_factory: Any, upstreams: Any) -> None:
    a, b = upstreams
    a.fail = lambda _r: httpx.Response(503, json={"detail": "overloaded"})
    b.fail = lambda _r: httpx.Response(503, json={"detail": "overloaded"})
    gw = start(gateway_factory)
    _, key = gw.create_key(balance=1_000_000)
    assert generate(gw, key).status_code == 503  # both refused: nothing accepted
    b.fail = None
    for _ in range(6):
        answer = generate(gw, key)
        assert answer.status_code == 200
        assert "sandbox" not in answer.json()  # only sandbox results carry the label
    assert b.accepted == 6 and a.accepted == 0


def test_no_resubmit_after_ambiguous_submit(gateway_factory: Any, upstreams: Any) -> None:
    a, b = upstreams
    a.fail = lambda r: httpx.ReadTimeout("no answer", request=r)
    b.fail = lambda r: httpx.ReadTimeout("no answer", request=r)
    gw = start(gateway_factory)
    key_id, key = gw.create_key(balance=1_000_000)
    resp = generate(gw, key)
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == "upstream_ambiguous"
    assert a.submits + b.submits == 1  # never re-sent to the other channel

    async def rows() -> list[tuple[str, int]]:
        async with gw.services.sessions() as s:
            found = (await s.execute(select(LedgerRow).where(LedgerRow.key_id == key_id)
                                     .order_by(LedgerRow.id))).scalars()
            return [(r.kind, r.amount) for r in found]

    assert gw.call(rows()) == [("topup", 1_000_000), ("reserve", -40_000), ("release", 40_000)]


def test_payment_required_disables_the_channel_with_a_reason(gateway_factory: Any,
                                                             upstreams: Any) -> None:
    a, _b = upstreams
    a.fail = lambda _r: httpx.Response(402, json={"detail": "Insufficient credits"})
    gw = start(gateway_factory, priority=2)  # A is always tried first
    _, key = gw.create_key()
    for _ in range(8):
        assert generate(gw, key).status_code == 200
    assert a.submits == 1  # disabled after its first 402
    health = httpx.get(f"{gw.base_url}/healthz").json()
    chan = next(c for c in health["channels"] if c["name"] == "A")
    assert chan["disabled"] and "credit" in chan["disabled"].lower()


ADMIN = "admin-token-for-channel-tests"


def admin_channel(gw: Gateway, name: str, action: str | None = None) -> dict[str, Any]:
    """The admin API's view of channel `name`, after `action` (enable/disable) if given."""
    auth = {"authorization": f"Bearer {ADMIN}"}
    if action:
        resp = httpx.post(f"{gw.base_url}/admin/channels/{name}/{action}", headers=auth)
        assert resp.status_code == 200, resp.text
    listed = httpx.get(f"{gw.base_url}/admin/channels", headers=auth).json()["data"]
    found: dict[str, Any] = next(c for c in listed if c["name"] == name)
    return found


def test_upstream_disable_holds_across_restarts_until_an_admin_enables(
        gateway_factory: Any, upstreams: Any, tmp_path: Any) -> None:
    """"402 disables the channel until an admin re-enables it": a restart must not quietly
    send traffic to an account that is still empty."""
    a, _b = upstreams
    a.fail = lambda _r: httpx.Response(402, json={"detail": "Insufficient credits"})
    data = tmp_path / "data"
    settings: dict[str, Any] = {"channels": channels(priority=2), "admin_token": ADMIN,
                                "jobs": {"poll_initial": 0.01, "poll_max": 0.05}}
    first: Gateway = gateway_factory(data, **settings)
    _, key = first.create_key()
    assert generate(first, key).status_code == 200  # served by B
    assert a.submits == 1
    first.stop()
    a.fail = None  # the account was topped up; only the admin knows

    second: Gateway = gateway_factory(data, **settings)
    assert "credit" in (admin_channel(second, "A")["disabled"] or "").lower()
    assert generate(second, key).status_code == 200
    assert a.submits == 1  # still disabled after the restart
    assert admin_channel(second, "A", "enable")["disabled"] is None
    assert generate(second, key).status_code == 200
    assert a.accepted == 1  # A (priority 2) serves again
    second.stop()

    third: Gateway = gateway_factory(data, **settings)
    assert admin_channel(third, "A")["disabled"] is None  # the enable was kept too
    assert generate(third, key).status_code == 200
    assert a.accepted == 2


def test_admin_disable_reaches_every_replica(gateway_factory: Any, upstreams: Any,
                                             tmp_path: Any) -> None:
    """Two replicas on one database: a channel disabled through one is out of routing on the
    other within `jobs.channel_sync_interval`, and enabled again the same way."""
    import time

    a, b = upstreams
    shared = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    settings: dict[str, Any] = {
        "channels": channels(priority=2), "admin_token": ADMIN, "database_url": shared,
        "jobs": {"poll_initial": 0.01, "poll_max": 0.05, "channel_sync_interval": 0.2}}
    one: Gateway = gateway_factory(tmp_path / "one", **settings)
    two: Gateway = gateway_factory(tmp_path / "two", **settings)

    def until(gw: Gateway, disabled: bool) -> None:
        deadline = time.monotonic() + 15
        while (admin_channel(gw, "A")["disabled"] is not None) != disabled:
            assert time.monotonic() < deadline, "the other replica did not follow"
            time.sleep(0.05)

    assert admin_channel(one, "A", "disable")["disabled"] == "disabled by an admin"
    until(two, disabled=True)
    _, key = two.create_key()
    assert generate(two, key).status_code == 200
    assert (a.submits, b.accepted) == (0, 1)
    assert admin_channel(two, "A", "enable")["disabled"] is None
    until(one, disabled=False)
    assert generate(one, key).status_code == 200
    assert a.accepted == 1


def test_partial_outage_keeps_success_and_amplification_low(gateway_factory: Any,
                                                            upstreams: Any) -> None:
    """A answers 503 to 30% of submits, B is healthy: >= 99.5% of 1,000 jobs succeed with at
    most 1.2 upstream submits per job."""
    a, b = upstreams
    rng = random.Random(1234)
    a.fail = lambda _r: httpx.Response(503, json={"detail": "busy"}) if rng.random() < 0.3 \
        else None
    gw = start(gateway_factory, breaker_threshold=50)
    key_id, _ = gw.create_key()

    async def run() -> list[JobRow]:
        jobs = gw.services.jobs
        specs = [JobSpec(key_id=key_id, model="flux-kontext-pro", prompt=f"fox {i}", seed=i)
                 for i in range(1000)]
        rows = await jobs.create(specs)
        return await jobs.wait([r.id for r in rows], within=240)

    rows = gw.call(run(), timeout=300)  # a busy 2-core machine: the wait's own bound holds
    status = Counter(r.status for r in rows)
    assert status["succeeded"] >= 995, status
    submits = a.submits + b.submits
    assert submits / len(rows) <= 1.2, (a.submits, b.submits)
    assert a.accepted + b.accepted == status["succeeded"]  # <= 1 accepted upstream job per job


def test_throttled_submit_backs_off_and_retries(gateway_factory: Any, upstreams: Any) -> None:
    """429 with Retry-After from the only channels: wait and offer the job again (bounded),
    without opening the breaker; a channel that keeps throttling ends in a 503."""
    a, _b = upstreams
    throttle = {"left": 2}

    def busy(_r: httpx.Request) -> httpx.Response | None:
        if throttle["left"] > 0:
            throttle["left"] -= 1
            return httpx.Response(429, headers={"retry-after": "1"},
                                  json={"detail": "too many active tasks"})
        return None

    a.fail = busy
    gw: Gateway = gateway_factory(channels=channels()[:1],
                                  jobs={"poll_initial": 0.01, "submit_rounds": 3})
    _, key = gw.create_key()
    assert generate(gw, key).status_code == 200
    assert a.submits == 3 and a.accepted == 1
    assert gw.services.router.get("A").breaker.state == "closed"  # type: ignore[union-attr]
    throttle["left"] = 10
    resp = generate(gw, key)
    assert resp.status_code == 503, resp.text
    assert a.submits == 6  # three rounds, then a clear error


def test_poll_honours_retry_after_of_a_throttled_status_read(gateway_factory: Any,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A 429 with Retry-After: 1 on get_result makes the next poll wait about 1 s, not the
    (much shorter) poll interval; then the job completes normally."""
    monkeypatch.setenv("A_KEY", "key-a")
    polls: list[float] = []
    import time as _time

    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.post(f"{A}/v1/flux-kontext-pro").mock(return_value=httpx.Response(
            200, json={"id": "t1", "polling_url": f"{A}/v1/get_result?id=t1"}))

        def poll(_r: httpx.Request) -> httpx.Response:
            polls.append(_time.monotonic())
            if len(polls) == 1:
                return httpx.Response(429, headers={"retry-after": "1"}, json={"detail": "slow"})
            return httpx.Response(200, json={"id": "t1", "status": "Ready",
                                             "result": {"sample": "https://d.a.bfl.test/t1.png"}})

        mock.get(f"{A}/v1/get_result").mock(side_effect=poll)
        mock.get("https://d.a.bfl.test/t1.png").mock(
            return_value=httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))
        gw: Gateway = gateway_factory(channels=channels()[:1],
                                      jobs={"poll_initial": 0.01, "poll_max": 0.05})
        _, key = gw.create_key()
        assert generate(gw, key).status_code == 200
    assert len(polls) == 2
    assert polls[1] - polls[0] >= 0.9


def test_restart_while_waiting_out_a_429_submits_again(tmp_path: Any, upstreams: Any) -> None:
    """A job waiting for a throttled upstream is not at any upstream: after a restart it is
    offered again (not failed as ambiguous) and succeeds, charged once."""
    from tests.conftest import start_gateway

    a, _b = upstreams
    a.fail = lambda _r: httpx.Response(429, headers={"retry-after": "20"},
                                       json={"detail": "too many active tasks"})
    settings = {"channels": channels()[:1], "jobs": {"poll_initial": 0.01}}
    first = start_gateway(tmp_path / "data", **settings)
    _key_id, key = first.create_key(balance=1_000_000)
    try:
        with httpx.Client(timeout=1.0) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post(f"{first.base_url}/v1/images/generations",
                       headers={"authorization": f"Bearer {key}"},
                       json={"model": "flux-kontext-pro", "prompt": "a fox"})
    finally:
        first.stop()
    assert a.submits == 1 and a.accepted == 0
    a.fail = None
    second = start_gateway(tmp_path / "data", **settings)
    try:
        async def finished() -> list[JobRow]:
            async with second.services.sessions() as s:
                ids = list((await s.execute(select(JobRow.id))).scalars())
            return await second.services.jobs.wait(ids, within=30)

        [job] = second.call(finished())
        assert job.status == "succeeded", (job.error_code, job.error_message)
        assert a.accepted == 1 and job.charged == 40_000
    finally:
        second.stop()
