"""Encoding a decoded image as the format a client asked for, with the gateway's quality rules.

Every path where the gateway writes pixels itself (masked results, format conversion, ratio
fitting, stitching) encodes here, so one set of rules holds:

* PNG is always lossless;
* JPEG is written at `quality` (default 95) with 4:4:4 chroma (no subsampling) at quality 90
  and above, 4:2:0 below; a transparent image is flattened onto white first;
* WebP is lossless (`exact`, so pixels under full transparency are kept too) unless a
  `quality` is given, then lossy at that quality;
* an ICC profile given (or found in `im.info`) is written into every format when it fits the
  pixels' colour space (`colour.fits`), so the numbers keep their meaning.

Synchronous Pillow work: callers run it in a thread.
"""

from __future__ import annotations

import io

from PIL import Image

from adapters.base import OutputFormat
from gateway.images.colour import fits
from gateway.images.modes import to_8bit

DEFAULT_JPEG_QUALITY = 95
FULL_CHROMA_FROM = 90  # JPEG quality from which chroma is kept at full resolution (4:4:4)
MIME: dict[OutputFormat, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
#: Pillow format name (as `validate.sniff` answers) -> our output format name
FORMAT_OF: dict[str, OutputFormat] = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


def has_alpha(im: Image.Image) -> bool:
    """Whether `im` carries transparency (an alpha band, or a palette/grey transparency)."""
    return "A" in im.getbands() or "transparency" in im.info


def encode(im: Image.Image, fmt: OutputFormat, *, quality: int | None = None,
           icc_profile: bytes | None = None) -> bytes:
    """`im` encoded as `fmt` under the module's rules. 16-bit and odd modes are reduced first
    (`modes.to_8bit`); `quality` (0..100) applies to JPEG and lossy WebP only. The ICC
    profile written is `icc_profile`, else the one in `im.info`, else none."""
    icc = icc_profile if icc_profile is not None else im.info.get("icc_profile")
    im = to_8bit(im)
    alpha = has_alpha(im)
    buf = io.BytesIO()
    if fmt == "jpeg":
        if alpha:
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            im = flat
        elif im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        q = DEFAULT_JPEG_QUALITY if quality is None else quality
        extra = _icc(icc, im.mode)
        im.save(buf, "JPEG", quality=q, subsampling=0 if q >= FULL_CHROMA_FROM else 2,
                optimize=True, **extra)
    elif fmt == "webp":
        im = im.convert("RGBA" if alpha else "RGB")
        extra = _icc(icc, im.mode)
        if quality is None:
            im.save(buf, "WEBP", lossless=True, exact=True, quality=100, method=4, **extra)
        else:
            im.save(buf, "WEBP", quality=quality, method=4, **extra)
    else:
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGBA" if alpha else "RGB")
        extra = _icc(icc, im.mode)
        im.save(buf, "PNG", **extra)
    return buf.getvalue()


def _icc(icc: object, mode: str) -> dict[str, object]:
    """The `icc_profile` save option: the profile when it fits `mode`, else explicitly none
    (so a stale one in `im.info` is not written either)."""
    return {"icc_profile": icc if isinstance(icc, bytes) and icc and fits(icc, mode) else None}
