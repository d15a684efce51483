"""The webhook delivery worker: claims due outbox rows and POSTs them, signed, with retries.

Rules (reliability.md §1.2):

* one attempt = one POST with `webhook-id` (the row id, stable across retries),
  `webhook-timestamp` (this attempt's clock) and `webhook-signature`, under one wall-clock
  deadline (`timeout`, 15 s); redirects are never followed;
* 2xx -> `delivered`; 410 -> `disabled` (no more attempts); anything else (3xx, 4xx, 5xx,
  timeouts, connection errors, an SSRF refusal) -> retry after the next delay of the schedule
  (+-jitter), or `failed` once the schedule is exhausted (kept for `replay`); 429 and 503 wait at
  least their `Retry-After` (capped by `max_retry_after`);
* every attempt goes through a `GuardedTransport`, so the URL is re-checked (and re-resolved)
  against the SSRF policy each time;
* attempts run concurrently, each its own task: at most `max_in_flight` in all and
  `per_endpoint` per endpoint (scheme + host + port), so a slow receiver holds only its own
  slots; the other endpoints' deliveries, and every retry, go out when they are due;
* claiming is a guarded UPDATE that sets a lease (`lease_token`, `lease_until`): two workers or
  replicas never send the same attempt twice, and a worker that dies mid-attempt leaves a lease
  that expires, after which another worker delivers the row (at-least-once).

`clock` and `sleep` are injectable, so tests run a 35-minute schedule in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import anyio
import httpx
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from gateway import __version__
from gateway.images.fetch import UrlRefused
from gateway.settings import WebhookSettings
from gateway.webhooks.outbox import DELIVERED, DISABLED, FAILED, PENDING, endpoint_of, replay
from gateway.webhooks.signing import SecretBox, SecretError, Signer
from gateway.webhooks.tables import WebhookDeliveryRow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def encode_payload(payload: object) -> bytes:
    """The exact bytes sent (and signed): minified UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (_aware(when) - now).total_seconds())


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended: an HTTP status, or an error before/instead of one."""

    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


class DeliveryWorker:
    """Delivers pending webhook rows; `start()` runs it as a task, `close()` stops it.

    `transport` carries every POST (a `GuardedTransport` in production); `signer` signs rows
    without a per-request secret; `box` opens the sealed per-request ones."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession],
                 settings: WebhookSettings, signer: Signer, box: SecretBox,
                 transport: httpx.AsyncBaseTransport, clock: Clock = _now,
                 sleep: Sleep | None = None, rng: random.Random | None = None,
                 observer: Callable[[str], None] | None = None) -> None:
        self.sessions = sessions
        self.observer = observer  # told each attempt's outcome: delivered|retry|failed|disabled
        self.settings = settings
        self.signer = signer
        self.box = box
        self.clock = clock
        self._sleep: Sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._client = httpx.AsyncClient(
            transport=transport, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(settings.timeout, connect=min(5.0, settings.timeout)),
            headers={"content-type": "application/json",
                     "user-agent": f"fluxgate-webhooks/{__version__}"})
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[None], tuple[str, str]] = {}  # -> (row id, endpoint)
        self._per_endpoint: Counter[str] = Counter()

    # -- running ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run `run()` in the background until `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="webhooks:delivery")

    def wake(self) -> None:
        """Look for due rows now (called after a job's delivery row was committed)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop the worker (attempts in flight are abandoned; their leases expire and another
        worker sends them again) and close the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._abandon()
        await self._client.aclose()

    async def _abandon(self) -> None:
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        """Deliver due rows forever, each attempt its own task: whenever a slot is free (at
        most `max_in_flight` attempts, `per_endpoint` per endpoint), claim the next due rows of
        endpoints with room. Between looks, wait for the next due row, a finished attempt, a
        `wake()` or `poll_interval`, whichever comes first."""
        try:
            while True:
                self._wake.clear()
                try:
                    await self._fill()
                    delay = None if self._full() else await self.next_due_in()
                except asyncio.CancelledError:
                    raise
                except Exception:  # the database may be briefly unavailable; keep going
                    log.exception("webhook delivery round failed")
                    delay = None
                if delay is None and self._in_flight:
                    # attempts are real I/O: wait for one to end (or a wake) in real time,
                    # never on the injectable clock, which would run ahead of them
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                    continue
                wait = self.settings.poll_interval if delay is None \
                    else min(max(delay, 0.0), self.settings.poll_interval)
                await self._pause(wait)
        finally:
            await self._abandon()

    async def _pause(self, seconds: float) -> None:
        if self._wake.is_set():  # e.g. an attempt ended while the next due row was looked up
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    # -- claiming ---------------------------------------------------------------------------
    def _due(self, now: datetime) -> ColumnElement[bool]:
        return and_(WebhookDeliveryRow.status == PENDING,
                    WebhookDeliveryRow.next_attempt_at <= now,
                    or_(WebhookDeliveryRow.lease_until.is_(None),
                        WebhookDeliveryRow.lease_until <= now))

    def _full(self) -> bool:
        return len(self._in_flight) >= self.settings.max_in_flight

    def _saturated(self) -> set[str]:
        """Endpoints with `per_endpoint` attempts in flight here."""
        return {e for e, n in self._per_endpoint.items() if n >= self.settings.per_endpoint}

    def _claimable(self, saturated: set[str]) -> ColumnElement[bool]:
        """Rows not in flight here, of endpoints with room (NULL: a row from before endpoints
        were recorded; `_fill` checks its URL's endpoint itself)."""
        mine = [row_id for row_id, _ in self._in_flight.values()]
        clauses: list[ColumnElement[bool]] = [WebhookDeliveryRow.id.not_in(mine)] if mine \
            else []
        if saturated:
            clauses.append(or_(WebhookDeliveryRow.endpoint.is_(None),
                               WebhookDeliveryRow.endpoint.not_in(saturated)))
        return and_(WebhookDeliveryRow.status == PENDING, *clauses)

    async def _fill(self) -> list[asyncio.Task[None]]:
        """Claim due rows into the free slots and start their attempts; answers the tasks.

        Oldest due first, skipping endpoints that have no room, so a slow endpoint with a
        backlog holds at most `per_endpoint` slots and never the queue."""
        started: list[asyncio.Task[None]] = []
        now = self.clock()
        while not self._full():
            saturated = self._saturated()
            limit = self.settings.max_in_flight - len(self._in_flight)
            async with self.sessions() as session:
                candidates = list(await session.execute(
                    select(WebhookDeliveryRow.id, WebhookDeliveryRow.endpoint,
                           WebhookDeliveryRow.url)
                    .where(self._due(now), self._claimable(saturated))
                    .order_by(WebhookDeliveryRow.next_attempt_at).limit(limit)))
            for row_id, stored_endpoint, url in candidates:
                endpoint = stored_endpoint or endpoint_of(url)
                if self._full():
                    break
                if self._per_endpoint[endpoint] >= self.settings.per_endpoint:
                    continue  # filled during this look; excluded from the next query
                claimed = await self._claim(row_id, now)
                if claimed is not None:
                    started.append(self._launch(*claimed, endpoint))
            if len(candidates) < limit or self._saturated() == saturated:
                break  # every due row with room was seen, or nothing changed
        return started

    def _launch(self, row: WebhookDeliveryRow, token: str, endpoint: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._attempt_logged(row, token),
                                   name=f"webhooks:attempt:{row.id}")
        self._in_flight[task] = (row.id, endpoint)
        self._per_endpoint[endpoint] += 1

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.pop(finished, None)
            self._per_endpoint[endpoint] -= 1
            if self._per_endpoint[endpoint] <= 0:
                del self._per_endpoint[endpoint]
            self._wake.set()

        task.add_done_callback(done)
        return task

    async def _attempt_logged(self, row: WebhookDeliveryRow, token: str) -> None:
        try:
            await self._attempt(row, token)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. recording the outcome failed: the lease expires, it retries
            log.exception("webhook %s: attempt failed to complete", row.id)

    async def deliver_due(self) -> int:
        """Claim the due rows that fit the limits, attempt them concurrently and wait for
        those attempts; answers how many were made."""
        started = await self._fill()
        await asyncio.gather(*started)
        return len(started)

    async def next_due_in(self) -> float | None:
        """Seconds until the next row this worker could claim becomes due (None: none is
        pending). Rows in flight here and rows of endpoints without room do not count: a
        finished attempt wakes the worker."""
        now = self.clock()
        claimable = self._claimable(self._saturated())
        async with self.sessions() as session:
            unleased = (await session.execute(
                select(func.min(WebhookDeliveryRow.next_attempt_at)).where(
                    claimable, WebhookDeliveryRow.lease_until.is_(None)))).scalar()
            leased = (await session.execute(
                select(func.min(WebhookDeliveryRow.lease_until)).where(
                    claimable, WebhookDeliveryRow.lease_until.is_not(None)))).scalar()
        times = [_aware(t) for t in (unleased, leased) if t is not None]
        return min((t - now).total_seconds() for t in times) if times else None

    async def _claim(self, delivery_id: str, now: datetime,
                     ) -> tuple[WebhookDeliveryRow, str] | None:
        token = secrets.token_hex(12)
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id,
                                                 self._due(now))
                .values(lease_token=token,
                        lease_until=now + timedelta(seconds=self.settings.lease),
                        updated_at=now))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None  # another worker took it
            row = await session.get(WebhookDeliveryRow, delivery_id)
        return (row, token) if row is not None else None

    def _signer_for(self, row: WebhookDeliveryRow) -> Signer:
        if row.secret is None:
            return self.signer
        return Signer.from_stored_secret(self.box.open(row.secret))  # rows from before too

    async def _attempt(self, row: WebhookDeliveryRow, token: str) -> None:
        started = self.clock()
        body = encode_payload(row.payload)
        try:
            headers = self._signer_for(row).headers(row.id, int(started.timestamp()), body)
        except SecretError:
            await self._record(row, token, Outcome(error="secret_unreadable"), final=True)
            return
        outcome = await self.post(row.url, body, headers)
        await self._record(row, token, outcome)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        """One POST under the wall-clock deadline; never raises for network trouble."""
        try:
            with anyio.fail_after(self.settings.timeout):
                async with self._client.stream("POST", url, content=body,
                                               headers=headers) as resp:
                    return Outcome(status_code=resp.status_code,
                                   retry_after=parse_retry_after(
                                       resp.headers.get("retry-after"), self.clock()))
        except UrlRefused as exc:
            return Outcome(error=f"url_not_allowed: {exc}")
        except TimeoutError:
            return Outcome(error=f"timeout: no answer within {self.settings.timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:500])

    def delay_after(self, attempts: int) -> float | None:
        """Seconds before the next attempt once `attempts` failed (with jitter), or None when
        the schedule is exhausted."""
        schedule = self.settings.schedule
        if attempts >= len(schedule):
            return None
        jitter = self.settings.jitter
        return schedule[attempts] * (1 + self._rng.uniform(-jitter, jitter))

    async def _record(self, row: WebhookDeliveryRow, token: str, outcome: Outcome, *,
                      final: bool = False) -> None:
        now = self.clock()
        attempts = row.attempts + 1
        code = outcome.status_code
        values: dict[str, object] = {
            "attempts": attempts, "last_status_code": code, "last_error": outcome.error,
            "lease_token": None, "lease_until": None, "updated_at": now}
        if code is not None and 200 <= code < 300:
            values.update(status=DELIVERED, delivered_at=now)
        elif code == 410:
            values.update(status=DISABLED)
        else:
            delay = None if final else self.delay_after(attempts)
            if delay is not None and code in (429, 503) and outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self.settings.max_retry_after))
            if delay is None:
                values.update(status=FAILED)
            else:
                values.update(next_attempt_at=now + timedelta(seconds=delay))
        status = values.get("status", PENDING)
        log.info("webhook %s for job %s: attempt %d -> %s (%s)", row.id, row.job_id, attempts,
                 status, code if code is not None else outcome.error)
        async with self.sessions.begin() as session:
            await session.execute(
                update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == row.id,
                                                 WebhookDeliveryRow.lease_token == token)
                .values(**values))
        if self.observer is not None:
            self.observer("retry" if status == PENDING else str(status))

    async def replay(self, delivery_id: str) -> bool:
        """`outbox.replay` now, then wake the worker."""
        async with self.sessions.begin() as session:
            replayed = await replay(session, delivery_id, self.clock())
        if replayed:
            self.wake()
        return replayed
