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
* claiming is a guarded UPDATE that sets a lease (`lease_token`, `lease_until`): two workers or
  replicas never send the same attempt twice, and a worker that dies mid-attempt leaves a lease
  that expires, after which another worker delivers the row (at-least-once).

`clock` and `sleep` are injectable, so tests run a 35-minute schedule in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
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
from gateway.webhooks.outbox import DELIVERED, DISABLED, FAILED, PENDING, replay
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
                 sleep: Sleep | None = None, rng: random.Random | None = None) -> None:
        self.sessions = sessions
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

    # -- running ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run `run()` in the background until `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="webhooks:delivery")

    def wake(self) -> None:
        """Look for due rows now (called after a job's delivery row was committed)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop the worker (an attempt in flight is abandoned; its lease expires) and close
        the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._client.aclose()

    async def run(self) -> None:
        """Deliver due rows forever; between rounds, wait for the next due row, a `wake()`
        or `poll_interval`, whichever comes first."""
        while True:
            self._wake.clear()
            try:
                attempted = await self.deliver_due()
                if attempted:
                    continue
                delay = await self.next_due_in()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly unavailable; keep going
                log.exception("webhook delivery round failed")
                attempted, delay = 0, None
            wait = self.settings.poll_interval if delay is None \
                else min(max(delay, 0.0), self.settings.poll_interval)
            await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    # -- one round --------------------------------------------------------------------------
    def _due(self, now: datetime) -> ColumnElement[bool]:
        return and_(WebhookDeliveryRow.status == PENDING,
                    WebhookDeliveryRow.next_attempt_at <= now,
                    or_(WebhookDeliveryRow.lease_until.is_(None),
                        WebhookDeliveryRow.lease_until <= now))

    async def deliver_due(self) -> int:
        """Claim and attempt every due row (at most `batch`, concurrently); answers how many
        attempts were made."""
        now = self.clock()
        async with self.sessions() as session:
            ids = list((await session.execute(
                select(WebhookDeliveryRow.id).where(self._due(now))
                .order_by(WebhookDeliveryRow.next_attempt_at).limit(self.settings.batch)
            )).scalars())
        claimed = [c for c in [await self._claim(i, now) for i in ids] if c is not None]
        await asyncio.gather(*(self._attempt(row, token) for row, token in claimed))
        return len(claimed)

    async def next_due_in(self) -> float | None:
        """Seconds until the next pending row becomes due (None: nothing is pending)."""
        now = self.clock()
        async with self.sessions() as session:
            unleased = (await session.execute(
                select(func.min(WebhookDeliveryRow.next_attempt_at)).where(
                    WebhookDeliveryRow.status == PENDING,
                    WebhookDeliveryRow.lease_until.is_(None)))).scalar()
            leased = (await session.execute(
                select(func.min(WebhookDeliveryRow.lease_until)).where(
                    WebhookDeliveryRow.status == PENDING,
                    WebhookDeliveryRow.lease_until.is_not(None)))).scalar()
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
        return Signer.from_secret(self.box.open(row.secret))

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

    async def replay(self, delivery_id: str) -> bool:
        """`outbox.replay` now, then wake the worker."""
        async with self.sessions.begin() as session:
            replayed = await replay(session, delivery_id, self.clock())
        if replayed:
            self.wake()
        return replayed
