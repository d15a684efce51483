"""HTTP calls shared by the HTTP upstream adapters, with the contract's error mapping written once.

Every HTTP adapter sends its create request through `submit_call`, its status reads and
cancels through `poll_call`, and fetches results with `download`. The mapping onto the
`adapters.base` exception tree:

    submit_call   nothing was sent (connect error, connect/pool timeout)  -> UpstreamRejected,
                                                                              retryable
                  anything else on the wire (read timeout, reset, remote
                  protocol error) or the wall-clock deadline               -> UpstreamAmbiguous
                  401/402/403                                             -> UpstreamAuthError
                  408/409/425/429/5xx                                     -> UpstreamRejected,
                                                                              retryable, retry_after
                  other 4xx                                               -> UpstreamRejected,
                                                                              not retryable
    poll_call     any transport failure or the deadline                   -> UpstreamUnavailable
                  (statuses are left to the adapter; `raise_for_poll` is the default mapping)
    download      transport failure or the deadline                       -> UpstreamUnavailable
                  403/404/410 (the result URL has expired)                -> UpstreamRejected
                                                                              code result_expired
                  DestinationRefused (the client's policy refused a hop)  -> UpstreamRejected
                                                                      code result_url_not_allowed
                  more than 3 redirects                                   -> UpstreamRejected
                                                                      code too_many_redirects

Downloads never carry the channel's credentials: result hosts (BFL delivery, replicate.delivery,
the fal CDN) are public signed URLs, and a key must not leak to a host the upstream names.
A result URL is a third party's word: the gateway gives each adapter a result client whose
transport refuses destinations its address policy does not allow (raising
`DestinationRefused`), and `download` follows redirects itself so that every hop goes through
that transport again. Polling and cancel URLs carry the key, so adapters use one only when
`origin_allowed` says it is on the channel's own origin (or a documented host of that upstream).
"""

from __future__ import annotations

import base64
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field

from adapters.base import (
    UpstreamAmbiguous,
    UpstreamAuthError,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamState,
    UpstreamUnavailable,
)


class DestinationRefused(httpx.TransportError):
    """A transport refused to connect to a destination its policy does not allow (raised by
    the gateway's guarded transports; nothing was sent)."""


class QueueTimeouts(BaseModel):
    """The time limits (seconds) every queue-style upstream's options share; unknown option
    keys are refused."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout: float = Field(default=5.0, gt=0)
    submit_timeout: float = Field(default=30.0, gt=0)
    poll_timeout: float = Field(default=10.0, gt=0)
    download_timeout: float = Field(default=30.0, gt=0)


#: Transport errors raised before any byte of the request left: safe to send elsewhere.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
    httpx.LocalProtocolError, httpx.ProxyError,
)
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_AUTH_STATUS = frozenset({401, 402, 403})
_EXPIRED_STATUS = frozenset({403, 404, 410})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization", "x-key")
MAX_REDIRECTS = 3
_RESETS_IN = re.compile(r"(?:resets|retry|try again) in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_MAX_MESSAGE = 500
DEFAULT_MAX_DOWNLOAD = 64 * 1024 * 1024


def error_message(resp: httpx.Response) -> str:
    """The upstream's own words for a failed response (JSON `detail`/`error`/`message`/`title`,
    FastAPI validation lists and the OpenAI envelope included), else the start of the body."""
    try:
        body: Any = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:_MAX_MESSAGE] or f"HTTP {resp.status_code}"
    return (_message_from(body) or f"HTTP {resp.status_code}")[:_MAX_MESSAGE]


def _message_from(body: Any) -> str | None:
    if isinstance(body, str):
        return body
    if isinstance(body, list):  # FastAPI/pydantic: [{"loc": [...], "msg": "...", ...}]
        parts = [_message_from(item) for item in body]
        return "; ".join(p for p in parts if p) or None
    if isinstance(body, dict):
        if isinstance(body.get("msg"), str):
            loc = body.get("loc")
            where = ".".join(str(p) for p in loc) if isinstance(loc, list) else None
            return f"{where}: {body['msg']}" if where else str(body["msg"])
        for key in ("detail", "error", "message", "title"):
            if body.get(key):
                return _message_from(body[key])
    return None


def retry_after(resp: httpx.Response, message: str | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date), else from a message such as
    Replicate's "Your rate limit resets in ~30s."; None when neither says."""
    header = resp.headers.get("retry-after")
    if header:
        try:
            return max(float(header), 0.0)
        except ValueError:
            when = email.utils.parsedate_to_datetime(header) if header else None
            if when is not None:
                return max(when.timestamp() - time.time(), 0.0)
    if message and (m := _RESETS_IN.search(message)):
        return float(m.group(1))
    return None


