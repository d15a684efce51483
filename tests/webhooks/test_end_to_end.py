"""Webhooks through the real app: accepted, written with the terminal transition, delivered."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from sqlalchemy import func, select
from standardwebhooks import Webhook

from gateway.jobs.tables import JobRow
from gateway.webhooks.service import gateway_secret
from gateway.webhooks.tables import WebhookDeliveryRow
from tests.conftest import Gateway
from tests.webhooks.conftest import Receiver

FAST = {"webhooks": {"poll_interval": 0.2}}


def generate(gw: Gateway, key: str, prompt: str = "a red fox", **fields: Any) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": prompt, **fields})


def deliveries(gw: Gateway) -> list[WebhookDeliveryRow]:
    async def go() -> list[WebhookDeliveryRow]:
        async with gw.services.sessions() as session:
            return list((await session.execute(select(WebhookDeliveryRow))).scalars())

    result: list[WebhookDeliveryRow] = gw.call(go())
    return result


def delivered(gw: Gateway, timeout: float = 15.0) -> list[WebhookDeliveryRow]:
    """The delivery rows once none is pending: the receiver sees a request before the worker
    commits its outcome, so a test that just saw it must wait for that commit."""
    deadline = time.monotonic() + timeout
    rows = deliveries(gw)
    while any(r.status == "pending" for r in rows) and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = deliveries(gw)
    return rows


def test_generation_gets_one_signed_delivery_with_the_result_url(
        gateway_factory: Any, receiver: Receiver) -> None:
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh")[1]
    resp = generate(gw, key, webhook_url=receiver.url, response_format="url")
    assert resp.status_code == 200, resp.text
    got = receiver.wait_for(1)[0]
    payload = Webhook(gateway_secret(gw.settings)).verify(got.body, got.headers)
    job_id = payload["id"]
    assert payload["type"] == "image.completed" and payload["status"] == "succeeded"
    assert payload["error"] is None and payload["model"] == "flux-kontext-pro"
    assert payload["seed"] == resp.json()["data"][0]["seed"]
    [image] = payload["data"]
    assert (image["width"], image["height"]) == (1024, 1024)
    assert image["url"].split("?")[0] == resp.json()["data"][0]["url"].split("?")[0]
    assert httpx.get(image["url"]).status_code == 200
    [row] = delivered(gw)
    assert (row.id, row.job_id, row.status, row.attempts) == (
        got.headers["webhook-id"], job_id, "delivered", 1)
    assert len(receiver.requests) == 1


def test_per_request_secret_signs_and_is_stored_sealed(gateway_factory: Any,
                                                       receiver: Receiver) -> None:
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh")[1]
    secret = "cmVzZWxsZXItc2VjcmV0LTQy"  # base64, no whsec_ prefix
    assert generate(gw, key, webhook_url=receiver.url, webhook_secret=secret).status_code == 200
    got = receiver.wait_for(1)[0]
    Webhook(secret).verify(got.body, got.headers)
    [row] = deliveries(gw)
    job = gw.call(gw.services.jobs.get(row.job_id))
    assert secret not in json.dumps(job.spec) and secret not in (row.secret or "")


def test_failed_job_gets_an_image_failed_delivery(gateway_factory: Any,
                                                  receiver: Receiver) -> None:
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh")[1]
    assert generate(gw, key, "x sandbox:fail", webhook_url=receiver.url).status_code == 502
    got = receiver.wait_for(1)[0]
    payload = Webhook(gateway_secret(gw.settings)).verify(got.body, got.headers)
    assert payload["type"] == "image.failed" and payload["status"] == "failed"
    assert payload["data"] == [] and payload["error"]["code"] == "upstream_error"


def test_private_webhook_url_is_refused_before_any_job(gateway_factory: Any,
                                                       receiver: Receiver) -> None:
    gw = gateway_factory(limits={"fetch_allow": []}, **FAST)
    _, key = gw.create_key("wh", balance=10)
    for url in (receiver.url, "http://localhost/hook", "http://169.254.169.254/latest",
                "file:///etc/passwd", "http://user:pw@example.com/hook"):
        resp = generate(gw, key, webhook_url=url)
        assert resp.status_code == 400, (url, resp.text)
        assert resp.json()["error"]["param"] == "webhook_url"
        assert resp.json()["error"]["code"] in ("url_not_allowed", "invalid_webhook_url")
    resp = generate(gw, key, webhook_url="https://example.com/hook", webhook_secret="x")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_webhook_secret"

    async def count() -> int:
        async with gw.services.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(JobRow)))
                       .scalar_one())

    assert gw.call(count()) == 0
    assert receiver.requests == []


def test_every_terminal_job_with_a_webhook_has_exactly_one_outbox_row(
        gateway_factory: Any, receiver: Receiver) -> None:
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh")[1]
    for i in range(4):
        prompt = "x sandbox:fail" if i % 2 else "a cat"
        generate(gw, key, prompt, n=2, webhook_url=receiver.url)
        generate(gw, key, prompt)  # no webhook

    async def check() -> tuple[list[str], list[str], list[Any]]:
        async with gw.services.sessions() as session:
            jobs = list((await session.execute(select(JobRow))).scalars())
            dupes = list(await session.execute(
                select(WebhookDeliveryRow.job_id, func.count()).group_by(
                    WebhookDeliveryRow.job_id).having(func.count() > 1)))
            ids = list((await session.execute(select(WebhookDeliveryRow.job_id))).scalars())
        wanted = sorted(j.id for j in jobs if j.spec.get("webhook_url")
                        and j.status in ("succeeded", "failed", "canceled"))
        return wanted, sorted(ids), dupes

    wanted, ids, dupes = gw.call(check())
    assert len(wanted) == 8 and ids == wanted and dupes == []
    receiver.wait_for(8)


def test_restart_still_delivers_pending_rows(gateway_factory: Any, receiver: Receiver,
                                             tmp_path: Any) -> None:
    receiver.default = (503, {})
    gw = gateway_factory(data_dir=tmp_path / "d", **FAST)
    key = gw.create_key("wh")[1]
    assert generate(gw, key, webhook_url=receiver.url).status_code == 200
    receiver.wait_for(1)
    deadline = time.monotonic() + 15  # the failed first attempt is on record before the stop
    while [r.attempts for r in deliveries(gw)] != [1] and time.monotonic() < deadline:
        time.sleep(0.05)
    gw.stop()
    receiver.default = (200, {})

    async def make_due() -> None:  # skip the 5 s wait of the schedule
        async with gw2.services.sessions.begin() as session:
            for row in (await session.execute(select(WebhookDeliveryRow))).scalars():
                row.next_attempt_at = row.created_at
        gw2.services.webhooks.worker.wake()

    gw2 = gateway_factory(data_dir=tmp_path / "d", **FAST)
    gw2.call(make_due())
    got = receiver.wait_for(2)
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    [row] = delivered(gw2)
    assert row.status == "delivered" and row.attempts == 2
