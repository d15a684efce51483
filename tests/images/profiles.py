"""A Display-P3-like ICC profile built in code (no profile files ship with the test machine):
an ICC v2 RGB display profile with P3's D50-adapted colorants and a 2.2 gamma curve. Its
numbers are not Apple's byte for byte; it is wide-gamut and not sRGB, which is what the tests
need."""

from __future__ import annotations

import struct

#: Display P3 colorants, chromatically adapted to D50 (as in Apple's Display P3 profile)
P3_RED = (0.51512, 0.24120, -0.00105)
P3_GREEN = (0.29198, 0.69225, 0.04189)
P3_BLUE = (0.15710, 0.06657, 0.78407)
D50 = (0.96420, 1.0, 0.82491)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in xyz)


def _curve(gamma: float) -> bytes:
    return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)


def _text(text: str) -> bytes:
    return b"text" + b"\0" * 4 + text.encode("ascii") + b"\0"


def _assemble(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = 128 + table_size + len(data)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + space
              + b"XYZ " + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"APPL"
              + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + struct.pack(">I", 0)
              + b"".join(_s15(v) for v in D50) + b"test" + b"\0" * 44)
    assert len(header) == 128
    return header + table + data


def gray_profile(gamma: float = 1.8) -> bytes:
    """An ICC v2 grayscale display profile (gray TRC only)."""
    return _assemble(b"GRAY", [(b"desc", _desc("Gray (test)")),
                               (b"cprt", _text("no copyright, test data")),
                               (b"wtpt", _xyz(D50)), (b"kTRC", _curve(gamma))])


def matrix_profile(name: str, red: tuple[float, float, float], green: tuple[float, float, float],
                   blue: tuple[float, float, float], gamma: float = 2.2) -> bytes:
    """An ICC v2 matrix/TRC RGB display profile."""
    tags = [(b"desc", _desc(name)), (b"cprt", _text("no copyright, test data")),
            (b"wtpt", _xyz(D50)), (b"rXYZ", _xyz(red)), (b"gXYZ", _xyz(green)),
            (b"bXYZ", _xyz(blue)), (b"rTRC", _curve(gamma)), (b"gTRC", _curve(gamma)),
            (b"bTRC", _curve(gamma))]
    return _assemble(b"RGB ", tags)


def display_p3() -> bytes:
    return matrix_profile("Display P3 (test)", P3_RED, P3_GREEN, P3_BLUE)
