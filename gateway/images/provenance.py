"""Content credentials (C2PA): finding an embedded manifest store in image bytes.

What the gateway promises (README, "Provenance"): bytes that pass through unchanged keep their
manifest; wherever the gateway re-encodes an image that carried one (format conversion, ratio
fit, mask, EXIF rotation), the job's notes record that the manifest was lost, so no path
strips it silently, unless the result is signed (`marking.mark`, `provenance: signed`), which
keeps it as the new manifest's ingredient. `has_c2pa` looks for the manifest store
where the C2PA specification embeds it (§A.3 "Embedding manifests into assets"):

* JPEG: APP11 segments holding a JUMBF box (`JP` common identifier, `jumb` box) labelled `c2pa`;
* PNG: a `caBX` chunk;
* WebP: a `C2PA` chunk in the RIFF container.

Pure byte parsing (headers only), safe on untrusted bytes: malformed structure answers False.
"""

from __future__ import annotations

import struct


def has_c2pa(data: bytes) -> bool:
    """Whether `data` (PNG, JPEG or WebP) embeds a C2PA manifest store."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_has(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_has(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_has(data)
    return False


def _png_has(data: bytes) -> bool:
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"caBX":
            return True
        if kind in (b"IDAT", b"IEND"):  # the store precedes the image data
            return False
        pos += 12 + length
    return False


def _jpeg_has(data: bytes) -> bool:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA or marker == 0xD9:  # start of scan / end: no more metadata
            return False
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill, RSTn, TEM
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xEB and segment.startswith(b"JP") and b"jumb" in segment[:64] \
                and b"c2pa" in segment[:128]:
            return True
        pos += 2 + length
    return False


def _webp_has(data: bytes) -> bool:
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos:pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4:pos + 8])
        if kind == b"C2PA":
            return True
        pos += 8 + length + (length & 1)
    return False
