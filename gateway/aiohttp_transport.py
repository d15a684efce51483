"""An httpx transport that sends on aiohttp's connection pool: the gateway's upstream calls.

Why: httpx's own pool (httpcore on anyio) costs about 4.9 ms of CPU for a submit plus a result
download on the development machine; the same two calls through this transport cost about
1.1 ms (`bench/pipeline.py`; issue 9). The code above it keeps speaking httpx (`AsyncClient`,
`Response`, the exception tree `adapters.transport` classifies), and respx still stubs it in the
tests: `AiohttpPool` takes and answers httpcore's request and response types, exactly like the
`httpcore.AsyncConnectionPool` it stands in for, so `respx.mocks.HTTPCoreMocker.add_targets()`
covers it (tests/conftest.py).

Not the `httpx-aiohttp` package: its exception map turns `ServerDisconnectedError` (the request
went out, the answer did not come back) into `ConnectTimeout`, which `adapters.transport` rightly
reads as "never sent" and fails over: an upstream that accepted the job would then run and bill
it twice. Here only failures before the request was written are connect errors:

=====================================================  ======================================
aiohttp                                                httpcore (httpx maps it on)
=====================================================  ======================================
`ConnectionTimeoutError` (pool wait or connect)        `ConnectTimeout`   (not sent)
`ClientConnectorError` (DNS, refused, TLS handshake)   `ConnectError`     (not sent)
`InvalidUrlClientError`, `NonHttpUrlClientError`       `UnsupportedProtocol` (not sent)
`SocketTimeoutError`, other `ServerTimeoutError`       `ReadTimeout`      (maybe sent)
`ClientPayloadError`, `ClientOSError`                  `ReadError`        (maybe sent)
`ServerDisconnectedError`, `ClientResponseError`, ...  `RemoteProtocolError` (maybe sent)
=====================================================  ======================================

Timeouts: httpx's `pool` + `connect` bound aiohttp's `connect` (waiting for a free connection
and connecting), `connect` alone its `sock_connect`, `read` its `sock_read`; `write` has no
aiohttp counterpart (the whole body is handed over at once). The caller's overall deadline
(`anyio.fail_after` in `adapters.transport`) is what bounds a call end to end. Responses are
not decompressed here: httpx decodes `Content-Encoding` itself, as it does on its own pool.
Proxies: an `AsyncClient` still routes proxied URLs (`trust_env`) through httpx's own proxy
transports; this one connects directly.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpcore
import httpx
from yarl import URL

__all__ = ["AiohttpPool", "AiohttpTransport", "tls_context", "verifying_context"]

_DROPPED_HEADERS = frozenset({b"content-length", b"transfer-encoding"})  # aiohttp sets them


@functools.cache
def verifying_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def tls_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    """The TLS context for `verify`: True is one verifying context (certifi's roots) per
    process, shared by every client: loading the roots costs ~30 ms of CPU each time, and a
    gateway start would otherwise load them for each channel, fetcher and webhook client."""
    return verifying_context() if verify is True else verify


def _error(exc: BaseException) -> Exception:
    """The httpcore exception for an aiohttp failure (see the module's table)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpcore.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpcore.ConnectError(message)
    if isinstance(exc, aiohttp.InvalidUrlClientError | aiohttp.NonHttpUrlClientError):
        return httpcore.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpcore.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return httpcore.ReadError(message)
    return httpcore.RemoteProtocolError(message)


class _Body:
    """A response body as httpcore streams it; `aclose()` hands the connection back."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise _error(exc) from exc
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("read timed out") from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpPool:
    """httpcore's pool interface (`handle_async_request`, `aclose`) on one aiohttp session.

    `max_connections` caps the connections (None: unlimited), idle ones are closed after
    `keepalive_expiry` seconds; `ssl_context` verifies TLS. The session is made on the first
    request, inside the running event loop.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | bool,
                 max_connections: int | None, keepalive_expiry: float | None) -> None:
        self._ssl = ssl_context
        self._limit = max_connections or 0  # aiohttp: 0 is no limit
        self._keepalive = keepalive_expiry if keepalive_expiry is not None else 5.0
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0,
                                         keepalive_timeout=self._keepalive, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        session = self._session or self._open()
        url = request.url
        path, _, query = url.target.decode("ascii").partition("?")
        target = URL.build(scheme=url.scheme.decode("ascii"), host=url.host.decode("ascii"),
                           port=url.port, path=path, query_string=query, encoded=True)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers
                   if k.lower() not in _DROPPED_HEADERS]
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        connect, pool = timeouts.get("connect"), timeouts.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=timeouts.get("read"), sock_connect=connect,
            connect=None if connect is None or pool is None else connect + pool)
        sni = request.extensions.get("sni_hostname")
        try:
            response = await session.request(
                request.method.decode("ascii"), target, headers=headers, data=body or None,
                allow_redirects=False, timeout=timeout, server_hostname=sni)
        except aiohttp.ClientError as exc:
            raise _error(exc) from exc
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("timed out") from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1")
        return httpcore.Response(response.status, headers=list(response.raw_headers),
                                 content=_Body(response), extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AiohttpPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AiohttpTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its pool replaced by `AiohttpPool` (`verify` and `limits` as
    httpx takes them; `retries` are never made: a resent submit could bill twice)."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True,
                 limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        context = tls_context(verify)
        super().__init__(verify=context, limits=limits, retries=0)
        self._pool = AiohttpPool(  # type: ignore[assignment]
            ssl_context=context, max_connections=limits.max_connections,
            keepalive_expiry=limits.keepalive_expiry)
