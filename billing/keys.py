"""API keys: the format, hashing at rest, creation, lookup and revocation.

Format: `fk_live_<32 base62 random><6 base62 CRC32 of the random part>` (`fk_test_` for
test-mode keys, which always route to the sandbox and are never charged). The checksum lets a
mistyped key be refused without a database lookup. Only sha256(key) is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import InvalidKey, KeyExpired, KeyRevoked
from billing.ledger import top_up
from billing.tables import ApiKeyRow

ALPHABET = string.digits + string.ascii_letters
RANDOM_LEN = 32
CHECK_LEN = 6
PREFIXES = {"live": "fk_live_", "test": "fk_test_"}


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), CHECK_LEN)


def generate(mode: str = "live") -> str:
    """A new plaintext key of the given mode ("live" or "test")."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LEN))
    return PREFIXES[mode] + random_part + _checksum(random_part)


def mode_of(key: str) -> str | None:
    """"live"/"test" when `key` is well formed with a valid checksum, else None (no I/O)."""
    for mode, prefix in PREFIXES.items():
        if key.startswith(prefix):
            body = key[len(prefix):]
            if len(body) != RANDOM_LEN + CHECK_LEN or any(c not in ALPHABET for c in body):
                return None
            random_part, check = body[:RANDOM_LEN], body[RANDOM_LEN:]
            return mode if secrets.compare_digest(_checksum(random_part), check) else None
    return None


def hash_key(key: str) -> str:
    """The stored form of a key: hex sha256."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_of(key: str) -> str:
    """A non-secret label for logs and lists: prefix, 4 characters, ellipsis, last 4."""
    prefix = key[:8]
    return f"{prefix}{key[8:12]}...{key[-4:]}"


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A newly created key: the row and the plaintext, which is shown exactly once."""

    row: ApiKeyRow
    plaintext: str


async def create_key(session: AsyncSession, *, name: str, mode: str = "live",
                     balance: int | None = None, owner: str | None = None,
                     models: list[str] | None = None, rpm: int | None = None,
                     max_concurrency: int | None = None, price_group: str | None = None,
                     expires_at: datetime | None = None,
                     ip_allow: list[str] | None = None) -> CreatedKey:
    """Create a key. `balance=None` makes an unlimited (post-paid) key; an int (micro-units)
    makes a prepaid key topped up by that amount through the ledger."""
    plaintext = generate(mode)
    row = ApiKeyRow(
        id=f"key_{uuid.uuid4().hex[:16]}", name=name, owner=owner, hash=hash_key(plaintext),
        display=display_of(plaintext), mode=mode, balance=0, unlimited=balance is None,
        disabled=False, models=models, rpm=rpm, max_concurrency=max_concurrency,
        price_group=price_group, created_at=datetime.now(UTC), expires_at=expires_at,
        ip_allow=ip_allow,
    )
    session.add(row)
    await session.flush()
    if balance:
        await top_up(session, row.id, balance, note="initial balance")
        await session.refresh(row)
    return CreatedKey(row=row, plaintext=plaintext)


async def authenticate(session: AsyncSession, key: str, now: datetime | None = None) -> ApiKeyRow:
    """The key's row; raises InvalidKey (malformed or unknown; checked before any query),
    KeyRevoked or KeyExpired."""
    if mode_of(key) is None:
        raise InvalidKey("Incorrect API key provided.")
    row = (await session.execute(
        select(ApiKeyRow).where(ApiKeyRow.hash == hash_key(key)))).scalar_one_or_none()
    if row is None:
        raise InvalidKey("Incorrect API key provided.")
    check_usable(row, now)
    return row


def check_usable(row: ApiKeyRow, now: datetime | None = None) -> None:
    """Raise KeyRevoked/KeyExpired when `row` may not be used now."""
    if row.revoked_at is not None or row.disabled:
        raise KeyRevoked("This API key has been revoked.")
    if row.expires_at is not None:
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires <= (now or datetime.now(UTC)):
            raise KeyExpired("This API key has expired.")


async def list_keys(session: AsyncSession) -> list[ApiKeyRow]:
    """Every key, oldest first."""
    return list((await session.execute(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).scalars())


async def get_key(session: AsyncSession, key_id: str) -> ApiKeyRow:
    """The key with this id; raises InvalidKey when there is none."""
    row = await session.get(ApiKeyRow, key_id)
    if row is None:
        raise InvalidKey(f"No API key with id {key_id!r}.", param="key_id")
    return row


async def revoke(session: AsyncSession, key_id: str) -> ApiKeyRow:
    """Revoke a key (idempotent); raises InvalidKey for an unknown id."""
    row = await get_key(session, key_id)
    if row.revoked_at is None:
        await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id)
                              .values(revoked_at=datetime.now(UTC)))
        await session.refresh(row)
    return row
