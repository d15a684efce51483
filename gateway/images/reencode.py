"""Re-encoding an input image the gateway had to change (EXIF rotation, GIF, animated WebP)
so that what is sent upstream stays within the input limits.

Rules: a JPEG stays a JPEG (quality 95, 4:4:4 chroma: one high-quality generation instead of
a PNG several times the size, which upstreams refuse as well); anything else becomes a
lossless PNG, or a JPEG at 95 when that PNG would be over the byte limit and the image has no
transparency. Should the file still be over the limit, the image is scaled down (LANCZOS)
until it fits. The ICC profile is kept. Synchronous Pillow work.
"""

from __future__ import annotations

import math

from PIL import Image

from adapters.base import OutputFormat
from gateway.images.encode import MIME, encode, has_alpha

INPUT_JPEG_QUALITY = 95


def reencode_input(im: Image.Image, source_format: str, *, max_bytes: int,
                   ) -> tuple[bytes, str, tuple[int, int], str]:
    """(bytes, MIME type, (width, height), what was done) for the upright image `im` whose
    bytes were `source_format` (Pillow's name). The bytes are at most `max_bytes` long."""
    icc = im.info.get("icc_profile")
    fmt: OutputFormat = "jpeg" if source_format == "JPEG" else "png"
    data = _encode(im, fmt, icc)
    if len(data) > max_bytes and fmt == "png" and not has_alpha(im):
        fmt = "jpeg"
        data = _encode(im, fmt, icc)
    how = "as JPEG (quality 95, 4:4:4)" if fmt == "jpeg" else "as PNG (lossless)"
    out = im
    while len(data) > max_bytes and min(out.size) > 1:
        scale = max(0.5, min(0.9, math.sqrt(max_bytes / len(data)) * 0.95))
        size = (max(1, math.floor(out.width * scale)), max(1, math.floor(out.height * scale)))
        out = im.resize(size, Image.Resampling.LANCZOS)
        data = _encode(out, fmt, icc)
    if out is not im:
        how += (f", scaled down from {im.width}x{im.height} to {out.width}x{out.height} to "
                f"stay within the {max_bytes / (1024 * 1024):g} MB input limit")
    return data, MIME[fmt], out.size, how


def _encode(im: Image.Image, fmt: OutputFormat, icc: object) -> bytes:
    return encode(im, fmt, quality=INPUT_JPEG_QUALITY if fmt == "jpeg" else None,
                  icc_profile=icc if isinstance(icc, bytes) else None)
