"""Job leases with two real replicas sharing one database and one BFL upstream (stubbed at the
transport with respx, in BFL's documented wire format; respx patches httpx process-wide, so both
gateways, each in its own thread, reach the same fake). Each replica has its own data dir, so
the checks read job rows and the ledger, not files."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import respx

from gateway.jobs.tables import JobRow
from tests.conftest import Gateway, ledger_of
from tests.jobs.test_failover import PNG, A, channels

T = TypeVar("T")
PRICE = 40_000  # flux-kontext-pro's default price
QUICK = {"poll_initial": 0.02, "poll_max": 0.1}
SHORT_LEASE = {**QUICK, "lease": 1.0, "adopt_interval": 0.2}


class SlowBfl:
    """BFL upstream A whose submits wait for `accept` and whose tasks stay `Pending` until
    `ready`; counts submits and downloads, and records which task ids were polled."""

    def __init__(self, mock: respx.MockRouter) -> None:
        self.accept = threading.Event()
        self.ready = threading.Event()
        self.submits = 0
        self.polled: set[str] = set()
        mock.post(f"{A}/v1/flux-kontext-pro").mock(side_effect=self._submit)
        mock.get(f"{A}/v1/get_result").mock(side_effect=self._poll)
        self.downloads = mock.get(url__startswith="https://delivery.a.bfl.test/").mock(
            return_value=httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))

    async def _submit(self, request: httpx.Request) -> httpx.Response:
        self.submits += 1
        task = f"a-{self.submits}"
        await asyncio.to_thread(self.accept.wait, 30)  # the calling gateway's loop runs on
        return httpx.Response(200, json={"id": task,
                                         "polling_url": f"{A}/v1/get_result?id={task}"})

    def _poll(self, request: httpx.Request) -> httpx.Response:
        task = request.url.params["id"]
        self.polled.add(task)
        if not self.ready.is_set():
            return httpx.Response(200, json={"id": task, "status": "Pending", "progress": 0.5})
        return httpx.Response(200, json={
            "id": task, "status": "Ready",
            "result": {"sample": f"https://delivery.a.bfl.test/{task}.png"}})


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowBfl]:
    monkeypatch.setenv("A_KEY", "key-a")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        yield SlowBfl(mock)


def replica(gateway_factory: Callable[..., Gateway], tmp_path: Path, name: str, db: str,
            **jobs: Any) -> Gateway:
    gw: Gateway = gateway_factory(tmp_path / name, database_url=db, channels=channels()[:1],
                                  jobs=jobs)
    return gw


def submitted_on_a(gateway_factory: Callable[..., Gateway], tmp_path: Path, db: str,
                   upstream: SlowBfl) -> tuple[Gateway, Gateway, str, str]:
    """Replicas A and B (short leases) on `db`, and a job A created and submitted upstream:
    (a, b, key id, job id)."""
    a = replica(gateway_factory, tmp_path, "a", db, **SHORT_LEASE)
    b = replica(gateway_factory, tmp_path, "b", db, **SHORT_LEASE)
    key_id, key = a.create_key(balance=1_000_000)
    upstream.accept.set()
    job_id = submit(a, key)
    until(lambda: job(a, job_id).upstream_id, "A submitted the job")
    return a, b, key_id, job_id


def submit(gw: Gateway, key: str) -> str:
    """A job through the BFL-style API (answers at once; the job runs in the background)."""
    resp = httpx.post(f"{gw.base_url}/v1/flux-kontext-pro", headers={"x-key": key},
                      json={"prompt": "a fox"}, timeout=30)
    assert resp.status_code == 200, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def job(gw: Gateway, job_id: str) -> JobRow:
    async def go() -> JobRow | None:
        async with gw.services.sessions() as s:
            return await s.get(JobRow, job_id)
    row: JobRow | None = gw.call(go())
    assert row is not None
    return row


def until(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """`check()`'s first truthy answer, polled (generous: CI machines can be slow)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return found


