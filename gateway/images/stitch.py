"""Stitching several input images into one, side by side, for upstreams that take one image.

The images are placed left to right in the order given, all scaled to one common height: the
smallest input height (images are only ever scaled down, never up), reduced further when the
canvas would exceed the pixel limit. `Stitched.layout` records where each input landed so the
job record can say so. Synchronous Pillow work: call it in a thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from adapters.base import OutputFormat
from gateway.errors import InvalidRequest
from gateway.images.colour import convert
from gateway.images.encode import MIME, encode
from gateway.images.modes import to_8bit
from gateway.images.validate import open_image


@dataclass(frozen=True, slots=True)
class Tile:
    """Where input `index` sits on the stitched canvas (pixels) and how much it was scaled."""

    index: int
    x: int
    width: int
    height: int
    scale: float

    def as_dict(self) -> dict[str, int | float]:
        return {"index": self.index, "x": self.x, "width": self.width, "height": self.height,
                "scale": round(self.scale, 6)}


@dataclass(frozen=True, slots=True)
class Stitched:
    """The stitched image's bytes, its MIME type and size, and the layout of its tiles."""

    data: bytes
    mime: str
    width: int
    height: int
    layout: tuple[Tile, ...]


def plan_layout(sizes: Sequence[tuple[int, int]], *, max_pixels: int) -> tuple[Tile, ...]:
    """Tiles for images of `sizes` (width, height) side by side at one common height.

    The common height is the smallest input height, lowered until the canvas (sum of widths x
    height) is at most `max_pixels`. Every tile is at least 1 pixel wide. Raises ValueError for
    no sizes or a limit that cannot be met.
    """
    if not sizes:
        raise ValueError("nothing to stitch")
    height = min(h for _, h in sizes)
    units = sum(w / h for w, h in sizes)  # canvas width per pixel of height
    if units * height * height > max_pixels:
        height = max(1, math.floor(math.sqrt(max_pixels / units)))
    while height >= 1:
        widths = [max(1, round(w * height / h)) for w, h in sizes]
        if sum(widths) * height <= max_pixels:
            break
        height -= 1
    else:
        raise ValueError(f"cannot fit {len(sizes)} images in {max_pixels} pixels")
    tiles, x = [], 0
    for i, ((_, h), w) in enumerate(zip(sizes, widths, strict=True)):
        tiles.append(Tile(index=i, x=x, width=w, height=height, scale=height / h))
        x += w
    return tuple(tiles)


def stitch(images: Sequence[bytes], *, max_pixels: int = 20_000_000,
           output_format: OutputFormat = "png", param: str = "image",
           max_bytes: int = 20 * 1024 * 1024, max_input_pixels: int = 20_000_000,
           max_output_bytes: int = 20 * 1024 * 1024) -> Stitched:
    """One image holding `images` left to right, heights equalised (see `plan_layout`).

    Every input is validated like an input image against `max_bytes`/`max_input_pixels`
    (raising as `open_image` does, naming `param[i]`); the output is within `max_pixels`, RGBA
    when any input has transparency (RGB for JPEG), resampled with LANCZOS, and encoded by
    `encode.encode` (PNG and WebP lossless; JPEG q95 4:4:4). A PNG canvas without
    transparency over `max_output_bytes` is written as JPEG instead. Colour: inputs sharing one
    ICC profile give a canvas tagged with it; with different profiles every tagged input is
    converted to sRGB and the canvas is untagged (sRGB), so no tile changes meaning.
    Raises InvalidRequest when `images` is empty.
    """
    if not images:
        raise InvalidRequest(f"{param}: at least one image is required.", param=param)
    opened: list[Image.Image] = []
    try:
        for i, data in enumerate(images):
            opened.append(open_image(data, param=f"{param}[{i}]", max_bytes=max_bytes,
                                     max_pixels=max_input_pixels))
        layout = plan_layout([im.size for im in opened], max_pixels=max_pixels)
        alpha = output_format != "jpeg" and any(
            "A" in im.getbands() or "transparency" in im.info for im in opened)
        mode = "RGBA" if alpha else "RGB"
        width = layout[-1].x + layout[-1].width
        canvas = Image.new(mode, (width, layout[0].height), (0, 0, 0, 0) if alpha else "black")
        profiles = {im.info.get("icc_profile") or None for im in opened}
        shared = profiles.pop() if len(profiles) == 1 else None  # one profile (or none) for all
        for im, tile in zip(opened, layout, strict=True):
            part = to_8bit(im).convert(mode)
            icc = im.info.get("icc_profile")
            if shared is None and isinstance(icc, bytes) and icc:  # mixed: all as sRGB
                part = convert(part, icc, None) or part
            if part.size != (tile.width, tile.height):
                part = part.resize((tile.width, tile.height), Image.Resampling.LANCZOS)
            canvas.paste(part, (tile.x, 0))
    finally:
        for im in opened:
            im.close()
    fmt = output_format
    icc = shared if isinstance(shared, bytes) else None
    data = encode(canvas, fmt, icc_profile=icc)
    if fmt == "png" and len(data) > max_output_bytes and not alpha:
        fmt = "jpeg"  # a lossless canvas over the input limit: one generation at q95 4:4:4
        data = encode(canvas, fmt, icc_profile=icc)
    return Stitched(data=data, mime=MIME[fmt], width=canvas.width, height=canvas.height,
                    layout=layout)