def raise_for_submit(resp: httpx.Response) -> None:
    """Raise the contract's exception for a non-2xx answer to a create request."""
    if resp.is_success:
        return
    status = resp.status_code
    message = error_message(resp)
    if status in _AUTH_STATUS:
        raise UpstreamAuthError(message, status=status, code=f"upstream_{status}")
    if status in _RETRYABLE_STATUS or status >= 500:
        code = "rate_limited" if status == 429 else f"upstream_{status}"
        raise UpstreamRejected(message, status=status, code=code,
                               retry_after=retry_after(resp, message), retryable=True)
    raise UpstreamRejected(message, status=status, code="invalid_request", retryable=False)


def raise_for_poll(resp: httpx.Response) -> None:
    """Raise UpstreamUnavailable for a non-2xx answer to a status read (try again later)."""
    if resp.is_success:
        return
    message = error_message(resp)
    raise UpstreamUnavailable(message, status=resp.status_code, code=f"upstream_{resp.status_code}",
                              retry_after=retry_after(resp, message))


async def submit_call(client: httpx.AsyncClient, method: str, url: str, *, deadline: float,
                      phases: httpx.Timeout, **kwargs: Any) -> httpx.Response:
    """Send a create request once (never retried here); raises per the module table.

    Answers the response whatever its status; pair it with `raise_for_submit`.
    """
    try:
        with anyio.fail_after(deadline):
            return await client.request(method, url, timeout=phases, **kwargs)
    except _NOT_SENT as exc:
        raise UpstreamRejected(f"could not connect: {type(exc).__name__}",
                               code="connect_error", retryable=True) from exc
    except (httpx.TransportError, TimeoutError) as exc:
        raise UpstreamAmbiguous(
            f"the request was sent but no answer arrived ({type(exc).__name__}); "
            "the upstream may have accepted it", code="ambiguous_submit") from exc


async def poll_call(client: httpx.AsyncClient, method: str, url: str, *, deadline: float,
                    phases: httpx.Timeout, **kwargs: Any) -> httpx.Response:
    """Send a status read or cancel; transport failures become UpstreamUnavailable."""
    try:
        with anyio.fail_after(deadline):
            return await client.request(method, url, timeout=phases, **kwargs)
    except (httpx.TransportError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}",
                                  code="unreachable") from exc


async def download_output(client: httpx.AsyncClient, output: UpstreamOutput, *,
                          deadline: float, connect: float = 5.0,
                          headers: Mapping[str, str] | None = None) -> bytes:
    """An output's bytes: inline data as it is, else `download()` of its URL."""
    if output.data is not None:
        return output.data
    if not output.url:
        raise UpstreamUnavailable("output has neither data nor url", code="no_output")
    return await download(client, output.url, deadline=deadline, connect=connect,
                          headers=headers)


