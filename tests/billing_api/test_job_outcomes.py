"""Every job outcome leaves exactly the right ledger rows (through real HTTP)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from adapters.base import UpstreamAmbiguous
from tests.conftest import wait_for_job

PRO = 40_000  # flux-kontext-pro, micro-units


def generate(gw: Any, key: str, prompt: str, timeout: float = 30.0,
             **extra: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", timeout=timeout,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": prompt,
                            "response_format": "url", **extra})


def only_job(gw: Any, key_id: str) -> str:
    jobs = {j for j, _, _ in gw.key_rows(key_id) if j}
    assert len(jobs) == 1, jobs
    return jobs.pop()


def wait_rows(gw: Any, job_id: str, count: int, timeout: float = 15.0) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = gw.ledger_rows(job_id)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def assert_balanced(gw: Any, key_id: str, expected: int) -> None:
    balance, total, drift = gw.balance(key_id)
    assert balance == total == expected and drift == 0


def test_success_reserve_then_settle(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=1_000_000)
    resp = generate(bgw, key, "a red bicycle")
    assert resp.status_code == 200, resp.text
    job = only_job(bgw, key_id)
    assert bgw.ledger_rows(job) == [("reserve", -PRO), ("settle", 0)]
    assert_balanced(bgw, key_id, 1_000_000 - PRO)


def test_upstream_failure_releases_everything(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=1_000_000)
    assert generate(bgw, key, "a red bicycle sandbox:fail").status_code >= 500
    job = only_job(bgw, key_id)
    assert bgw.ledger_rows(job) == [("reserve", -PRO), ("release", PRO)]
    assert_balanced(bgw, key_id, 1_000_000)


def test_moderation_keeps_the_configured_fee(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=1_000_000)
    resp = generate(bgw, key, "a red bicycle sandbox:moderate")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "content_policy_violation"
    job = only_job(bgw, key_id)
    assert bgw.ledger_rows(job) == [("reserve", -PRO), ("release", PRO - 5_000)]
    assert_balanced(bgw, key_id, 1_000_000 - 5_000)


class AmbiguousSubmit:
    """A hand-written fake upstream whose submit is sent but never answered."""

    def __init__(self, real: Any) -> None:
        self.capabilities = real.capabilities
        self.submits = 0

    async def submit(self, req: Any) -> Any:
        self.submits += 1
        raise UpstreamAmbiguous("read timeout after the request was sent")


def test_ambiguous_submit_is_not_resent_nor_charged(bgw: Any) -> None:
    channel = bgw.services.router.channels[0]
    fake = AmbiguousSubmit(channel.adapter)
    channel.adapter = fake
    key_id, key = bgw.create_key(balance=1_000_000)
    assert generate(bgw, key, "a red bicycle").status_code >= 500
    assert fake.submits == 1
    job = only_job(bgw, key_id)
    assert bgw.ledger_rows(job) == [("reserve", -PRO), ("release", PRO)]
    assert_balanced(bgw, key_id, 1_000_000)


def test_sandbox_timeout_releases(billing_gateway_factory: Any) -> None:
    gw = billing_gateway_factory(jobs={"deadline": 1.0, "poll_initial": 0.05})
    key_id, key = gw.create_key(balance=1_000_000)
    resp = generate(gw, key, "a red bicycle sandbox:stuck")
    assert resp.status_code == 504, resp.text
    job = only_job(gw, key_id)
    assert gw.ledger_rows(job) == [("reserve", -PRO), ("release", PRO)]
    assert_balanced(gw, key_id, 1_000_000)


def test_client_disconnect_still_delivers_and_settles_once(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=1_000_000)
    with pytest.raises(httpx.TimeoutException):
        generate(bgw, key, "a red bicycle sandbox:latency=1", timeout=0.3)
    job = wait_for_job(bgw, key_id, submitted=False).id
    rows = wait_rows(bgw, job, 2)
    assert rows == [("reserve", -PRO), ("settle", 0)]  # the image was stored: it is paid for
    assert_balanced(bgw, key_id, 1_000_000 - PRO)


def test_test_mode_key_is_never_charged(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=0, mode="test")
    assert generate(bgw, key, "a red bicycle").status_code == 200
    assert bgw.key_rows(key_id) == []
    assert_balanced(bgw, key_id, 0)


def test_insufficient_funds_is_402_and_leaves_nothing(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=PRO - 1)
    resp = generate(bgw, key, "a red bicycle")
    assert resp.status_code == 402 and resp.json()["error"]["type"] == "insufficient_quota"
    assert bgw.key_rows(key_id) == [(None, "topup", PRO - 1)]
