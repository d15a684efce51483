"""Bounded memory per request: decodes are admitted against a budget of pixels in flight.

Small uploads that decompress large (a flat 19 MP PNG is a few dozen KB) are counted by their
header before any pixel is decoded."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from typing import Any

import httpx
import pytest

from gateway.errors import ServiceUnavailable
from gateway.images.budget import PixelBudget, header_pixels
from tests.conftest import jobs_of, png_bytes

BIG = (5000, 3800)  # 19 MP
BIG_PNG = png_bytes(BIG, (90, 90, 90))


def test_header_pixels_reads_the_header_only() -> None:
    assert len(BIG_PNG) < 200_000
    assert header_pixels(BIG_PNG) == BIG[0] * BIG[1]
    assert header_pixels(b"not an image") == 0


def test_budget_refuses_after_its_wait_and_admits_when_freed() -> None:
    async def go() -> None:
        budget = PixelBudget(total=20_000_000, wait=0.05)
        async with budget.admit(19_000_000):
            with pytest.raises(ServiceUnavailable) as refused:
                async with budget.admit(19_000_000):
                    pass
            assert refused.value.retry_after == 1 and refused.value.code == "overloaded"
        async with budget.admit(19_000_000):  # freed: admitted at once
            assert budget.in_use == 19_000_000
        # one image larger than the whole budget is admitted alone
        async with budget.admit(50_000_000):
            assert budget.in_use == budget.total
        assert budget.in_use == 0 and budget.refused == 1

    asyncio.run(go())


def _burst(base_url: str, key: str, n: int) -> list[httpx.Response]:
    body = {"model": "flux-kontext-pro", "prompt": "make it blue",
            "input_image": "data:image/png;base64," + base64.b64encode(BIG_PNG).decode(),
            "response_format": "url"}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=300,
                                     headers={"authorization": f"Bearer {key}"}) as client:
            return list(await asyncio.gather(*(
                client.post("/v1/images/generations", json=body) for _ in range(n))))

    return asyncio.run(go())


def test_concurrent_large_decodes_stay_within_the_budget(gateway_factory: Any) -> None:
    """Eight concurrent 19 MP uploads against a budget of two images: they queue (all
    succeed) and never more than two are decoded at once."""
    gw = gateway_factory(limits={"fetch_allow": ["127.0.0.1"], "decode_pixel_budget": 40_000_000,
                                 "decode_wait": 600})
    key_id, key = gw.create_key("budget", balance=10_000_000)
    answers = _burst(gw.base_url, key, 8)
    assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
    budget = gw.services.pixel_budget
    assert 0 < budget.peak <= 40_000_000 and budget.in_use == 0
    assert len(jobs_of(gw, key_id)) == 8


def test_over_budget_requests_get_503_with_retry_after_and_no_job(gateway_factory: Any) -> None:
    """With no time to wait, decodes beyond the budget are refused with 503 + Retry-After in
    the OpenAI shape; refused requests create and charge nothing."""
    gw = gateway_factory(limits={"fetch_allow": ["127.0.0.1"], "decode_pixel_budget": 19_000_000,
                                 "decode_wait": 0})
    key_id, key = gw.create_key("budget", balance=10_000_000)
    answers = _burst(gw.base_url, key, 8)
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 503}, [a.text[:200] for a in answers]
    assert statuses[200] >= 1
    for refused in (a for a in answers if a.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
    assert gw.services.pixel_budget.peak <= 19_000_000
    assert len(jobs_of(gw, key_id)) == statuses[200]
