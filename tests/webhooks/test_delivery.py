"""The delivery worker against a real SQLite outbox and a loopback receiver, on a fake clock."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from gateway.database import make_engine, make_sessionmaker, upgrade
from gateway.images.fetch import GuardedTransport
from gateway.settings import WebhookSettings
from gateway.webhooks.delivery import DeliveryWorker, encode_payload
from gateway.webhooks.outbox import new_event_id
from gateway.webhooks.signing import SecretBox, Signer, generate_secret, parse_secret
from gateway.webhooks.tables import WebhookDeliveryRow
from tests.webhooks.conftest import FakeClock, Receiver

SECRET = generate_secret()
PAYLOAD = {"id": "job_1", "type": "image.completed", "status": "succeeded", "data": []}


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'wh.db'}")
    await upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


def make_worker(sessions: async_sessionmaker[AsyncSession], clock: FakeClock, *,
                allow: tuple[str, ...] = ("127.0.0.1",), resolver=None,  # type: ignore[no-untyped-def]
                **settings: object) -> DeliveryWorker:
    settings.setdefault("poll_interval", 1e6)  # idle waits jump straight to the next due row
    return DeliveryWorker(sessions=sessions, settings=WebhookSettings(**settings),  # type: ignore[arg-type]
                          signer=Signer.from_secret(SECRET), box=SecretBox(b"m" * 32),
                          transport=GuardedTransport(allow=allow, resolver=resolver),
                          clock=clock, sleep=clock.sleep)


async def add_delivery(sessions: async_sessionmaker[AsyncSession], clock: FakeClock, url: str,
                       job_id: str = "job_1") -> str:
    async with sessions.begin() as session:
        row = WebhookDeliveryRow(id=new_event_id(), job_id=job_id, url=url, payload=PAYLOAD,
                                 status="pending", attempts=0, next_attempt_at=clock(),
                                 created_at=clock(), updated_at=clock())
        session.add(row)
    return row.id


async def get_row(sessions: async_sessionmaker[AsyncSession], row_id: str) -> WebhookDeliveryRow:
    async with sessions() as session:
        row = await session.get(WebhookDeliveryRow, row_id)
        assert row is not None
        return row


async def run_until(worker: DeliveryWorker, sessions: async_sessionmaker[AsyncSession],
                    row_id: str, status: str, within: float = 15.0) -> WebhookDeliveryRow:
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(within):
            while (row := await get_row(sessions, row_id)).status != status:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return row
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


def verifies(headers: dict[str, str], body: bytes) -> bool:
    """The signature checked with the official library's HMAC (its `verify` would compare the
    fake clock's timestamps with the real time)."""
    when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
    expected = Webhook(SECRET).sign(headers["webhook-id"], when, body.decode())
    return expected in headers["webhook-signature"].split(" ")


async def test_500_three_times_then_200_is_delivered_on_attempt_4(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    receiver.script = [(500, {})] * 3
    row_id = await add_delivery(sessions, clock, receiver.url)
    start = clock()
    row = await run_until(make_worker(sessions, clock), sessions, row_id, "delivered")
    assert row.attempts == 4 and row.last_status_code == 200
    got = receiver.requests
    assert len(got) == 4
    assert {r.headers["webhook-id"] for r in got} == {row_id}
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]
    assert len(set(stamps)) == 4
    assert stamps[0] == int(start.timestamp())
    elapsed = stamps[-1] - stamps[0]
    assert 0.9 * (5 + 300 + 1800) <= elapsed <= 1.1 * (5 + 300 + 1800) + 1
    for r in got:
        assert r.body == encode_payload(PAYLOAD) and json.loads(r.body) == PAYLOAD
        assert r.headers["content-type"] == "application/json"
        assert verifies(r.headers, r.body)


