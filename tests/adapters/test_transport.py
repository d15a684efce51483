"""The shared HTTP layer: error mapping, Retry-After parsing, result downloads (redirects,
refused destinations) and the origin check of upstream-named URLs."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import respx

from adapters.base import UpstreamRejected
from adapters.transport import (
    DestinationRefused,
    download,
    error_message,
    origin_allowed,
    retry_after,
)


@pytest.mark.parametrize(("body", "expected"), [
    ({"detail": "Insufficient credits"}, "Insufficient credits"),
    ({"detail": [{"loc": ["body", "seed"], "msg": "not an int", "type": "x"}]},
     "body.seed: not an int"),
    ({"error": {"message": "Invalid size", "type": "invalid_request_error", "code": None}},
     "Invalid size"),
    ({"title": "Unauthenticated", "status": 401}, "Unauthenticated"),
    ({}, "HTTP 400"),
])
def test_error_message_shapes(body: dict[str, object], expected: str) -> None:
    assert error_message(httpx.Response(400, json=body)) == expected


def test_error_message_plain_text_is_truncated() -> None:
    assert error_message(httpx.Response(502, text="x" * 2000)) == "x" * 500


def test_retry_after_forms() -> None:
    assert retry_after(httpx.Response(429, headers={"Retry-After": "2.5"})) == 2.5
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    value = retry_after(httpx.Response(429, headers={"Retry-After": future}))
    assert value is not None and 55 <= value <= 61
    assert retry_after(httpx.Response(429), "Your rate limit resets in ~30s.") == 30.0
    assert retry_after(httpx.Response(429), "slow down") is None


PNG_BYTES = b"\x89PNG\r\n\x1a\nrest"


async def test_download_follows_three_redirects_and_drops_credentials_across_origins(
        mock: respx.MockRouter) -> None:
    mock.get("https://own.test/a").mock(return_value=httpx.Response(
        302, headers={"location": "/b"}))
    same = mock.get("https://own.test/b").mock(return_value=httpx.Response(
        307, headers={"location": "https://cdn.test/c"}))
    other = mock.get("https://cdn.test/c").mock(return_value=httpx.Response(
        301, headers={"location": "https://cdn.test/d"}))
    mock.get("https://cdn.test/d").mock(return_value=httpx.Response(200, content=PNG_BYTES))
    async with httpx.AsyncClient() as client:
        data = await download(client, "https://own.test/a", deadline=5,
                              headers={"authorization": "Bearer k", "x-key": "k"})
    assert data == PNG_BYTES
    assert same.calls.last.request.headers["authorization"] == "Bearer k"
    assert "authorization" not in other.calls.last.request.headers
    assert "x-key" not in other.calls.last.request.headers


async def test_download_refuses_a_fourth_redirect(mock: respx.MockRouter) -> None:
    for i in range(4):
        mock.get(f"https://r.test/{i}").mock(return_value=httpx.Response(
            302, headers={"location": f"/{i + 1}"}))
    last = mock.get("https://r.test/4").mock(return_value=httpx.Response(200))
    async with httpx.AsyncClient() as client:
        with pytest.raises(UpstreamRejected) as info:
            await download(client, "https://r.test/0", deadline=5)
    assert info.value.code == "too_many_redirects" and not info.value.retryable
    assert last.call_count == 0


class Refusing(httpx.AsyncBaseTransport):
    """A transport whose policy refuses every destination but `allowed`."""

    def __init__(self, allowed: str) -> None:
        self.allowed = allowed
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != self.allowed:
            raise DestinationRefused("not allowed", request=request)
        self.sent.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest"})


async def test_a_refused_hop_is_a_final_result_url_not_allowed() -> None:
    transport = Refusing("cdn.test")
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(UpstreamRejected) as info:
            await download(client, "https://cdn.test/x.png", deadline=5)
    assert info.value.code == "result_url_not_allowed" and not info.value.retryable
    assert transport.sent == ["https://cdn.test/x.png"]  # the redirect target was refused


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://api.test/v1/x", True),
    ("https://API.test:443/v1/x", True),
    ("http://api.test/v1/x", False),
    ("https://api.test:8443/v1/x", False),
    ("https://u:p@api.test/v1/x", False),
    ("https://eu.up.test/x", True),
    ("http://eu.up.test/x", False),
    ("https://up.test.evil/x", False),
    ("not a url", False),
])
def test_origin_allowed(url: str, allowed: bool) -> None:
    assert origin_allowed(url, "https://api.test/base", (".up.test",)) is allowed
