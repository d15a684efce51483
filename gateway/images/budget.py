"""The decoding budget: how many pixels the gateway decodes at once, bounded.

A small upload can decompress to a large image (a 66 KB PNG of 19 MP is ~76 MB decoded, and
Pillow's work copies add more), so bounding bytes per request does not bound memory. Every
decode of a client's image is admitted against `limits.decode_pixel_budget` pixels in flight,
counted from the image header before any pixel is decoded. Over budget a request waits up to
`limits.decode_wait` seconds for others to finish, then gets 503 `overloaded` with Retry-After
(nothing is created or charged). An image larger than the whole budget is admitted alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import anyio
from PIL import Image

from gateway.errors import ServiceUnavailable


def header_pixels(data: bytes) -> int:
    """width x height from the image header (nothing decoded); 0 when it cannot be read (the
    validation that follows then names the problem)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            return int(width * height)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return 0


class PixelBudget:
    """Admits decodes while their pixels in flight stay within `total`."""

    def __init__(self, total: int, wait: float) -> None:
        self.total = total
        self.wait = wait
        self.in_use = 0
        self.peak = 0  # the most pixels admitted at once (for tests and /readyz)
        self.refused = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def admit(self, pixels: int) -> AsyncIterator[None]:
        """Hold `pixels` of the budget for the block. Raises ServiceUnavailable (503,
        Retry-After) when they cannot be had within `wait` seconds."""
        need = max(0, min(pixels, self.total))
        async with self._changed:
            try:
                with anyio.fail_after(self.wait):
                    await self._changed.wait_for(lambda: self.in_use + need <= self.total)
            except TimeoutError:
                self.refused += 1
                raise ServiceUnavailable(
                    "The gateway is decoding as many images as it can right now; retry "
                    "shortly.", code="overloaded", retry_after=1) from None
            self.in_use += need
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= need
                self._changed.notify_all()
