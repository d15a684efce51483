"""Quotes: the price of one job from its spec, as reserved (the size it asks) and as settled
(the size it came back with), per its model family's price formula (billing/pricing.py).

- Kontext: per image (plus `per_megapixel` of the expected bucket, in millions of pixels), as
  before families existed; the settlement equals the reservation.
- FLUX.2: first megapixel + each further one, output plus inputs, in BFL's megapixels (2^20
  pixels), rounded up. The reservation is for the size asked, which the gateway sends as
  width/height, so it covers the job; the settlement is on the real output (never above the
  reservation: billing's ledger caps it).
- FLUX 3 Image: per resolution class, which the job fixes (no size priced beyond it).
"""

from __future__ import annotations

from billing.pricing import PriceTable
from gateway.families import MEGAPIXEL, megapixels
from gateway.jobs.intake import expected_size
from gateway.jobs.model import JobSpec


def quote_job(prices: PriceTable, spec: JobSpec, size: tuple[int, int] | None = None) -> int:
    """Micro-units for one job of `spec` (0 for test-mode keys); `size` is the output's real
    (width, height) when it is known."""
    if spec.family == "kontext":
        width, height = expected_size(spec.aspect_ratio, None)
        return prices.quote(spec.model, spec.operation, group=spec.price_group,
                            megapixels=width * height / 1_000_000, mode=spec.key_mode)
    width, height = size or (spec.width or 1024, spec.height or 1024)
    return prices.quote(spec.model, spec.operation, group=spec.price_group,
                        megapixels=width * height / MEGAPIXEL,
                        input_megapixels=spec.input_pixels / MEGAPIXEL,
                        resolution=spec.resolution, mode=spec.key_mode)


def job_megapixels(spec: JobSpec, size: tuple[int, int] | None = None) -> tuple[float, float]:
    """(input MP, output MP) of a job, in BFL's megapixels, to 4 places (BFL-style answers)."""
    width, height = size or (spec.width or 0, spec.height or 0)
    if spec.family == "kontext" and size is None:
        width, height = expected_size(spec.aspect_ratio, None)
    return (float((spec.input_pixels / MEGAPIXEL).__round__(4)),
            float(megapixels(width, height)))
