"""API keys: the format, hashing at rest, creation, lookup and revocation.

Format: `fk_live_<32 base62 random><6 base62 CRC32 of the random part>` (`fk_test_` for
test-mode keys, which always route to the sandbox and are never charged). The checksum lets a
mistyped key be refused without a database lookup. Only sha256(key) is stored.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import secrets
import string
import time
import uuid
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import InvalidKey, InvalidValue, KeyExpired, KeyForbidden, KeyRevoked
from billing.ledger import top_up
from billing.tables import ApiKeyRow

ALPHABET = string.digits + string.ascii_letters
RANDOM_LEN = 32
CHECK_LEN = 6
PREFIXES = {"live": "fk_live_", "test": "fk_test_"}
#: what a key's results carry (None on a key: its price group's mode, else the default)
PROVENANCE_MODES = ("off", "metadata", "signed")


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
                     ip_allow: list[str] | None = None,
                     provenance: str | None = None,
                     meta: dict[str, Any] | None = None) -> CreatedKey:
    """Create a key. `balance=None` makes an unlimited (post-paid) key; an int (micro-units)
    makes a prepaid key topped up by that amount through the ledger. `provenance` is one of
    PROVENANCE_MODES or None."""
    if mode not in PREFIXES:
        raise InvalidValue(f"mode must be one of {sorted(PREFIXES)}", param="mode")
    _check_provenance(provenance)
    ip_allow = normalize_cidrs(ip_allow)
    _check_limits(rpm=rpm, max_concurrency=max_concurrency)
    plaintext = generate(mode)
    row = ApiKeyRow(
        id=f"key_{uuid.uuid4().hex[:16]}", name=name, owner=owner, hash=hash_key(plaintext),
        display=display_of(plaintext), mode=mode, balance=0, unlimited=balance is None,
        disabled=False, models=models, rpm=rpm, max_concurrency=max_concurrency,
        price_group=price_group, created_at=datetime.now(UTC), expires_at=expires_at,
        ip_allow=ip_allow, provenance=provenance, meta=meta,
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


class KeyLike(Protocol):
    """What the checks read: an `ApiKeyRow` or a cached `KeyInfo`."""

    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def models(self) -> list[str] | None: ...
    @property
    def ip_allow(self) -> list[str] | None: ...


def check_usable(row: KeyLike, now: datetime | None = None) -> None:
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


async def revoke(session: AsyncSession, key_id: str, *,
                 cache: KeyCache | None = None) -> ApiKeyRow:
    """Revoke a key (idempotent) and drop it from `cache`; raises InvalidKey for an unknown
    id. Other processes' caches let it go within their TTL (<= 5 s)."""
    row = await get_key(session, key_id)
    if row.revoked_at is None:
        await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id)
                              .values(revoked_at=datetime.now(UTC)))
        await session.refresh(row)
    _invalidate_everywhere(key_id, cache)
    return row


def check_model(row: KeyLike, model: str) -> None:
    """Raise KeyForbidden when the key's model allow-list (with `*` wildcards) excludes
    `model`; an empty or missing list allows every model."""
    if row.models and not any(fnmatch.fnmatchcase(model, pattern) for pattern in row.models):
        raise KeyForbidden(f"This API key may not use the model {model!r}.", param="model")


def check_ip(row: KeyLike, ip: str | None) -> None:
    """Raise KeyForbidden when the key has an IP/CIDR allow-list and `ip` (the client
    address; None when unknown) is not in it."""
    if not row.ip_allow:
        return
    try:
        addr = ipaddress.ip_address(ip or "")
    except ValueError:
        raise KeyForbidden("This API key may not be used from this address.") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for cidr in row.ip_allow:
        if addr in ipaddress.ip_network(cidr, strict=False):
            return
    raise KeyForbidden("This API key may not be used from this address.")


def normalize_cidrs(cidrs: Sequence[str] | None) -> list[str] | None:
    """The allow-list in canonical form ("10.0.0.0/8", "2001:db8::/32"); None stays None.
    Raises InvalidValue naming the first entry that is not an address or network."""
    if cidrs is None:
        return None
    out = []
    for cidr in cidrs:
        try:
            out.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError:
            raise InvalidValue(f"not an IP address or CIDR: {cidr!r}", param="ip_allow") from None
    return out


def _check_provenance(value: str | None) -> None:
    if value is not None and value not in PROVENANCE_MODES:
        raise InvalidValue(f"provenance must be one of {', '.join(PROVENANCE_MODES)}",
                           param="provenance")


def _check_limits(**limits: int | None) -> None:
    for name, value in limits.items():
        if value is not None and value < 1:
            raise InvalidValue(f"{name} must be at least 1", param=name)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


