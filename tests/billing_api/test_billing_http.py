"""Idempotency, rate limits, usage == ledger, admin API and CLI, through real HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
from typing import Any

import httpx
from typer.testing import CliRunner

from gateway.cli import app as cli_app

ADMIN_TOKEN = "admin-secret-for-tests"  # as in conftest.py

PRO = 40_000
BODY = {"model": "flux-kontext-pro", "prompt": "a red bicycle", "response_format": "url"}


def post_many(gw: Any, key: str, count: int, headers: dict[str, str] | None = None,
              body: dict[str, Any] | None = None) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(client.post(
                "/v1/images/generations", json=body or BODY,
                headers={"authorization": f"Bearer {key}", **(headers or {})})
                for _ in range(count)))

    return asyncio.run(go())


def test_50_concurrent_duplicates_make_one_job_and_one_charge(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=1_000_000)
    sandbox = bgw.services.router.channels[0].adapter
    before = sandbox.submitted  # the sandbox counts the jobs it accepted
    responses = post_many(bgw, key, 50, {"Idempotency-Key": "order-42"})
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    ok = [r for r in responses if r.status_code == 200]
    assert sandbox.submitted - before == 1
    rows = bgw.key_rows(key_id)
    assert [k for _, k, _ in rows] == ["topup", "reserve", "settle"]
    assert all(r.content == ok[0].content for r in ok)  # replays are byte-identical
    later = httpx.post(f"{bgw.base_url}/v1/images/generations", json=BODY, timeout=30,
                       headers={"authorization": f"Bearer {key}", "Idempotency-Key": "order-42"})
    assert later.status_code == 200 and later.content == ok[0].content
    assert later.headers["idempotent-replayed"] == "true"
    other = httpx.post(f"{bgw.base_url}/v1/images/generations", timeout=30,
                       json={**BODY, "prompt": "a blue bicycle"},
                       headers={"authorization": f"Bearer {key}", "Idempotency-Key": "order-42"})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert sandbox.submitted - before == 1
    balance, total, drift = bgw.balance(key_id)
    assert balance == total == 1_000_000 - PRO and drift == 0


def test_validation_failure_stores_nothing(bgw: Any) -> None:
    _, key = bgw.create_key(balance=1_000_000)
    headers = {"authorization": f"Bearer {key}", "Idempotency-Key": "k1"}
    bad = httpx.post(f"{bgw.base_url}/v1/images/generations", headers=headers, timeout=30,
                     json={**BODY, "response_format": "gif"})
    assert bad.status_code == 400
    fixed = httpx.post(f"{bgw.base_url}/v1/images/generations", headers=headers, timeout=30,
                       json=BODY)
    assert fixed.status_code == 200  # the key was not burnt by the invalid request


def test_burst_of_100_against_20_per_minute(bgw: Any) -> None:
    _, key = bgw.create_key(balance=None, rpm=20)
    responses = post_many(bgw, key, 100)
    limited = [r for r in responses if r.status_code == 429]
    accepted = [r for r in responses if r.status_code != 429]
    assert len(accepted) == 20 and len(limited) == 80
    assert all(r.status_code == 200 for r in accepted)
    for r in limited:
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == "20"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.json()["error"]["type"] == "rate_limit_error"
    assert accepted[0].headers["x-ratelimit-limit-requests"] == "20"


def test_concurrency_cap(bgw: Any) -> None:
    _, key = bgw.create_key(balance=None, max_concurrency=1)
    slow = {**BODY, "prompt": "a red bicycle sandbox:latency=1"}
    responses = post_many(bgw, key, 3, body=slow)
    assert sorted(r.status_code for r in responses) == [200, 429, 429]


def admin(gw: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gw.base_url}/admin{path}", timeout=30,
                         headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)


def test_admin_api_keys_usage_and_revocation(bgw: Any) -> None:
    assert httpx.get(f"{bgw.base_url}/admin/keys").status_code == 401
    created = admin(bgw, "POST", "/keys", json={"name": "reseller-1", "balance": "0.10",
                                                "price_group": "std"})
    assert created.status_code == 201, created.text
    key_id, secret = created.json()["id"], created.json()["secret"]
    assert created.json()["balance_micro"] == 100_000
    auth = {"authorization": f"Bearer {secret}"}
    assert httpx.post(f"{bgw.base_url}/v1/images/generations", json=BODY, headers=auth,
                      timeout=30).status_code == 200
    topped = admin(bgw, "POST", f"/keys/{key_id}/topup", json={"amount": "1"})
    assert topped.json()["balance_micro"] == 1_060_000
    updated = admin(bgw, "PATCH", f"/keys/{key_id}", json={"rpm": 5, "name": "renamed"})
    assert (updated.json()["rpm"], updated.json()["name"]) == (5, "renamed")
    assert admin(bgw, "PATCH", "/keys/key_nope", json={"rpm": 5}).status_code == 404

    usage = httpx.get(f"{bgw.base_url}/v1/usage", headers=auth, timeout=30).json()
    credit = httpx.get(f"{bgw.base_url}/v1/dashboard/billing/credit_grants", headers=auth,
                       timeout=30).json()
    balance, total, drift = bgw.balance(key_id)
    assert usage["balance"] == balance == total and drift == 0
    assert usage["totals"]["spend"] == PRO and usage["totals"]["succeeded"] == 1
    assert usage["topups"] - usage["totals"]["spend"] - usage["totals"]["held"] == balance
    assert credit["total_available_micro"] == balance
    assert credit["total_granted_micro"] == 1_100_000
    assert credit["total_available"] == 1.06

    admin_usage = admin(bgw, "GET", "/usage", params={"key_id": key_id}).json()
    assert admin_usage["totals"] == usage["totals"]
    rows = list(csv.DictReader(io.StringIO(admin(bgw, "GET", "/usage.csv").text)))
    assert [int(r["spend"]) for r in rows if r["key_id"] == key_id] == [PRO]
    jobs = admin(bgw, "GET", "/jobs", params={"key_id": key_id}).json()["data"]
    assert len(jobs) == 1 and jobs[0]["charged_micro"] == PRO
    assert admin(bgw, "GET", f"/jobs/{jobs[0]['id']}").json()["ledger_charge_micro"] == PRO
    assert admin(bgw, "GET", "/reconcile").json()["data"] == []

    channels = admin(bgw, "GET", "/channels").json()["data"]
    name = channels[0]["name"]
    assert admin(bgw, "POST", f"/channels/{name}/disable").json()["disabled"]
    assert admin(bgw, "POST", f"/channels/{name}/enable").json()["disabled"] is None

    assert admin(bgw, "POST", f"/keys/{key_id}/revoke").json()["revoked_at"]
    again = httpx.post(f"{bgw.base_url}/v1/images/generations", json=BODY, headers=auth,
                       timeout=30)
    assert again.status_code == 401  # at once on this replica (cache invalidated)


def test_cli_usage_agrees_with_http_and_ledger(bgw: Any) -> None:
    key_id, key = bgw.create_key(balance=1_000_000)
    auth = {"authorization": f"Bearer {key}"}
    for prompt in ("one", "two sandbox:fail", "three sandbox:moderate"):
        httpx.post(f"{bgw.base_url}/v1/images/generations", headers=auth, timeout=30,
                   json={**BODY, "prompt": prompt})
    http_usage = httpx.get(f"{bgw.base_url}/v1/usage", headers=auth, timeout=30).json()
    env = {"FLUXGATE_DATA_DIR": str(bgw.settings.data_dir)}
    runner = CliRunner()
    result = runner.invoke(cli_app, ["usage", "--key", key_id, "--json"], env=env)
    assert result.exit_code == 0, result.output
    cli_usage = json.loads(result.output)
    balance, total, _ = bgw.balance(key_id)
    assert cli_usage["totals"] == http_usage["totals"]
    assert cli_usage["balance"] == http_usage["balance"] == balance == total
    assert http_usage["totals"]["spend"] == PRO + 5_000 == 1_000_000 - balance
    table = runner.invoke(cli_app, ["usage", "--key", key_id], env=env)
    assert table.exit_code == 0 and "by model" in table.output
    topup = runner.invoke(cli_app, ["keys", "topup", key_id, "2.5"], env=env)
    assert topup.exit_code == 0, topup.output
    update = runner.invoke(cli_app, ["keys", "update", key_id, "--rpm", "7"], env=env)
    assert update.exit_code == 0, update.output
    assert bgw.balance(key_id)[0] == balance + 2_500_000
    csv_out = runner.invoke(cli_app, ["usage", "--csv"], env=env)
    assert csv_out.output.startswith("job_id,key_id")


def test_idempotency_key_of_a_request_cut_off_by_shutdown_is_not_stuck(tmp_path: Any) -> None:
    """A request whose jobs exist but whose handler is cancelled (server shutdown) must not
    leave its Idempotency-Key `in_progress`: that would answer 409 (which SDKs retry) to
    every retry for 24 h. Its answer is stored (the graceful stop's `interrupted`, which
    names the job and tells SDKs not to retry) and replayed; the job itself is resumed and
    ends with its money released (the sandbox lost the task)."""
    from tests.conftest import start_gateway, wait_for_job

    data = tmp_path / "data"
    first = start_gateway(data)
    key_id, key = first.create_key(balance=1_000_000)
    headers = {"authorization": f"Bearer {key}", "Idempotency-Key": "cut-off"}
    body = {**BODY, "prompt": "a red bicycle sandbox:latency=3"}
    try:
        def post() -> None:
            try:
                httpx.post(f"{first.base_url}/v1/images/generations", json=body,
                           headers=headers, timeout=60)
            except httpx.HTTPError:
                pass  # the server stops under it
        threading.Thread(target=post, daemon=True).start()
        wait_for_job(first, key_id)  # the handler is now waiting on a submitted job
    finally:
        first.stop()
    second = start_gateway(data)
    try:
        retry = httpx.post(f"{second.base_url}/v1/images/generations", json=body,
                           headers=headers, timeout=30)
        assert retry.status_code == 503, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.headers["x-should-retry"] == "false"
        assert retry.json()["error"]["code"] == "interrupted"

        async def settled() -> tuple[str, int, int]:
            from sqlalchemy import select

            from billing.ledger import ledger_sum
            from billing.tables import ApiKeyRow
            from gateway.jobs.tables import JobRow

            async with second.services.sessions() as s:
                job_id = (await s.execute(select(JobRow.id).where(JobRow.key_id == key_id))
                          ).scalar_one()
            [job] = await second.services.jobs.wait([job_id], within=20)
            async with second.services.sessions() as s:
                key_row = await s.get(ApiKeyRow, key_id)
                assert key_row is not None
                return job.status, key_row.balance, await ledger_sum(s, key_id)

        assert second.call(settled()) == ("failed", 1_000_000, 1_000_000)
    finally:
        second.stop()


def test_expired_idempotency_keys_are_purged_on_a_schedule(
        gateway_factory: Any) -> None:
    """Idempotency-Key rows are kept 24 h, then deleted by a background task (nothing else
    would: a busy reseller would otherwise grow the table forever)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select, update

    from billing.tables import IdempotencyRow

    gw = gateway_factory(billing={"idempotency_purge_interval": 0.2})
    _, key = gw.create_key(balance=1_000_000)
    for idem in ("old", "fresh"):
        resp = httpx.post(f"{gw.base_url}/v1/images/generations", json=BODY, timeout=30,
                          headers={"authorization": f"Bearer {key}", "Idempotency-Key": idem})
        assert resp.status_code == 200, resp.text

    async def rows() -> set[str]:
        async with gw.services.sessions() as s:
            return set((await s.execute(select(IdempotencyRow.idem_key))).scalars())

    async def backdate() -> None:
        async with gw.services.sessions.begin() as s:
            await s.execute(update(IdempotencyRow).where(IdempotencyRow.idem_key == "old")
                            .values(created_at=datetime.now(UTC) - timedelta(hours=25)))

    assert gw.call(rows()) == {"old", "fresh"}
    gw.call(backdate())
    deadline = time.monotonic() + 20
    while gw.call(rows()) != {"fresh"} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.call(rows()) == {"fresh"}


def test_redis_outage_keeps_limits_and_shows_in_healthz(gateway_factory: Any) -> None:
    """With the shared Redis unreachable, requests still get answers (no 5xx), the key's limit
    still holds through the in-process fallback (rpm / replicas), and /healthz says so."""
    gw = gateway_factory(redis_url="redis://127.0.0.1:1/0",
                         limits={"fetch_allow": ["127.0.0.1"], "replicas": 2})
    _, key = gw.create_key(balance=None, rpm=6)
    statuses = [httpx.post(f"{gw.base_url}/v1/images/generations", json=BODY, timeout=30,
                           headers={"authorization": f"Bearer {key}"}).status_code
                for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]  # 6 // 2 replicas
    health = httpx.get(f"{gw.base_url}/healthz", timeout=10).json()
    assert health["rate_limits"] == {"backend": "redis", "backend_errors": 1, "fallbacks": 5}
