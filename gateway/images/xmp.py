"""The IPTC digital source type in an image's XMP packet, written without touching pixels.

Every result the gateway stores (unless its key says `provenance: off`) says what it is in the
place every photo tool and the IPTC Photo Metadata Standard read it: XMP
`Iptc4xmpExt:DigitalSourceType`, `trainedAlgorithmicMedia` for a generated image and
`compositeWithTrainedAlgorithmicMedia` for a masked edit (the input's pixels with a generated
region). The packet is spliced into the file's container; the encoded image data is copied byte
for byte, so the pixels cannot change:

* PNG: an `iTXt` chunk with the keyword `XML:com.adobe.xmp`, right after `IHDR`;
* JPEG: an APP1 segment with Adobe's `http://ns.adobe.com/xap/1.0/` identifier, after the
  JFIF/EXIF segments;
* WebP: an `XMP ` chunk at the end of the RIFF container, the file turned into the extended
  (VP8X) layout when it was a simple one.

An XMP packet already there is replaced (the notes say so) unless it already names a digital
source type, which is then kept as it is. Pure byte work, safe on the gateway's own results.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

from PIL import Image

IPTC_DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED = IPTC_DST + "trainedAlgorithmicMedia"
COMPOSITE = IPTC_DST + "compositeWithTrainedAlgorithmicMedia"
_JPEG_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
_PNG_XMP_KEY = b"XML:com.adobe.xmp"
_DST_RE = re.compile(rb"DigitalSourceType(?:=\"|>|\s*=\s*')\s*([^\"'<\s]+)")


class XmpError(ValueError):
    """The bytes are not a PNG, JPEG or WebP file this module can write into."""


def packet(source_type: str, creator_tool: str) -> bytes:
    """An XMP packet naming `source_type` (a full IPTC vocabulary URL) and the tool."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        f' Iptc4xmpExt:DigitalSourceType="{source_type}"'
        f' xmp:CreatorTool="{creator_tool}"/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    ).encode()


def xmp_of(data: bytes) -> bytes | None:
    """The XMP packet of a PNG, JPEG or WebP file (headers only), None when it has none."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            xmp = im.info.get("xmp")
    except (OSError, ValueError, SyntaxError):
        return None
    if isinstance(xmp, str):
        return xmp.encode()
    return xmp if isinstance(xmp, bytes) and xmp else None


def source_type_of(data: bytes) -> str | None:
    """The IPTC digital source type the file's XMP names, None when it names none."""
    xmp = xmp_of(data)
    if xmp is None:
        return None
    found = _DST_RE.search(xmp)
    return found.group(1).decode("utf-8", "replace") if found else None


def with_source_type(data: bytes, source_type: str, creator_tool: str) -> tuple[bytes, str | None]:
    """`data` carrying an XMP packet that names `source_type`, and a note when an XMP packet
    that was there was replaced or kept (None otherwise). Raises XmpError for another format."""
    existing = xmp_of(data)
    if existing is not None and _DST_RE.search(existing):
        return data, "the result already named its IPTC digital source type in XMP; kept as it was"
    xmp = packet(source_type, creator_tool)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        out = _png(data, xmp)
    elif data.startswith(b"\xff\xd8"):
        out = _jpeg(data, xmp)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        out = _webp(data, xmp)
    else:
        raise XmpError("not a PNG, JPEG or WebP file")
    note = ("the upstream's XMP packet (no digital source type in it) was replaced by the "
            "gateway's" if existing is not None else None)
    return out, note


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(data: bytes, xmp: bytes) -> bytes:
    chunks: list[bytes] = []
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise XmpError("truncated PNG chunk")
        body = data[pos + 8:pos + 8 + length]
        if not (kind == b"iTXt" and body.startswith(_PNG_XMP_KEY + b"\x00")):
            chunks.append(data[pos:end])
        if kind == b"IHDR":  # iTXt: keyword, 0, compression flag, method, language, 0, key, 0
            chunks.append(_png_chunk(b"iTXt", _PNG_XMP_KEY + b"\x00\x00\x00\x00\x00" + xmp))
        pos = end
        if kind == b"IEND":
            break
    return data[:8] + b"".join(chunks)


def _jpeg(data: bytes, xmp: bytes) -> bytes:
    segment = _JPEG_XMP_ID + xmp
    if len(segment) + 2 > 0xFFFF:
        raise XmpError("XMP packet too large for one JPEG segment")
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    head: list[bytes] = []
    pos = 2
    inserted = False
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        seg = data[pos:pos + 2 + length]
        is_xmp = marker == 0xE1 and seg[4:4 + len(_JPEG_XMP_ID)] == _JPEG_XMP_ID
        is_lead = marker == 0xE0 or (marker == 0xE1 and seg[4:10] == b"Exif\x00\x00")
        if not is_lead and not inserted:
            head.append(app1)
            inserted = True
        if not is_xmp:
            head.append(seg)
        pos += 2 + length
    if not inserted:
        head.append(app1)
    return data[:2] + b"".join(head) + data[pos:]


def _webp_size(kind: bytes, body: bytes) -> tuple[int, int, bool]:
    """(width, height, has alpha) from a simple WebP's VP8/VP8L bitstream header."""
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF, False
    raise XmpError("unreadable WebP bitstream header")


def _webp(data: bytes, xmp: bytes) -> bytes:
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos:pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 8 + length + (length & 1)
    if not chunks:
        raise XmpError("empty WebP")
    chunks = [(k, b) for k, b in chunks if k != b"XMP "]
    if chunks[0][0] == b"VP8X":
        header = bytearray(chunks[0][1])
        header[0] |= 0x04  # XMP metadata present
        chunks[0] = (b"VP8X", bytes(header))
    else:
        w, h, alpha = _webp_size(*chunks[0])
        flags = 0x04 | (0x10 if alpha else 0)
        vp8x = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + \
            (h - 1).to_bytes(3, "little")
        chunks.insert(0, (b"VP8X", vp8x))
    chunks.append((b"XMP ", xmp))
    body = b"".join(k + struct.pack("<I", len(b)) + b + (b"\x00" if len(b) & 1 else b"")
                    for k, b in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
