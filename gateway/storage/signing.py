"""HMAC-signed, expiring file URLs: `{base}/files/{id}.{ext}?exp=...&sig=...`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret stored at `path`, created (0600) on first use so URLs survive restarts."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32).encode()
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret


class UrlSigner:
    """Signs and checks file URLs. `ttl` is how long a signed URL stays valid (seconds)."""

    def __init__(self, secret: bytes, base_url: str, ttl: int) -> None:
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl

    def _sig(self, name: str, exp: int) -> str:
        mac = hmac.new(self._secret, f"{name}:{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode().rstrip("=")

    def url(self, file_id: str, ext: str, now: float | None = None) -> str:
        name = f"{file_id}.{ext}"
        exp = int((now or time.time()) + self.ttl)
        return f"{self.base_url}/files/{name}?exp={exp}&sig={self._sig(name, exp)}"

    def verify(self, name: str, exp: int, sig: str, now: float | None = None) -> bool:
        """True when `sig` is valid for `name` and `exp` has not passed."""
        if exp < (now or time.time()):
            return False
        return hmac.compare_digest(self._sig(name, exp), sig)