async def update_key(session: AsyncSession, key_id: str, *, name: str = UNSET,
                     owner: str | None = UNSET, models: list[str] | None = UNSET,
                     ip_allow: list[str] | None = UNSET, rpm: int | None = UNSET,
                     max_concurrency: int | None = UNSET, price_group: str | None = UNSET,
                     expires_at: datetime | None = UNSET, disabled: bool = UNSET,
                     unlimited: bool = UNSET, meta: dict[str, Any] | None = UNSET,
                     provenance: str | None = UNSET,
                     cache: KeyCache | None = None) -> ApiKeyRow:
    """Change the given settings of a key (an argument left out stays as it is; None clears
    it). The balance changes only through the ledger, the mode and secret never. Raises
    InvalidKey for an unknown id, InvalidValue for a bad CIDR or limit."""
    changes: dict[str, Any] = {
        k: v for k, v in {
            "name": name, "owner": owner, "models": models, "ip_allow": ip_allow, "rpm": rpm,
            "max_concurrency": max_concurrency, "price_group": price_group,
            "expires_at": expires_at, "disabled": disabled, "unlimited": unlimited, "meta": meta,
            "provenance": provenance,
        }.items() if v is not UNSET}
    if "provenance" in changes:
        _check_provenance(changes["provenance"])
    if "ip_allow" in changes:
        changes["ip_allow"] = normalize_cidrs(changes["ip_allow"])
    _check_limits(rpm=changes.get("rpm"), max_concurrency=changes.get("max_concurrency"))
    row = await get_key(session, key_id)
    if changes:
        await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(**changes))
        await session.refresh(row)
    _invalidate_everywhere(key_id, cache)
    return row


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A snapshot of a key, safe to keep across sessions (the balance is not in it: money is
    always read from the database)."""

    id: str
    name: str
    owner: str | None
    display: str
    mode: str
    unlimited: bool
    disabled: bool
    models: list[str] | None
    ip_allow: list[str] | None
    rpm: int | None
    max_concurrency: int | None
    price_group: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    provenance: str | None = None
    meta: dict[str, Any] | None = None  # free-form; `grounding: true` allows FLUX 3 grounding

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> KeyInfo:
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        for listed in ("models", "ip_allow"):
            values[listed] = list(values[listed]) if values[listed] is not None else None
        values["meta"] = dict(values["meta"]) if isinstance(values["meta"], dict) else None
        return cls(**values)


#: every live KeyCache of this process, so a revoke or update here reaches all of them at once
_CACHES: weakref.WeakSet[KeyCache] = weakref.WeakSet()


def _invalidate_everywhere(key_id: str, cache: KeyCache | None = None) -> None:
    if cache is not None:
        cache.invalidate(key_id=key_id)
    for live in list(_CACHES):
        live.invalidate(key_id=key_id)


class KeyCache:
    """Authenticated keys by hash for at most `ttl` (<= 5) seconds, at most `max_size` of them.

    Only keys that exist are cached; revoked, disabled and expired keys are re-checked on
    every hit. `revoke` and `update_key` drop the key from every cache of this process at
    once; other processes see the change when their entry expires. `clock` is injectable for
    tests (monotonic seconds)."""

    MAX_TTL = 5.0

    def __init__(self, ttl: float = MAX_TTL, *, max_size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= ttl <= self.MAX_TTL:
            raise ValueError(f"ttl must be within 0..{self.MAX_TTL} s")
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, KeyInfo]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        _CACHES.add(self)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key_hash: str) -> KeyInfo | None:
        """The cached snapshot for `key_hash`, or None when absent or older than the TTL."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        stored_at, info = entry
        if self._clock() - stored_at >= self.ttl:
            del self._entries[key_hash]
            return None
        return info

    def put(self, key_hash: str, info: KeyInfo) -> None:
        self._entries[key_hash] = (self._clock(), info)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def invalidate(self, *, key_id: str | None = None, key_hash: str | None = None) -> None:
        """Drop one key (by id or hash), or every key when neither is given."""
        if key_id is None and key_hash is None:
            self._entries.clear()
            return
        if key_hash is not None:
            self._entries.pop(key_hash, None)
        if key_id is not None:
            for h in [h for h, (_, info) in self._entries.items() if info.id == key_id]:
                del self._entries[h]

    async def authenticate(self, session: AsyncSession, key: str,
                           now: datetime | None = None) -> KeyInfo:
        """Like `authenticate`, through the cache: a malformed key costs no query, a cached
        one none either. Raises InvalidKey, KeyRevoked or KeyExpired."""
        if mode_of(key) is None:
            raise InvalidKey("Incorrect API key provided.")
        key_hash = hash_key(key)
        info = self.get(key_hash)
        if info is None:
            self.misses += 1
            row = (await session.execute(
                select(ApiKeyRow).where(ApiKeyRow.hash == key_hash))).scalar_one_or_none()
            if row is None:
                raise InvalidKey("Incorrect API key provided.")
            info = KeyInfo.from_row(row)
            self.put(key_hash, info)
        else:
            self.hits += 1
        check_usable(info, now)
        return info
