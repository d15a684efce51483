"""The job record: every stage timestamped, money following the state, restarts keep state."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Gateway, jobs_of, ledger_of, start_gateway, wait_for_job


def generate(gw: Gateway, key: str, prompt: str = "a fox", **extra: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": prompt,
                            "response_format": "url", **extra}, timeout=60)




def test_success_records_every_stage_and_settles_once(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    assert generate(gateway, key).status_code == 200
    [job] = jobs_of(gateway, key_id)
    assert job.status == "succeeded"
    stages = [t["stage"] for t in job.timeline]
    assert stages == ["created", "reserved", "routed", "submitted", "upstream_done", "stored",
                      "settled"]
    times = [datetime.fromisoformat(t["at"]) for t in job.timeline]
    assert times == sorted(times)
    assert job.channel == "sandbox" and job.upstream_id and job.upstream_id.startswith("sbx_")
    assert job.finished_at is not None and job.submitted_at is not None
    assert job.outputs[0]["width"] == 1024 and job.price == 40_000 and job.charged == 40_000
    balance, total, rows = ledger_of(gateway, key_id)
    assert balance == total == 1_000_000 - 40_000
    assert rows == [("topup", 1_000_000), ("reserve", -40_000), ("settle", 0)]


def test_failure_releases_the_reservation(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    assert generate(gateway, key, "x sandbox:fail").status_code == 502
    [job] = jobs_of(gateway, key_id)
    assert job.status == "failed" and job.error_code == "upstream_error" and job.charged == 0
    assert [t["stage"] for t in job.timeline][-1] == "released"
    balance, total, rows = ledger_of(gateway, key_id)
    assert balance == total == 1_000_000
    assert rows == [("topup", 1_000_000), ("reserve", -40_000), ("release", 40_000)]


def test_insufficient_balance_is_402_and_creates_nothing(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=50_000)
    resp = generate(gateway, key, n=2)
    assert resp.status_code == 402, resp.text
    assert resp.json()["error"]["code"] == "insufficient_quota"
    assert jobs_of(gateway, key_id) == []
    assert ledger_of(gateway, key_id)[0] == 50_000


def test_test_mode_key_uses_the_sandbox_and_is_never_charged(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(mode="test", balance=0)
    assert key.startswith("fk_test_")
    assert generate(gateway, key).status_code == 200
    [job] = jobs_of(gateway, key_id)
    assert job.price == 0 and job.charged == 0
    assert ledger_of(gateway, key_id)[2] == []


def test_restart_keeps_keys_jobs_and_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_gateway(data)
    try:
        key_id, key = first.create_key(balance=1_000_000)
        resp = generate(first, key)
        url = resp.json()["data"][0]["url"]
        image = httpx.get(url).content
    finally:
        first.stop()
    second = start_gateway(data)
    try:
        assert httpx.get(url.replace(first.base_url, second.base_url)).content == image
        [job] = jobs_of(second, key_id)
        assert job.status == "succeeded"
        assert generate(second, key).status_code == 200
        assert ledger_of(second, key_id)[0] == 1_000_000 - 2 * 40_000
    finally:
        second.stop()


def test_unfinished_job_resumes_after_restart(tmp_path: Path) -> None:
    """A job that was submitted but not finished when the server stopped is picked up again:
    the sandbox lost its task (like an upstream losing one), so it fails and is released."""
    data = tmp_path / "data"
    first = start_gateway(data)
    key_id, key = first.create_key(balance=1_000_000)
    try:
        def post() -> None:
            with httpx.Client(timeout=60) as c:
                try:
                    c.post(f"{first.base_url}/v1/images/generations",
                           headers={"authorization": f"Bearer {key}"},
                           json={"model": "flux-kontext-pro", "prompt": "slow sandbox:latency=30"})
                except httpx.HTTPError:
                    pass  # the server stops under it
        threading.Thread(target=post, daemon=True).start()
        job = wait_for_job(first, key_id)
        assert job.status == "running" and job.upstream_id
    finally:
        first.stop()
    second = start_gateway(data)
    try:
        async def wait() -> Any:
            return await second.services.jobs.wait([job.id], within=20)
        [after] = second.call(wait())
        assert after.status == "failed" and after.error_code == "upstream_error"
        balance, total, _ = ledger_of(second, key_id)
        assert balance == total == 1_000_000
    finally:
        second.stop()