async def download(client: httpx.AsyncClient, url: str, *, deadline: float,
                   connect: float = 5.0, max_bytes: int = DEFAULT_MAX_DOWNLOAD,
                   headers: Mapping[str, str] | None = None) -> bytes:
    """The bytes at a result URL within a total `deadline` (seconds), following at most
    `MAX_REDIRECTS` redirects, each one a new request through `client` (so its transport
    judges every hop).

    `headers` is for a result on the channel's own host only (a self-hosted server behind an
    authenticating proxy); they are dropped as soon as a redirect leaves that origin. Never
    pass credentials for a host the upstream names.

    Raises UpstreamRejected (code `result_expired`) on 403/404/410, (`result_too_large`) over
    `max_bytes`, (`result_url_not_allowed`) when the client refuses a destination,
    (`too_many_redirects`), and UpstreamUnavailable for anything else.
    """
    try:
        with anyio.fail_after(deadline):
            return await _follow(client, url, connect=connect, deadline=deadline,
                                 max_bytes=max_bytes, headers=headers)
    except DestinationRefused as exc:
        raise UpstreamRejected(f"the result URL is not allowed: {exc}",
                               code="result_url_not_allowed", retryable=False) from exc
    except (httpx.RequestError, httpx.InvalidURL, TimeoutError) as exc:
        raise UpstreamUnavailable(f"result download failed: {type(exc).__name__}",
                                  code="download_failed") from exc


async def _follow(client: httpx.AsyncClient, url: str, *, connect: float, deadline: float,
                  max_bytes: int, headers: Mapping[str, str] | None) -> bytes:
    current = httpx.URL(url)
    hdrs = httpx.Headers(headers or {})
    timeout = httpx.Timeout(deadline, connect=connect)
    for _ in range(MAX_REDIRECTS + 1):
        async with client.stream("GET", current, headers=hdrs, follow_redirects=False,
                                 timeout=timeout) as resp:
            if resp.status_code in _REDIRECT_STATUS and resp.headers.get("location"):
                target = current.join(resp.headers["location"])
                if _origin(target) != _origin(current):
                    for name in _CREDENTIAL_HEADERS:
                        hdrs.pop(name, None)
                current = target
                continue
            if resp.status_code in _EXPIRED_STATUS:
                raise UpstreamRejected(
                    f"the result URL is no longer available (HTTP {resp.status_code})",
                    status=resp.status_code, code="result_expired", retryable=False)
            if not resp.is_success:
                raise UpstreamUnavailable(f"result download failed (HTTP {resp.status_code})",
                                          status=resp.status_code, code="download_failed")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise UpstreamRejected(f"the result is larger than {max_bytes} bytes",
                                           code="result_too_large", retryable=False)
                chunks.append(chunk)
            return b"".join(chunks)
    raise UpstreamRejected(f"the result URL redirected more than {MAX_REDIRECTS} times",
                           code="too_many_redirects", retryable=False)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    return url.scheme, url.host.lower(), port


def origin_allowed(url: str, base: str, https_suffixes: tuple[str, ...] = ()) -> bool:
    """Whether an upstream-named `url` (a polling or cancel URL, which gets the channel's key)
    is on `base`'s origin (scheme, host, port), or is https on a host ending in one of
    `https_suffixes` (such as `.bfl.ai`). A URL with a user name, or that does not parse, is
    not."""
    try:
        target, own = httpx.URL(url), httpx.URL(base)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    if target.userinfo or not target.host:
        return False
    if _origin(target) == _origin(own):
        return True
    host = target.host.lower().rstrip(".")
    return (target.scheme == "https" and bool(https_suffixes)
            and host.endswith(https_suffixes) and target.port in (None, 443))


def refuse_url(job: UpstreamJob, url: str, what: str = "polling URL") -> UpstreamJob:
    """`job`, failed with code `polling_url_not_allowed` because the upstream named `url` on a
    host the channel's key must not be sent to (nothing was sent there)."""
    host = _host_of(url)
    job.state = UpstreamState.FAILED
    job.error_code = "polling_url_not_allowed"
    job.error_message = (f"the upstream named a {what} on {host!r}, which is not this "
                         "channel's own host; it was not contacted")
    return job


def _host_of(url: str) -> str:
    try:
        return httpx.URL(url).host[:100]
    except (httpx.InvalidURL, TypeError, ValueError):
        return "an unparsable URL"


def data_url(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,...` for an input image sent inline."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
