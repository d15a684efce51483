"""Shared fixtures of the adapter tests: a real httpx client with respx at its transport."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx
from PIL import Image

from adapters.base import InputImage


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def png(width: int = 32, height: int = 24, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def image() -> InputImage:
    return InputImage(data=png(), mime="image/png", width=32, height=24)


@pytest.fixture
def image2() -> InputImage:
    return InputImage(data=png(colour=(10, 200, 10)), mime="image/png", width=32, height=24)
