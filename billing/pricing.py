"""Prices: per model and operation, per image, in integer micro-units; group multipliers."""

from __future__ import annotations

from dataclasses import dataclass, field

MICRO = 1_000_000

#: Defaults (USD): Kontext pro $0.04, max $0.08, dev $0.025 per image.
DEFAULT_PRICES: dict[str, int] = {
    "flux-kontext-pro": 40_000,
    "flux-kontext-max": 80_000,
    "flux-kontext-dev": 25_000,
}


def to_micro(amount: float | str) -> int:
    """Dollars (or any unit) as a decimal string or number -> integer micro-units."""
    from decimal import Decimal

    return int((Decimal(str(amount)) * MICRO).to_integral_value())


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Per-image prices. `prices[model]` is the default; `by_operation[model][op]` overrides it.
    `groups[name]` multiplies the price for keys in that price group."""

    prices: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)
    default_price: int = 0

    def quote(self, model: str, operation: str = "generate", *, n: int = 1,
              group: str | None = None) -> int:
        """Price in micro-units of `n` images of `model` for `operation` for a key's group."""
        unit = self.by_operation.get(model, {}).get(operation,
                                                    self.prices.get(model, self.default_price))
        multiplier = self.groups.get(group, 1.0) if group else 1.0
        return round(unit * multiplier) * n
