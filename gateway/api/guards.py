"""Guards of creating calls: `Idempotency-Key`, the per-key concurrency cap, rate headers.

A creating handler runs its work through `idempotent(request, principal, services, work)`;
`work` receives a `Gate` and creates its jobs with `gate.place(...)`. The gate knows whether
execution started (jobs exist): a request that fails before that leaves nothing behind (its
idempotency claim is dropped), one that fails after it has its error stored and replayed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from billing import idempotency
from billing.errors import IdempotencyInProgress, IdempotencyMismatch, RateLimited
from billing.idempotency import ClaimState
from billing.usage import in_flight_jobs
from gateway.api.deps import Principal, Services
from gateway.api.errors import error_response, family_of
from gateway.errors import Timeout
from gateway.jobs.orders import Customer, Order, OrderDesk
from gateway.jobs.tables import JobRow

log = logging.getLogger(__name__)

#: response headers kept with a stored answer and replayed
STORED_HEADERS = ("content-type", "x-should-retry", "retry-after", "x-fluxgate-job-id")


class Gate:
    """Admission of one creating request: the concurrency cap, and whether jobs exist."""

    def __init__(self, services: Services, principal: Principal) -> None:
        self.services = services
        self.principal = principal
        self.job_ids: list[str] = []

    @property
    def started(self) -> bool:
        return bool(self.job_ids)

    async def place(self, desk: OrderDesk, customer: Customer, order: Order) -> list[JobRow]:
        """`desk.place(customer, order)` under the key's cap on jobs in flight; raises
        billing's RateLimited (429) when the order would exceed it."""
        limit = self.principal.max_concurrency
        if limit is None:
            rows = await desk.place(customer, order)
        else:
            # slow input fetches outside the lock
            specs, files = await desk.prepare(customer, order)
            lock = self.services.key_locks.setdefault(self.principal.key_id, asyncio.Lock())
            async with lock:  # exact within a replica; the count itself is in the database
                async with self.services.sessions() as session:
                    busy = await in_flight_jobs(session, self.principal.key_id)
                if busy + order.n > limit:
                    raise RateLimited(
                        f"This API key may have at most {limit} jobs in flight "
                        f"({busy} running); retry when one finishes.", retry_after=1,
                        limit=limit, remaining=max(0, limit - busy), scope="concurrency")
                rows = await desk.jobs.create(specs, files=files)
        self.job_ids = [row.id for row in rows]
        return rows


def _canonical_body(raw: bytes) -> bytes | dict[str, object]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    return parsed if isinstance(parsed, dict) else raw


def _with_rate_headers(request: Request, response: Response) -> Response:
    for name, value in (getattr(request.state, "rate_headers", None) or {}).items():
        response.headers.setdefault(name, value)
    return response


async def idempotent(request: Request, principal: Principal, services: Services,
                     work: Callable[[Gate], Awaitable[Response]], *,
                     canonical: dict[str, object] | None = None) -> Response:
    """Run `work` once per `Idempotency-Key` (when the header is sent): a duplicate of a
    finished request replays its answer byte for byte, one of a running request gets 409,
    the same key with a different body 422. Without the header, `work` simply runs.
    `canonical` replaces the raw body as what identifies the request (multipart bodies)."""
    gate = Gate(services, principal)
    family = family_of(request)
    idem_key = request.headers.get("idempotency-key")
    if idem_key is None:
        return _with_rate_headers(request, await work(gate))
    idempotency.check_key(idem_key)
    body = canonical if canonical is not None else _canonical_body(await request.body())
    fp = idempotency.fingerprint(request.method, request.url.path, body)
    async with services.sessions.begin() as session:
        claim = await idempotency.claim(session, principal.key_id, idem_key, fp)
    if claim.state is ClaimState.REPLAY:
        assert claim.response is not None
        replay = Response(content=claim.response.body, status_code=claim.response.status_code,
                          headers={**claim.response.headers, "idempotent-replayed": "true"})
        return _with_rate_headers(request, replay)
    if claim.state is ClaimState.IN_PROGRESS:
        raise IdempotencyInProgress("A request with this Idempotency-Key is still being "
                                    "processed; retry later.", param="Idempotency-Key")
    if claim.state is ClaimState.MISMATCH:
        raise IdempotencyMismatch("This Idempotency-Key was already used with a different "
                                  "request body.", param="Idempotency-Key")
    try:
        response = await work(gate)
    except Exception as exc:
        if not gate.started:  # nothing was created or charged: forget the key
            await _abandon(services, principal.key_id, idem_key)
            raise
        response = error_response(exc, family)
    except BaseException:  # cancelled (shutdown, disconnect)
        if not gate.started:
            await asyncio.shield(_abandon(services, principal.key_id, idem_key))
        else:  # the jobs run on: store the answer a long wait gets, never leave it in_progress
            cut_off = error_response(Timeout(
                "The request was interrupted before the image was ready; it keeps running "
                "and will be stored.", code="timeout"), family)
            task = asyncio.ensure_future(
                _complete(services, principal.key_id, idem_key, gate, cut_off))
            services.pending_writes.add(task)  # shutdown waits for it before closing the DB
            task.add_done_callback(services.pending_writes.discard)
            await asyncio.shield(task)
        raise
    await _complete(services, principal.key_id, idem_key, gate, response)
    return _with_rate_headers(request, response)


async def _complete(services: Services, key_id: str, idem_key: str, gate: Gate,
                    response: Response) -> None:
    headers = {k: response.headers[k] for k in STORED_HEADERS if k in response.headers}
    async with services.sessions.begin() as session:
        await idempotency.complete(session, key_id, idem_key, status_code=response.status_code,
                                   body=bytes(response.body), headers=headers,
                                   job_id=gate.job_ids[0] if gate.job_ids else None)


async def _abandon(services: Services, key_id: str, idem_key: str) -> None:
    async with services.sessions.begin() as session:
        await idempotency.abandon(session, key_id, idem_key)
