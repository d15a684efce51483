"""Colour profiles (ICC): keeping the meaning of the numbers when the gateway writes pixels.

An image's numbers mean nothing without its profile: Display-P3 (200, 30, 30) is another red
than sRGB (200, 30, 30). The rules the output pipeline keeps with these helpers:

* a profile is written only onto pixels of its own colour space (an RGB profile onto RGB/RGBA,
  a GRAY one onto L/LA): `fits()`;
* a masked result keeps the input's profile; the upstream's result is converted into it first
  (`convert()`, LittleCMS, perceptual intent), an untagged result being sRGB, so under a black
  mask the input's numbers stay exactly as they were and the edited area means what the
  upstream meant.

Synchronous Pillow work.
"""

from __future__ import annotations

import io

from PIL import Image, ImageCms

from gateway.images.modes import to_8bit

_SPACE_OF_MODE = {"RGB": "RGB ", "RGBA": "RGB ", "L": "GRAY", "LA": "GRAY"}


def _profile(icc: bytes) -> ImageCms.ImageCmsProfile | None:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return None


def colour_space(icc: bytes | None) -> str | None:
    """The profile's data colour space (`"RGB "`, `"GRAY"`, `"CMYK"`...), None when absent or
    unreadable."""
    if not icc:
        return None
    profile = _profile(icc)
    return str(profile.profile.xcolor_space) if profile is not None else None


def fits(icc: bytes | None, mode: str) -> bool:
    """Whether `icc` may be written onto an image of `mode` (same colour space)."""
    space = colour_space(icc)
    return space is not None and _SPACE_OF_MODE.get(mode) == space


def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def convert(im: Image.Image, src_icc: bytes | None,
            dst_icc: bytes | None) -> Image.Image | None:
    """`im` (tagged `src_icc`) converted into the RGB profile `dst_icc` (None, for either:
    sRGB), as RGB or RGBA (alpha kept). None when either profile cannot be used (unreadable,
    not RGB)."""
    dst = _profile(dst_icc) if dst_icc else _srgb()
    src = _profile(src_icc) if src_icc else _srgb()
    if dst is None or src is None or dst.profile.xcolor_space != "RGB " \
            or src.profile.xcolor_space != "RGB ":
        return None
    mode = "RGBA" if "A" in im.getbands() else "RGB"
    rgb = to_8bit(im).convert(mode)
    try:
        out = ImageCms.profileToProfile(rgb, src, dst, outputMode=mode)
    except ImageCms.PyCMSError:
        return None
    assert out is not None
    return out
