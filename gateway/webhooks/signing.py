"""Webhook secrets and Standard Webhooks v1 signatures (HMAC-SHA256, `v1,<base64>`).

A secret is what the official `standardwebhooks` verifiers take as a string (Python
`Webhook(secret)`, JavaScript `new Webhook(secret)`): `whsec_<base64>` or the same base64
without the prefix; the HMAC key is the base64-decoded part either way (32 random bytes for the
gateway-wide secret, `generate_secret()`). Anything that is not base64 (standard alphabet,
padding optional) is refused: the Python verifier would silently drop its other characters and
the JavaScript one throws, so no verifier given that string could check the signature.

Signing itself is done by the `standardwebhooks` library (`Webhook.sign`), over the exact bytes
that are sent: `"{webhook-id}.{webhook-timestamp}.{body}"`.

`SecretBox` keeps per-request secrets encrypted at rest (they must stay readable to sign with,
so they cannot be hashed). It uses only the standard library: a keystream of
HMAC-SHA256(enc_key, nonce || counter) XORed with the plaintext, then an HMAC-SHA256 tag over
nonce and ciphertext (encrypt-then-MAC), both keys derived from the gateway's webhook secret.
Rotating the gateway secret therefore makes pending per-request secrets unreadable (those
deliveries fail with `secret_unreadable`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path

from standardwebhooks import Webhook

PREFIX = "whsec_"
MIN_SECRET_BYTES = 8  # decoded key bytes: refuse trivially short secrets
MAX_SECRET_CHARS = 256


class SecretError(ValueError):
    """A webhook secret that cannot be used (empty, too short/long, bad base64)."""


def parse_secret(secret: str) -> bytes:
    """The HMAC key of `secret`, as the `standardwebhooks` verifiers read the same string: the
    base64 after an optional `whsec_` prefix (padding optional).

    Raises SecretError for an empty, oversized, non-base64 or too short secret."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise SecretError("the webhook secret must be 1 to 256 characters")
    text = secret.removeprefix(PREFIX)
    try:
        if len(text) % 4 == 1:
            raise ValueError("truncated")
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretError(
            "the webhook secret must be a Standard Webhooks secret: whsec_ followed by base64 "
            "(or the base64 alone), e.g. whsec_ and the output of `openssl rand -base64 32`; "
            "the standardwebhooks verifiers are given that same string") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(f"the webhook secret must hold at least {MIN_SECRET_BYTES} bytes "
                          "(base64-decoded)")
    return key


def generate_secret(nbytes: int = 32) -> str:
    """A new random `whsec_<base64>` secret (24..64 bytes per Standard Webhooks)."""
    if not 24 <= nbytes <= 64:
        raise ValueError("a webhook secret holds 24 to 64 random bytes")
    return PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def load_or_create_secret(path: Path) -> str:
    """The gateway-wide `whsec_` secret stored at `path`, created (0600) on first use."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = generate_secret()
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(0o600)
    return secret


class Signer:
    """Signs webhook bodies with one key (and optionally older ones, for rotation).

    Every key signs; `webhook-signature` lists them space-separated, so a receiver holding
    either the new or the old secret verifies during a rotation."""

    def __init__(self, key: bytes, *older: bytes) -> None:
        self._hooks = [Webhook(k) for k in (key, *older)]

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        """A signer for `secret` (see `parse_secret`); raises SecretError."""
        return cls(parse_secret(secret))

    @classmethod
    def from_stored_secret(cls, secret: str) -> Signer:
        """A signer for a per-request secret kept on a delivery row: as `from_secret`, except
        that a secret accepted before secrets had to be base64 (then any string, its UTF-8
        bytes being the key) keeps signing as it was promised. Raises SecretError."""
        try:
            return cls.from_secret(secret)
        except SecretError:
            legacy = secret.encode()
            if len(legacy) < MIN_SECRET_BYTES or len(secret) > MAX_SECRET_CHARS:
                raise
            return cls(legacy)

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` value for `body` sent as `msg_id` at `timestamp`."""
        when = datetime.fromtimestamp(timestamp, tz=UTC)
        text = body.decode()
        return " ".join(h.sign(msg_id, when, text) for h in self._hooks)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers for one attempt."""
        if "." in msg_id:
            raise ValueError("a webhook-id must not contain '.'")
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": self.signature(msg_id, timestamp, body)}


class SecretBox:
    """Authenticated encryption of short secrets with a key derived from `master`."""

    _VERSION = "v1"

    def __init__(self, master: bytes) -> None:
        self._enc = hmac.new(master, b"fluxgate webhook secret encryption", hashlib.sha256
                             ).digest()
        self._mac = hmac.new(master, b"fluxgate webhook secret authentication",
                             hashlib.sha256).digest()

    def _stream(self, nonce: bytes, size: int) -> bytes:
        blocks = []
        for counter in range((size + 31) // 32):
            blocks.append(hmac.new(self._enc, nonce + counter.to_bytes(4, "big"),
                                   hashlib.sha256).digest())
        return b"".join(blocks)[:size]

    def seal(self, plaintext: str) -> str:
        """`plaintext` encrypted and authenticated, as printable text."""
        data = plaintext.encode()
        nonce = secrets.token_bytes(16)
        cipher = bytes(a ^ b for a, b in zip(data, self._stream(nonce, len(data)), strict=True))
        tag = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()
        return f"{self._VERSION}.{base64.urlsafe_b64encode(nonce + cipher + tag).decode()}"

    def open(self, sealed: str) -> str:
        """The plaintext of `seal()`'s output; raises SecretError when it was tampered with
        or sealed under another key."""
        version, _, text = sealed.partition(".")
        try:
            raw = base64.urlsafe_b64decode(text.encode())
        except (binascii.Error, ValueError) as exc:
            raise SecretError("unreadable sealed secret") from exc
        if version != self._VERSION or len(raw) < 48:
            raise SecretError("unreadable sealed secret")
        nonce, cipher, tag = raw[:16], raw[16:-32], raw[-32:]
        expected = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected):
            raise SecretError("unreadable sealed secret")
        plain = bytes(a ^ b for a, b in zip(cipher, self._stream(nonce, len(cipher)),
                                            strict=True))
        return plain.decode()