async def test_first_attempt_verifies_with_the_official_verifier(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    row_id = await add_delivery(sessions, clock, receiver.url)  # the fake clock starts at now
    assert await make_worker(sessions, clock).deliver_due() == 1
    got = receiver.wait_for(1)[0]
    assert Webhook(SECRET).verify(got.body, got.headers) == PAYLOAD
    row = await get_row(sessions, row_id)
    assert row.status == "delivered" and row.delivered_at is not None


async def test_410_disables_after_one_attempt(sessions: async_sessionmaker[AsyncSession],
                                              receiver: Receiver, clock: FakeClock) -> None:
    receiver.default = (410, {})
    row_id = await add_delivery(sessions, clock, receiver.url)
    worker = make_worker(sessions, clock)
    assert await worker.deliver_due() == 1
    clock.advance(7 * 24 * 3600)
    assert await worker.deliver_due() == 0
    await worker.close()
    row = await get_row(sessions, row_id)
    assert (row.status, row.attempts, row.last_status_code) == ("disabled", 1, 410)
    assert len(receiver.requests) == 1


async def test_302_is_not_followed_and_counts_as_a_failure(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    receiver.script = [(302, {"location": f"{receiver.base_url}/elsewhere"})]
    row_id = await add_delivery(sessions, clock, receiver.url)
    worker = make_worker(sessions, clock, jitter=0)
    assert await worker.deliver_due() == 1
    row = await get_row(sessions, row_id)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 302)
    assert [r.path for r in receiver.requests] == ["/hook"]  # /elsewhere never requested
    assert (row.next_attempt_at.replace(tzinfo=UTC) - clock()).total_seconds() == \
        pytest.approx(5)
    await worker.close()


async def test_429_waits_at_least_retry_after(sessions: async_sessionmaker[AsyncSession],
                                              receiver: Receiver, clock: FakeClock) -> None:
    receiver.script = [(429, {"retry-after": "120"}), (503, {"retry-after": "1"})]
    row_id = await add_delivery(sessions, clock, receiver.url)
    worker = make_worker(sessions, clock, jitter=0)
    await worker.deliver_due()
    row = await get_row(sessions, row_id)
    assert (row.next_attempt_at.replace(tzinfo=UTC) - clock()).total_seconds() == \
        pytest.approx(120)
    clock.advance(120)
    await worker.deliver_due()  # 503 with Retry-After: 1 -> the schedule's 300 s wins
    row = await get_row(sessions, row_id)
    assert (row.next_attempt_at.replace(tzinfo=UTC) - clock()).total_seconds() == \
        pytest.approx(300)
    await worker.close()


async def test_schedule_exhausted_marks_failed_and_replay_revives(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    receiver.default = (500, {})
    row_id = await add_delivery(sessions, clock, receiver.url)
    row = await run_until(make_worker(sessions, clock, schedule=[0, 5, 60]), sessions, row_id,
                          "failed")
    assert row.attempts == 3 and len(receiver.requests) == 3
    receiver.default = (204, {})
    worker = make_worker(sessions, clock)
    assert await worker.replay(row_id) is True
    assert await worker.replay(row_id) is False  # pending now
    assert await worker.deliver_due() == 1
    await worker.close()
    assert (await get_row(sessions, row_id)).status == "delivered"
    assert {r.headers["webhook-id"] for r in receiver.requests} == {row_id}


async def test_every_attempt_rechecks_the_url(sessions: async_sessionmaker[AsyncSession],
                                              receiver: Receiver, clock: FakeClock) -> None:
    """A name that now resolves to loopback (DNS rebinding) is refused: no connection."""
    port = receiver.base_url.rsplit(":", 1)[1]

    async def rebinding(host: str) -> list[str]:
        return ["127.0.0.1"]

    row_id = await add_delivery(sessions, clock, f"http://hooks.example.com:{port}/hook")
    worker = make_worker(sessions, clock, allow=(), resolver=rebinding)
    assert await worker.deliver_due() == 1
    await worker.close()
    row = await get_row(sessions, row_id)
    assert row.status == "pending" and row.attempts == 1 and row.last_status_code is None
    assert row.last_error and row.last_error.startswith("url_not_allowed")
    assert receiver.requests == []


async def test_two_workers_never_send_the_same_attempt_twice(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    ids = [await add_delivery(sessions, clock, receiver.url, job_id=f"job_{i}")
           for i in range(6)]
    a, b = make_worker(sessions, clock), make_worker(sessions, clock)
    counts = await asyncio.gather(a.deliver_due(), b.deliver_due())
    assert sum(counts) == 6
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(ids)
    await a.close()
    await b.close()


async def test_a_worker_killed_mid_attempt_loses_nothing(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    receiver.hold = threading.Event()
    row_id = await add_delivery(sessions, clock, receiver.url)
    first = make_worker(sessions, clock)
    task = asyncio.create_task(first.run())
    await asyncio.to_thread(receiver.hold.wait, 10)  # the POST is in flight
    task.cancel()  # the worker dies mid-attempt
    await asyncio.gather(task, return_exceptions=True)
    await first.close()
    receiver.hold = None
    receiver.release.set()
    row = await get_row(sessions, row_id)
    assert row.status == "pending" and row.lease_until is not None  # still claimed
    second = make_worker(sessions, clock)
    assert await second.deliver_due() == 0  # the lease holds...
    row = await run_until(second, sessions, row_id, "delivered")  # ...then expires
    assert row.attempts == 1
    assert [r.headers["webhook-id"] for r in receiver.requests] == [row_id, row_id]


async def test_per_request_secret_is_opened_to_sign(
        sessions: async_sessionmaker[AsyncSession], receiver: Receiver,
        clock: FakeClock) -> None:
    box = SecretBox(b"m" * 32)
    row_id = await add_delivery(sessions, clock, receiver.url)
    async with sessions.begin() as session:
        row = await session.get(WebhookDeliveryRow, row_id)
        assert row is not None
        # a raw secret sealed before secrets had to be base64 still signs as promised then
        row.secret = box.seal("reseller-secret-42")
    worker = make_worker(sessions, clock)
    await worker.deliver_due()
    await worker.close()
    got = receiver.wait_for(1)[0]
    Webhook(b"reseller-secret-42").verify(got.body, got.headers)
    assert parse_secret(SECRET) != b"reseller-secret-42"
