"""FLUX.1 Kontext output resolution buckets and aspect-ratio arithmetic (pure functions).

Kontext renders about one megapixel; the output size is the bucket whose ratio is nearest the
requested one. The list is diffusers' `PREFERRED_KONTEXT_RESOLUTIONS` (also ComfyUI's
`FluxKontextImageScale`), as (width, height).
"""

from __future__ import annotations

import math
from fractions import Fraction

KONTEXT_BUCKETS: tuple[tuple[int, int], ...] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
    (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
    (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)

#: Kontext's accepted range: 21:9 .. 9:21, i.e. 7:3 .. 3:7 (width / height).
MIN_RATIO = 3 / 7
MAX_RATIO = 7 / 3


def bucket_for_ratio(ratio: float) -> tuple[int, int]:
    """Return the (width, height) bucket whose aspect ratio is nearest `ratio` (log distance)."""
    if ratio <= 0:
        raise ValueError("ratio must be positive")
    target = math.log(ratio)
    return min(KONTEXT_BUCKETS, key=lambda wh: abs(math.log(wh[0] / wh[1]) - target))


def ratio_text(width: int, height: int) -> str:
    """`1920, 1080` -> `"16:9"`: the reduced ratio, as upstreams spell it."""
    frac = Fraction(width, height)
    return f"{frac.numerator}:{frac.denominator}"


def nearest_ratio(ratio: float, choices: tuple[str, ...]) -> str:
    """The `"W:H"` in `choices` nearest `ratio` (log distance)."""

    def distance(choice: str) -> float:
        w, h = choice.split(":")
        return abs(math.log(int(w) / int(h)) - math.log(ratio))

    return min(choices, key=distance)
