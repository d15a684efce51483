"""Fetching user-supplied image references: http(s) URLs, data URLs and bare base64.

(Foundation version: plain fetching with a size cap and deadline. The editing issue replaces
this with the SSRF-safe fetcher.)
"""

from __future__ import annotations

import base64
import binascii
import re

import anyio
import httpx

from gateway.errors import InvalidRequest, PayloadTooLarge

_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*;base64,", re.IGNORECASE)


class ImageFetcher:
    """Turns an image reference into bytes. Raises InvalidRequest naming `param`."""

    def __init__(self, client: httpx.AsyncClient, *, max_bytes: int, timeout: float) -> None:
        self._client = client
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def load(self, ref: str, *, param: str) -> bytes:
        """Bytes of `ref`: an http(s) URL, a data URL, or bare base64."""
        ref = ref.strip()
        if ref.lower().startswith(("http://", "https://")):
            return await self.fetch(ref, param=param)
        return decode_base64_image(ref, param=param, max_bytes=self.max_bytes)

    async def fetch(self, url: str, *, param: str) -> bytes:
        try:
            with anyio.fail_after(self.timeout):
                async with self._client.stream("GET", url, follow_redirects=True) as resp:
                    if resp.status_code != 200:
                        raise InvalidRequest(f"{param}: could not download {url} "
                                             f"(HTTP {resp.status_code}).", param=param,
                                             code="invalid_image_url")
                    chunks, size = [], 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise PayloadTooLarge(f"{param}: the image at {url} is larger than "
                                                  f"{self.max_bytes} bytes.", param=param)
                        chunks.append(chunk)
                    return b"".join(chunks)
        except TimeoutError as exc:
            raise InvalidRequest(f"{param}: downloading {url} timed out.", param=param,
                                 code="invalid_image_url") from exc
        except httpx.HTTPError as exc:
            raise InvalidRequest(f"{param}: could not download {url} ({type(exc).__name__}).",
                                 param=param, code="invalid_image_url") from exc


def decode_base64_image(ref: str, *, param: str, max_bytes: int) -> bytes:
    """Bytes of a data URL or bare base64 string; raises InvalidRequest."""
    m = _DATA_URL.match(ref)
    payload = ref[m.end():] if m else ref
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{param}: the image is larger than {max_bytes} bytes.", param=param)
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{param}: not an http(s) URL, a data URL or base64 image data.",
                             param=param, code="invalid_image") from exc
