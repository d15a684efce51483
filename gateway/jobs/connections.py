"""The HTTP clients each channel owns: a pool for its API and a guarded client for the URLs
its upstream names.

API client (`ChannelClients.api`): submits, polls and cancels, on a pool of its own, so one
busy channel cannot starve another. Its size is the channel's `max_connections`, else its
concurrency cap plus headroom for the polls and cancels that run beside the capped jobs
(`pool_size`), else `UNLIMITED_POOL` for a channel without a cap.

Result client (`ChannelClients.results`): result downloads, on their own pool (the same size)
with their own timeout (`jobs.download_timeout`), so a download never waits behind the
channel's submits. Upstreams are third parties (resellers chain to resellers), so a URL one
names gets the address policy of a user's URL (`GuardedTransport`: public addresses on ports
80/443, every redirect hop re-checked, `trust_env=False` so no proxy bypasses it), except the
destinations `result_allow_list` names: the channel's own host:port, its `result_hosts`, and
its type's documented hosts (`adapters.registry.RESULT_HOSTS`). Those are trusted by name and
are not DNS-pinned, so their connections are pooled. `limits.fetch_allow` is deliberately not
part of this policy: it opens the gateway to the operator's own sources for users' URLs, not to
whatever an upstream names.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from adapters.registry import DEFAULT_BASE_URLS, RESULT_HOSTS
from gateway import __version__
from gateway.aiohttp_transport import AiohttpTransport
from gateway.images.addresses import AllowList
from gateway.images.fetch import GuardedTransport, Resolver
from gateway.settings import ChannelSettings

#: Connections of a channel without a concurrency cap (each HTTP upstream call holds one).
UNLIMITED_POOL = 1000
#: Connections beside the capped jobs: polls and cancels of adopted or canceled jobs.
MIN_HEADROOM = 8
_API_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
#: Job error codes of a URL the upstream named and the policy refused (uncontacted).
URL_POLICY_CODES = frozenset({"result_url_not_allowed", "polling_url_not_allowed"})


def job_error_code(code: str | None) -> str:
    """The job's error code for an upstream failure whose adapter code is `code`: the URL
    policy's own codes are kept (users see why), everything else is `upstream_error`."""
    return code if code in URL_POLICY_CODES else "upstream_error"


def pool_size(max_concurrency: int | None, max_connections: int | None = None) -> int:
    """Connections of a channel's pools: `max_connections` when set (the operator's word, even
    below the cap), else `max_concurrency` plus a quarter (at least `MIN_HEADROOM` more), else
    `UNLIMITED_POOL`."""
    if max_connections is not None:
        return max_connections
    if max_concurrency is None:
        return UNLIMITED_POOL
    return max_concurrency + max(MIN_HEADROOM, max_concurrency // 4)


def origin_entry(url: str) -> str | None:
    """`host:port` (`[v6]:port`) of `url` as an allow-list entry; None when it has no host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    if not parsed.host:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{host}:{port}"


def result_allow_list(cs: ChannelSettings) -> AllowList:
    """Where `cs`'s result URLs may point despite the address policy (see the module)."""
    entries = [*cs.result_hosts, *RESULT_HOSTS.get(cs.type, ())]
    base = cs.base_url or DEFAULT_BASE_URLS.get(cs.type)
    own = origin_entry(base) if base else None
    if own is not None:
        entries.append(own)
    return AllowList.parse(entries, setting=f"channels.{cs.name}.result_hosts")


@dataclass(frozen=True, slots=True)
class ChannelClients:
    """One channel's HTTP clients: `api` for its API, `results` for URLs it names; each pool
    holds at most `size` connections."""

    api: httpx.AsyncClient
    results: httpx.AsyncClient
    size: int

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.results.aclose()


def channel_clients(cs: ChannelSettings, *, max_concurrency: int | None,
                    download_timeout: float, verify: ssl.SSLContext | bool = True,
                    resolver: Resolver | None = None) -> ChannelClients:
    """The clients of channel `cs` (close them with `aclose()`); `verify` may be one SSL
    context shared by every channel, `resolver` replaces getaddrinfo (tests)."""
    size = pool_size(max_concurrency, cs.max_connections)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    agent = {"user-agent": f"fluxgate/{__version__}"}
    api = httpx.AsyncClient(transport=AiohttpTransport(verify=verify, limits=limits),
                            timeout=_API_TIMEOUT, headers=agent)
    guard = GuardedTransport(allow=result_allow_list(cs), resolver=resolver, verify=verify,
                             pin_named=False, limits=limits)
    results = httpx.AsyncClient(
        transport=guard, trust_env=False, follow_redirects=False, headers=agent,
        timeout=httpx.Timeout(download_timeout, connect=min(5.0, download_timeout)))
    return ChannelClients(api=api, results=results, size=size)
