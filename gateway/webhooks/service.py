"""WebhookService: what the API and the app need of webhooks, wired from settings.

* `accept(url, secret)` checks a request's `webhook_url` against the SSRF policy (the image
  fetcher's `GuardedTransport` and the `limits.fetch_allow` allow-list) and seals its
  `webhook_secret`, before any job exists or any money is reserved;
* `outbox` writes delivery rows inside the job's terminal transaction (see `outbox.py`);
* `worker` delivers them (see `delivery.py`).

Secrets: a request's own `webhook_secret` (`whsec_<base64>` or the base64 alone, read as the
`standardwebhooks` verifiers read it; anything else is a 400) signs that request's
webhooks; it is stored only sealed (`SecretBox`), in the job's spec and then in the delivery
row, because it must stay usable for ~3 days of retries and across
restarts. Requests without one are signed with the gateway-wide `whsec_` secret
(`webhooks.secret`, else generated once into `$data_dir/webhook.key`; shown by
`fluxgate webhooks secret`). The sealing key is derived from that gateway secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import InvalidRequest
from gateway.images.fetch import GuardedTransport, Resolver, UrlRefused
from gateway.settings import Settings, WebhookSettings
from gateway.storage.files import FileStore
from gateway.webhooks.delivery import Clock, DeliveryWorker, Sleep
from gateway.webhooks.outbox import Outbox
from gateway.webhooks.signing import (
    SecretBox,
    SecretError,
    Signer,
    load_or_create_secret,
    parse_secret,
)

MAX_URL_CHARS = 2048


def _now() -> datetime:
    return datetime.now(UTC)


def gateway_secret(settings: Settings) -> str:
    """The gateway-wide `whsec_` secret: configured, or generated once into the data dir."""
    return settings.webhooks.secret or load_or_create_secret(settings.data_dir / "webhook.key")


class WebhookService:
    """Accepts webhook URLs and secrets, and owns the outbox and the delivery worker."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], files: FileStore,
                 settings: WebhookSettings, secret: str, allow: Sequence[str] = (),
                 resolver: Resolver | None = None, clock: Clock = _now,
                 sleep: Sleep | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observer: Callable[[str], None] | None = None) -> None:
        try:
            key = parse_secret(secret)
        except SecretError as exc:
            raise ValueError(f"webhooks.secret: {exc}") from exc
        self.settings = settings
        self.guard = GuardedTransport(allow=allow, resolver=resolver)
        self.box = SecretBox(hashlib.sha256(b"fluxgate webhook seal:" + key).digest())
        self.outbox = Outbox(files, clock=clock)
        self.worker = DeliveryWorker(sessions=sessions, settings=settings, signer=Signer(key),
                                     box=self.box, transport=transport or self.guard,
                                     clock=clock, sleep=sleep, observer=observer)
        self.outbox.subscribe(self.worker.wake)

    async def accept(self, url: str | None, secret: str | None) -> tuple[str | None, str | None]:
        """(URL, sealed secret) to keep on the job; (None, None) without a URL.

        Raises InvalidRequest: `url_not_allowed` (SSRF policy) or `invalid_webhook_url`
        naming `webhook_url`, `invalid_webhook_secret` naming `webhook_secret`."""
        if secret:  # checked with or without a URL: a secret no verifier can use is an error
            try:
                parse_secret(secret)
            except SecretError as exc:
                raise InvalidRequest(f"webhook_secret: {exc}.", param="webhook_secret",
                                     code="invalid_webhook_secret") from exc
        if url is None or not url.strip():
            return None, None
        url = url.strip()
        shown = url if len(url) <= 200 else url[:200] + "..."
        try:
            if len(url) > MAX_URL_CHARS:
                raise ValueError("too long")
            parsed = httpx.URL(url)
            await self.guard.check(parsed)
        except UrlRefused as exc:
            raise InvalidRequest(f"webhook_url: the URL {shown} is not allowed: {exc}.",
                                 param="webhook_url", code=exc.code) from exc
        except (httpx.HTTPError, httpx.InvalidURL, TypeError, ValueError) as exc:
            raise InvalidRequest(f"webhook_url: {shown} is not a valid, resolvable http(s) URL.",
                                 param="webhook_url", code="invalid_webhook_url") from exc
        return url, self.box.seal(secret) if secret else None

    def start(self) -> None:
        if self.settings.enabled:
            self.worker.start()

    async def close(self) -> None:
        await self.worker.close()
