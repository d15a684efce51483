"""The shared HTTP error mapping: messages and Retry-After parsing."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from adapters.transport import error_message, retry_after


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