def finished(gw: Gateway, job_id: str) -> JobRow:
    return until(lambda: (row := job(gw, job_id)).finished_at and row, "the job finished")


def charged_once(gw: Gateway, key_id: str) -> None:
    balance, total, rows = ledger_of(gw, key_id)
    assert rows == [("topup", 1_000_000), ("reserve", -PRICE), ("settle", 0)]
    assert balance == total == 1_000_000 - PRICE


def test_replica_starting_mid_submit_leaves_the_job_to_its_runner(
        upstream: SlowBfl, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """B starts while A is in the middle of submitting (running, no upstream id yet): before
    leases B took the job at start-up and failed it as "interrupted while submitting"."""
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a = replica(gateway_factory, tmp_path, "a", db, **QUICK)
    key_id, key = a.create_key(balance=1_000_000)
    job_id = submit(a, key)
    until(lambda: upstream.submits == 1, "A's submit reached the upstream")
    b = replica(gateway_factory, tmp_path, "b", db, **QUICK)  # its start-up adoption has run
    assert b.call(b.services.jobs.resume()) == 0
    mid = job(b, job_id)
    assert mid.status == "running" and mid.upstream_id is None
    upstream.accept.set()
    upstream.ready.set()
    done = finished(a, job_id)
    assert done.status == "succeeded", done.error_message
    assert done.runner == a.services.jobs.runner_id != b.services.jobs.runner_id
    assert upstream.submits == 1
    charged_once(a, key_id)


def test_crashed_replicas_job_is_adopted_after_its_lease_and_not_resubmitted(
        any_database: str, upstream: SlowBfl, gateway_factory: Callable[..., Gateway],
        tmp_path: Path) -> None:
    """A dies (its tasks and heartbeat stop, its leases stay): B, already running, adopts the
    job once the lease has passed and follows A's upstream task to the end, charged once."""
    a, b, key_id, job_id = submitted_on_a(gateway_factory, tmp_path, any_database, upstream)
    a.call(a.services.jobs.close(release=False))  # a crash: nothing released
    b_runner = b.services.jobs.runner_id
    until(lambda: job(b, job_id).runner == b_runner, "B adopted the job")
    upstream.ready.set()
    done = finished(b, job_id)
    assert done.status == "succeeded", done.error_message
    assert done.runner == b_runner
    assert upstream.submits == 1 and upstream.polled == {"a-1"}
    charged_once(b, key_id)


def test_heartbeat_keeps_a_long_job_with_its_runner(
        upstream: SlowBfl, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """A job running for four leases stays with A: its heartbeat renews the lease, so B (which
    looks for passed leases five times a second) never adopts it."""
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a, b, key_id, job_id = submitted_on_a(gateway_factory, tmp_path, db, upstream)
    first = job(a, job_id)
    assert first.lease_until is not None
    time.sleep(4 * 1.0)
    later = job(b, job_id)
    assert later.runner == a.services.jobs.runner_id and later.lease_until is not None
    assert later.lease_until > first.lease_until  # renewed
    upstream.ready.set()
    done = finished(a, job_id)
    assert done.status == "succeeded", done.error_message
    assert done.runner == a.services.jobs.runner_id
    assert upstream.submits == 1
    charged_once(a, key_id)


def test_runner_that_stalled_past_its_lease_stops_its_copy(
        upstream: SlowBfl, gateway_factory: Callable[..., Gateway], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A's event loop freezes (a long GC pause, a blocked call) until B has adopted the job.
    When A wakes, its heartbeat finds the lease gone and stops its own task without failing
    the job: B alone finishes it (one download, one charge)."""
    caplog.set_level(logging.WARNING, logger="gateway.jobs.service")
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a, b, key_id, job_id = submitted_on_a(gateway_factory, tmp_path, db, upstream)
    b_runner = b.services.jobs.runner_id
    adopted = threading.Event()

    async def stall() -> None:
        adopted.wait(5)  # blocks A's loop: that is the stall

    for _ in range(3):  # a stall landing inside one of A's writes holds B's claim up too:
        frozen = asyncio.run_coroutine_threadsafe(stall(), a.server_loop)  # then stall again
        deadline = time.monotonic() + 5
        while job(b, job_id).runner != b_runner and time.monotonic() < deadline:
            time.sleep(0.05)
        adopted.set()
        frozen.result(timeout=30)
        if job(b, job_id).runner == b_runner:
            break
        adopted.clear()
    assert job(b, job_id).runner == b_runner, "B never adopted the job while A stalled"
    until(lambda: any("lease passed to another runner" in r.getMessage()
                      for r in caplog.records), "A stopped its copy")
    upstream.ready.set()
    done = finished(b, job_id)
    assert done.status == "succeeded", done.error_message
    assert done.runner == b_runner
    assert upstream.submits == 1 and upstream.downloads.call_count == 1
    charged_once(b, key_id)


def test_cancel_through_another_replica_stops_the_runner(
        upstream: SlowBfl, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """B cancels a job that A is submitting: once A's submit returns, A must not write over
    the canceled job nor follow it upstream (it asks the upstream to cancel instead); the
    reservation is released, nothing is charged."""
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a = replica(gateway_factory, tmp_path, "a", db, **QUICK)
    b = replica(gateway_factory, tmp_path, "b", db, **QUICK)
    key_id, key = a.create_key(balance=1_000_000)
    job_id = submit(a, key)
    until(lambda: upstream.submits == 1, "A's submit reached the upstream")
    canceled = b.call(b.services.jobs.cancel(job_id))
    assert canceled is not None and canceled.status == "canceled"
    upstream.accept.set()  # A's submit now returns an upstream task
    until(lambda: job_id not in a.services.jobs._running, "A's task for the job ended")
    time.sleep(0.5)  # a task that went on would poll now (poll_initial is 0.02 s)
    assert upstream.polled == set()
    row = job(b, job_id)
    assert (row.status, row.upstream_id, row.stage) == ("canceled", None, "released")
    balance, total, rows = ledger_of(b, key_id)
    assert rows == [("topup", 1_000_000), ("reserve", -PRICE), ("release", PRICE)]
    assert balance == total == 1_000_000


def test_graceful_stop_hands_fifty_jobs_to_the_other_replica(
        upstream: SlowBfl, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """A stops gracefully (what SIGTERM does: uvicorn's shutdown, then the lifespan) with 50
    jobs waiting at the upstream: it exits well within 30 s and releases them; B takes all 50
    over and finishes them, each downloaded once and charged once, none submitted twice."""
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a = replica(gateway_factory, tmp_path, "a", db, **SHORT_LEASE)
    b = replica(gateway_factory, tmp_path, "b", db, **SHORT_LEASE)
    key_id, key = a.create_key(balance=10_000_000)
    upstream.accept.set()
    ids = [submit(a, key) for _ in range(50)]
    until(lambda: all(job(a, i).upstream_id for i in ids), "A submitted all 50 jobs")
    stopping = time.monotonic()
    a.stop()
    assert not a.thread.is_alive() and time.monotonic() - stopping < 30
    b_runner = b.services.jobs.runner_id
    until(lambda: all(job(b, i).runner == b_runner for i in ids), "B took all 50 over")
    upstream.ready.set()
    assert all(finished(b, i).status == "succeeded" for i in ids)
    assert upstream.submits == 50 and upstream.downloads.call_count == 50
    balance, total, rows = ledger_of(b, key_id)
    kinds = [kind for kind, _ in rows]
    assert (kinds.count("reserve"), kinds.count("settle"), kinds.count("release")) == (50, 50, 0)
    assert balance == total == 10_000_000 - 50 * PRICE
