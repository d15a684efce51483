"""The SSRF-safe fetcher for every URL a user gives us, and image references in general.

`ImageFetcher.load()` turns an image reference (http(s) URL, data URL or bare base64) into
bytes; `ImageFetcher.fetch()` downloads a URL. URLs go through `GuardedTransport`, an httpx
transport that for every request (so for every redirect hop):

1. accepts only the allowed schemes (http, https) and ports (80, 443), refuses userinfo and the
   names `localhost`, `metadata.google.internal`, `*.internal` (see `addresses.py`);
2. resolves the name ONCE (all A/AAAA answers) and refuses the request if ANY answer is not
   public, so `127.1`, `2130706433`, `0x7f000001` or a name with records {public, 127.0.0.1}
   are judged by what they resolve to, never by their text;
3. connects to a validated address only, with the original `Host` header and
   `extensions["sni_hostname"]` so TLS still verifies the name (the request's extensions are
   merged, not replaced, so httpx's timeout survives); each request gets its own connection
   pool, so a TLS connection made for one name is never reused for another name on the same IP.

The fetcher's own client has `trust_env=False` (no proxy from the environment can bypass the
checks) and follows redirects itself: at most 3, each re-checked, `Authorization`/`Cookie`
dropped across origins. The body is streamed with a byte cap (whatever Content-Length says)
under one wall-clock deadline for the whole fetch.

Errors are InvalidRequest naming the param, with stable codes: `url_not_allowed` (the policy
refused the URL), `invalid_image_url` (unparsable, unresolvable, unreachable or non-200),
`too_many_redirects`, `image_fetch_timeout`, `invalid_image` (bad base64); PayloadTooLarge
(413) when the body exceeds the cap. Messages never reveal what a name resolved to.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType

import anyio
import httpx

from adapters.transport import DestinationRefused
from gateway.aiohttp_transport import AiohttpTransport, tls_context
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.images.addresses import (
    AllowList,
    IPAddress,
    is_blocked_hostname,
    is_public_address,
    normalise_host,
    parse_ip,
    refused_scheme,
)

logger = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[list[str]]]
"""An async callable answering every address (A and AAAA) a hostname resolves to."""

DEFAULT_PORTS = frozenset({80, 443})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
_URLSAFE = str.maketrans("-_", "+/")
_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*;base64,", re.IGNORECASE)


async def system_resolver(host: str) -> list[str]:
    """Every address `getaddrinfo` answers for `host` (A and AAAA), in its order, deduplicated."""
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class UrlRefused(DestinationRefused):
    """The SSRF policy refused a request; `code` is the stable error code (`url_not_allowed`).

    A `DestinationRefused`, so the adapters' result downloads (which cannot import the
    gateway) recognise a refusal by the guarded result client they are given."""

    def __init__(self, message: str, *, code: str = "url_not_allowed",
                 request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)
        self.code = code


class _ClosingStream(httpx.AsyncByteStream):
    """A response body that closes the per-request transport once the body is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, transport: httpx.AsyncBaseTransport):
        self._stream = stream
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await self._transport.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that only reaches destinations the SSRF policy allows (see module).

    `allow`: hostnames, `*.suffix`, IPs or CIDRs allowed despite the policy (any port, or the
    one an entry names). `resolver`: async `host -> [addresses]`, called at most once per
    request. `inner`: makes the transport that carries one pinned request (default: a fresh
    `httpx.AsyncHTTPTransport` without retries). `pin_named=False` sends a request whose host
    the allow-list names (or that is an IP literal, its own pin) unresolved through one pooled
    transport (`limits`), so trusted hosts keep their connections; every other request is
    resolved, judged and pinned as above. Raises UrlRefused for a refused destination and
    httpx.ConnectError when the name does not resolve or no address answers. Close with
    `aclose()`.
    """

    def __init__(self, *, allow: Sequence[str] | AllowList = (), resolver: Resolver | None = None,
                 schemes: Collection[str] = ("http", "https"),
                 ports: Collection[int] = DEFAULT_PORTS,
                 inner: Callable[[], httpx.AsyncBaseTransport] | None = None,
                 verify: ssl.SSLContext | bool = True, pin_named: bool = True,
                 limits: httpx.Limits | None = None) -> None:
        self.allow = allow if isinstance(allow, AllowList) else AllowList.parse(allow)
        self.resolver: Resolver = resolver or system_resolver
        self.schemes = frozenset(schemes)
        self.ports = frozenset(ports)
        context = tls_context(verify)
        if inner is None:

            def inner() -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(verify=context, retries=0)

        self._inner = inner
        self._pooled: httpx.AsyncBaseTransport | None = None
        if not pin_named:
            self._pooled = AiohttpTransport(verify=context, limits=limits or httpx.Limits())

    async def aclose(self) -> None:
        if self._pooled is not None:
            await self._pooled.aclose()

    def _trusted(self, url: httpx.URL) -> bool:
        """Whether `url` may skip pinning: its host is allowed by name, or is an IP literal."""
        port = url.port or (443 if url.scheme == "https" else 80)
        return self.allow.allows_host(url.host, port) or parse_ip(url.host) is not None

    async def check(self, url: httpx.URL) -> list[IPAddress]:
        """The validated addresses `url` may be fetched from; raises UrlRefused or ConnectError."""
        if url.scheme not in self.schemes:
            raise UrlRefused(f"the scheme {url.scheme!r} is not allowed "
                             f"(only {', '.join(sorted(self.schemes))})")
        if url.userinfo:
            raise UrlRefused("URLs with a user name or password are not allowed")
        host = normalise_host(url.host)
        if not host:
            raise UrlRefused("the URL has no host", code="invalid_image_url")
        port = url.port or (443 if url.scheme == "https" else 80)
        named = self.allow.allows_host(host, port)
        if not named and is_blocked_hostname(host):
            raise UrlRefused(f"the host {host!r} is not allowed")
        literal = parse_ip(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        elif named and self._pooled is not None:
            return []  # trusted by name and sent unpinned (see `pin_named`)
        else:
            addresses = await self._resolve(host)
        if not named:
            for ip in addresses:
                if not (is_public_address(ip) or self.allow.allows_address(ip, port)):
                    logger.warning("fetch refused: %s resolves to a non-public address %s",
                                   host, ip)
                    raise UrlRefused(f"the host {host!r} resolves to a non-public address")
            if port not in self.ports and not all(self.allow.allows_address(ip, port)
                                                  for ip in addresses):
                raise UrlRefused(f"port {port} is not allowed "
                                 f"(only {', '.join(map(str, sorted(self.ports)))})")
        return addresses

    async def _resolve(self, host: str) -> list[IPAddress]:
        try:
            answers = await self.resolver(host)
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(f"could not resolve {host!r}") from exc
        addresses = [ip for ip in map(parse_ip, answers) if ip is not None]
        if not addresses or len(addresses) != len(answers):
            raise httpx.ConnectError(f"could not resolve {host!r}")
        return addresses

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            addresses = await self.check(request.url)
        except UrlRefused as exc:
            exc.request = request
            raise
        if self._pooled is not None and self._trusted(request.url):
            return await self._pooled.handle_async_request(request)
        host = normalise_host(request.url.host)
        last: httpx.TransportError | None = None
        for ip in addresses:
            pinned = _pin(request, ip, host)
            transport = self._inner()
            try:
                response = await transport.handle_async_request(pinned)
            except httpx.ConnectError as exc:
                await transport.aclose()
                last = exc
                continue
            except BaseException:
                await transport.aclose()
                raise
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=_ClosingStream(response.stream, transport),
                                  extensions=response.extensions)
        assert last is not None
        raise last


def _pin(request: httpx.Request, ip: IPAddress, host: str) -> httpx.Request:
    """`request` sent to `ip`, keeping the Host header and the TLS server name of `host`."""
    headers = request.headers.copy()
    headers["Host"] = request.url.netloc.decode("ascii")
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions["sni_hostname"] = host
    return httpx.Request(request.method, request.url.copy_with(host=str(ip)), headers=headers,
                         stream=request.stream, extensions=extensions)


class ImageFetcher:
    """Turns an image reference into bytes, reaching only what the SSRF policy allows.

    `client` is accepted for compatibility and not used: user URLs never go through the shared
    client (its proxies, pool and redirect settings are not SSRF-safe); the fetcher owns a
    private `trust_env=False` client on a `GuardedTransport` (or on `transport`, for tests).
    `max_bytes` caps every body, `timeout` is the wall-clock deadline of one whole fetch
    (all hops), `allow` the operator's allow-list (LimitSettings.fetch_allow), `resolver`
    the DNS lookup (default getaddrinfo). Close it with `aclose()`.
    """

    def __init__(self, client: httpx.AsyncClient | None = None, *, max_bytes: int,
                 timeout: float, allow: Sequence[str] = (), resolver: Resolver | None = None,
                 ports: Collection[int] = DEFAULT_PORTS, max_redirects: int = 3,
                 connect_timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            transport=transport or GuardedTransport(allow=allow, resolver=resolver, ports=ports),
            trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            headers={"Accept": "image/*", "Accept-Encoding": "identity",
                     "User-Agent": "fluxgate-image-fetcher"})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def load(self, ref: str, *, param: str) -> bytes:
        """Bytes of `ref`: an http(s) URL (fetched), a data URL or bare base64 (decoded).

        Raises as `fetch` and `decode_base64_image` do; a URL of a refused scheme (`file:`,
        `gopher:`, ... with or without `//`) is `url_not_allowed`.
        """
        ref = ref.strip()
        if (scheme := refused_scheme(ref)) is not None:  # `file:/x` has no "//" to fetch
            shown = ref if len(ref) <= 200 else ref[:200] + "..."
            raise InvalidRequest(f"{param}: the URL {shown} is not allowed: the scheme "
                                 f"{scheme!r} is not allowed (only http, https).",
                                 param=param, code="url_not_allowed")
        if re.match(r"^[a-z][a-z0-9+.-]*://", ref, re.IGNORECASE):
            return await self.fetch(ref, param=param)
        return decode_base64_image(ref, param=param, max_bytes=self.max_bytes)

    async def fetch(self, url: str, *, param: str,
                    headers: Mapping[str, str] | None = None) -> bytes:
        """The body of a 200 answer at `url` (after at most `max_redirects` redirects).

        `headers` are sent to the first origin only (Authorization/Cookie are dropped when a
        redirect changes origin). Raises InvalidRequest (`url_not_allowed`,
        `invalid_image_url`, `too_many_redirects`, `image_fetch_timeout`) or PayloadTooLarge,
        naming `param`.
        """
        shown = url if len(url) <= 200 else url[:200] + "..."
        try:
            with anyio.fail_after(self.timeout):
                return await self._follow(url, param=param, shown=shown, headers=headers)
        except TimeoutError as exc:
            raise InvalidRequest(f"{param}: downloading {shown} took longer than "
                                 f"{self.timeout:g} s.", param=param,
                                 code="image_fetch_timeout") from exc

    async def _follow(self, url: str, *, param: str, shown: str,
                      headers: Mapping[str, str] | None) -> bytes:
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise InvalidRequest(f"{param}: {shown} is not a valid URL.", param=param,
                                 code="invalid_image_url") from exc
        hdrs = httpx.Headers(headers or {})
        for _ in range(self.max_redirects + 1):
            try:
                async with self._client.stream("GET", current, headers=hdrs) as resp:
                    if resp.status_code in _REDIRECTS:
                        location = resp.headers.get("location")
                        if not location:
                            raise InvalidRequest(
                                f"{param}: {shown} answered a redirect without a Location.",
                                param=param, code="invalid_image_url")
                        target = current.join(location)
                        if _origin(target) != _origin(current):
                            for name in _CREDENTIAL_HEADERS:
                                hdrs.pop(name, None)
                        current = target
                        continue
                    if resp.status_code != 200:
                        raise InvalidRequest(
                            f"{param}: could not download {shown} (HTTP {resp.status_code}).",
                            param=param, code="invalid_image_url")
                    return await self._read(resp, param=param, shown=shown)
            except UrlRefused as exc:
                raise InvalidRequest(f"{param}: the URL {shown} is not allowed: {exc}.",
                                     param=param, code=exc.code) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise InvalidRequest(
                    f"{param}: could not download {shown} ({type(exc).__name__}).",
                    param=param, code="invalid_image_url") from exc
        raise InvalidRequest(f"{param}: {shown} redirected more than {self.max_redirects} "
                             f"times.", param=param, code="too_many_redirects")

    async def _read(self, resp: httpx.Response, *, param: str, shown: str) -> bytes:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(param, shown)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(param, shown)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, param: str, shown: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"{param}: the image at {shown} is larger than {self.max_bytes} "
                               f"bytes ({self.max_bytes / (1024 * 1024):g} MB).", param=param)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def decode_base64_image(ref: str, *, param: str, max_bytes: int) -> bytes:
    """Bytes of a data URL or bare base64 string.

    The size cap is checked on the encoded length before decoding (PayloadTooLarge, 413);
    anything that is not base64 raises InvalidRequest (`invalid_image`).
    """
    m = _DATA_URL.match(ref)
    start = m.end() if m else 0
    if (len(ref) - start) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLarge(f"{param}: the image is larger than {max_bytes} bytes "
                              f"({max_bytes / (1024 * 1024):g} MB).", param=param)
    payload = ref[start:] if start else ref
    try:
        # the usual case (clean, padded standard base64) is decoded without copying the text
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        data = None
    if data is None:  # whitespace, URL-safe alphabet or missing padding: normalise first
        text = "".join(payload.split()).translate(_URLSAFE)
        del payload
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"{param}: not an http(s) URL, a data URL or base64 image "
                                 "data.", param=param, code="invalid_image") from exc
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{param}: the image is larger than {max_bytes} bytes "
                              f"({max_bytes / (1024 * 1024):g} MB).", param=param)
    if not data:
        raise InvalidRequest(f"{param}: the image data is empty.", param=param,
                             code="invalid_image")
    return data
