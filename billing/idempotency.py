"""Client idempotency keys (`Idempotency-Key`): claim, complete, abandon, purge.

Scope is `(api key id, Idempotency-Key)`. The first request *claims* the key with an atomic
`INSERT ... ON CONFLICT DO NOTHING` in SQL (not Redis: a TTL could expire during a slow job),
so of any number of concurrent duplicates exactly one wins. Afterwards, within the retention
(at least 24 h):

    same key, same fingerprint, completed  -> replay the stored status, body and headers
    same key, same fingerprint, running    -> in_progress (HTTP 409)
    same key, different fingerprint        -> mismatch (HTTP 422)

A request that fails validation before execution starts `abandon`s its claim, so nothing is
stored for it. Every function leaves the commit to the caller; `claim` must be committed at
once for other requests to see it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import InvalidValue
from billing.tables import IdempotencyRow

MAX_KEY_LENGTH = 255
RETENTION = timedelta(hours=24)


class ClaimState(enum.StrEnum):
    NEW = "new"  # this request owns the key: run it, then `complete` (or `abandon`)
    REPLAY = "replay"  # answer with the stored response
    IN_PROGRESS = "in_progress"  # the first request is still running
    MISMATCH = "mismatch"  # the key was used with a different request


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first answer given for a key, replayed byte for byte."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    response: StoredResponse | None = None  # set for REPLAY
    job_id: str | None = None


def fingerprint(method: str, path: str, body: bytes | str | Mapping[str, Any] | None) -> str:
    """sha256 hex of the canonical request: method, path and the body (a JSON-able mapping
    is serialised with sorted keys and no whitespace; bytes are taken as they are)."""
    if body is None:
        raw = b""
    elif isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                         default=str).encode()
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), raw):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def check_key(idem_key: str) -> str:
    """The key as given when it is 1..255 printable ASCII characters; InvalidValue otherwise."""
    if not 0 < len(idem_key) <= MAX_KEY_LENGTH or not idem_key.isprintable() \
            or not idem_key.isascii():
        raise InvalidValue("Idempotency-Key must be 1 to 255 printable ASCII characters.",
                           param="Idempotency-Key")
    return idem_key


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def claim(session: AsyncSession, key_id: str, idem_key: str, fingerprint: str, *,
                now: datetime | None = None, retention: timedelta = RETENTION) -> Claim:
    """Claim `idem_key` for this request, or say why not (see the module docstring).

    A claim older than `retention` is forgotten and taken over. Raises InvalidValue for a
    malformed key."""
    check_key(idem_key)
    now = now or _now()
    values = {"key_id": key_id, "idem_key": idem_key, "fingerprint": fingerprint,
              "state": "in_progress", "created_at": now}
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "sqlite":
        stmt = sqlite.insert(IdempotencyRow).values(**values).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(IdempotencyRow).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        stmt = insert(IdempotencyRow).values(**values)
    if (await session.execute(stmt.returning(IdempotencyRow.id))).scalar_one_or_none():
        return Claim(ClaimState.NEW)
    row = (await session.execute(
        select(IdempotencyRow)
        .where(IdempotencyRow.key_id == key_id, IdempotencyRow.idem_key == idem_key)
        .execution_options(populate_existing=True))).scalar_one_or_none()
    if row is None:  # abandoned between our insert and our read: try once more
        return await claim(session, key_id, idem_key, fingerprint, now=now, retention=retention)
    if _aware(row.created_at) <= now - retention:
        taken = await session.execute(
            update(IdempotencyRow)
            .where(IdempotencyRow.id == row.id, IdempotencyRow.created_at == row.created_at)
            .values(fingerprint=fingerprint, state="in_progress", status_code=None,
                    response_body=None, response_headers=None, job_id=None, created_at=now,
                    completed_at=None))
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return Claim(ClaimState.NEW)
        return await claim(session, key_id, idem_key, fingerprint, now=now, retention=retention)
    if row.fingerprint != fingerprint:
        return Claim(ClaimState.MISMATCH, job_id=row.job_id)
    if row.state != "completed" or row.status_code is None:
        return Claim(ClaimState.IN_PROGRESS, job_id=row.job_id)
    return Claim(ClaimState.REPLAY, job_id=row.job_id, response=StoredResponse(
        status_code=row.status_code, body=row.response_body or b"",
        headers=dict(row.response_headers or {})))


async def attach_job(session: AsyncSession, key_id: str, idem_key: str, job_id: str) -> None:
    """Record the job a claimed request created (for support and for `in_progress` answers)."""
    await session.execute(
        update(IdempotencyRow)
        .where(IdempotencyRow.key_id == key_id, IdempotencyRow.idem_key == idem_key)
        .values(job_id=job_id))


async def complete(session: AsyncSession, key_id: str, idem_key: str, *, status_code: int,
                   body: bytes, headers: Mapping[str, str] | None = None,
                   job_id: str | None = None) -> None:
    """Store the answer of a claimed request; later duplicates replay it (5xx included)."""
    values: dict[str, Any] = {"state": "completed", "status_code": status_code,
                              "response_body": body, "response_headers": dict(headers or {}),
                              "completed_at": _now()}
    if job_id is not None:
        values["job_id"] = job_id
    await session.execute(
        update(IdempotencyRow)
        .where(IdempotencyRow.key_id == key_id, IdempotencyRow.idem_key == idem_key)
        .values(**values))


async def abandon(session: AsyncSession, key_id: str, idem_key: str) -> None:
    """Drop an unfinished claim (the request failed before execution started), so the same
    key may be used again. A completed answer is kept."""
    await session.execute(
        delete(IdempotencyRow)
        .where(IdempotencyRow.key_id == key_id, IdempotencyRow.idem_key == idem_key,
               IdempotencyRow.state == "in_progress"))


async def purge_older_than(session: AsyncSession, cutoff: datetime) -> int:
    """Delete keys created before `cutoff` (keep at least 24 h); returns how many."""
    result = await session.execute(
        delete(IdempotencyRow).where(IdempotencyRow.created_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
