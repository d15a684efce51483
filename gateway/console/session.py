"""Console sessions: who is signed in, carried in one signed, HttpOnly, SameSite cookie.

An operator session holds a fingerprint of the admin token (changing the token ends every
operator session); a customer session holds its key's id and the key itself sealed with
`SecretBox` (the playground submits through the public API with it; it never reaches the
browser's scripts, a URL or a log). Every request re-checks the key, so a revoked or disabled
key ends its sessions at once on this replica (within the key cache's 5 s elsewhere).

Each session carries its CSRF token: every form repeats it (`csrf` field or `X-CSRF-Token`
header) and a POST without it is refused. Sign-in itself is guarded by a double-submit token
(a short-lived cookie of its own, repeated in the form).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.webhooks.signing import SecretBox, SecretError

COOKIE = "fluxgate_console"
SIGNIN_COOKIE = "fluxgate_console_signin"
PATH = "/console"
MAX_AGE = 12 * 3600  # a session lasts at most 12 hours
SIGNIN_MAX_AGE = 3600


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """The signed-in caller. `key_id` is None for the operator; `key` is the customer's key
    (plaintext, server side only)."""

    role: str  # operator | customer
    csrf: str
    key_id: str | None = None
    key: str | None = None
    name: str = ""

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(b"fluxgate console\0" + token.encode()).hexdigest()[:32]


class SessionCodec:
    """Signs and reads session cookies with a key derived from the gateway's secret."""

    def __init__(self, secret: bytes) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="fluxgate-console-session")
        self._box = SecretBox(hmac.new(secret, b"fluxgate console key box",
                                       hashlib.sha256).digest())

    def operator(self, admin_token: str) -> tuple[str, ConsoleSession]:
        csrf = secrets.token_urlsafe(24)
        cookie = self._serializer.dumps({"r": "operator", "a": token_fingerprint(admin_token),
                                         "c": csrf})
        return cookie, ConsoleSession(role="operator", csrf=csrf, name="operator")

    def customer(self, key_id: str, key: str, name: str) -> tuple[str, ConsoleSession]:
        csrf = secrets.token_urlsafe(24)
        cookie = self._serializer.dumps({"r": "customer", "k": key_id,
                                         "s": self._box.seal(key), "c": csrf, "n": name})
        return cookie, ConsoleSession(role="customer", csrf=csrf, key_id=key_id, key=key,
                                      name=name)

    def read(self, cookie: str | None, admin_token: str | None) -> ConsoleSession | None:
        """The session in `cookie`, None when absent, forged, expired or no longer valid for
        the admin token (the key itself is checked by the caller)."""
        if not cookie:
            return None
        try:
            data: dict[str, Any] = self._serializer.loads(cookie, max_age=MAX_AGE)
        except BadSignature:
            return None
        csrf = str(data.get("c") or "")
        if not csrf:
            return None
        if data.get("r") == "operator":
            if not admin_token or not hmac.compare_digest(
                    str(data.get("a", "")), token_fingerprint(admin_token)):
                return None
            return ConsoleSession(role="operator", csrf=csrf, name="operator")
        if data.get("r") == "customer":
            try:
                key = self._box.open(str(data.get("s", "")))
            except SecretError:
                return None
            return ConsoleSession(role="customer", csrf=csrf, key_id=str(data.get("k")),
                                  key=key, name=str(data.get("n") or ""))
        return None

    def seal(self, text: str) -> str:
        return self._box.seal(text)

    def open(self, sealed: str) -> str:
        """Raises SecretError."""
        return self._box.open(sealed)


def csrf_matches(expected: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(expected.encode(), str(presented).encode())
