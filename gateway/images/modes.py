"""Pillow modes a client can send, reduced to the 8-bit modes the gateway composites and encodes.

Pillow's own `convert()` clips 16- and 32-bit integer samples to 0..255 instead of scaling
them, so a 16-bit grayscale PNG (mode `I;16`, Pillow >= 10) turns white. `to_8bit` scales
integer samples (0..65535 -> 0..255, rounded) before any other conversion; every path that
changes pixels (masks, stitching, EXIF rotation) calls it first. Synchronous Pillow work.
"""

from __future__ import annotations

from PIL import Image

_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_EIGHT_BIT = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB",
                        "HSV", "RGBX", "RGBa", "La"})


def to_8bit(im: Image.Image) -> Image.Image:
    """`im` with 8-bit samples, its meaning kept: 16/32-bit integer grayscale (`I;16*`, `I`,
    taken as 0..65535 and clamped to it) becomes `L` with v -> round(v / 257); `F` (0..1 when
    its maximum is at most 1, else 0..255) becomes `L`; 8-bit modes are returned as they are
    (the same object). `info` (the ICC profile among it) is kept."""
    if im.mode in _EIGHT_BIT:
        return im
    info = dict(im.info)
    if im.mode in _WIDE_INT_MODES:
        wide = im if im.mode == "I" else im.convert("I")
        out = wide.point(lambda v: v / 257 + 0.5).convert("L")
    elif im.mode == "F":
        _, top = im.getextrema()
        scale = 255.0 if isinstance(top, int | float) and top <= 1.0 else 1.0
        out = im.point(lambda v: v * scale + 0.5).convert("L")
    else:  # any other mode Pillow may add: its own conversion
        out = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    out.info.update(info)
    return out
