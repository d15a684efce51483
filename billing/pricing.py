"""Prices: per model and operation, per image (plus optional per output megapixel), per
megapixel with a first-megapixel price (input megapixels counted: FLUX.2), or per resolution
class (FLUX 3 Image), in integer micro-units; price-group multipliers; the upstream's own cost
beside the price.

Built from plain settings values (`PriceTable.from_config`), so billing never reads the
gateway's settings. Money is never a float here: config numbers go through `Decimal(str(x))`.
Test-mode keys are never charged, and that rule lives in one place: `quote(..., mode="test")`
is 0 (see `chargeable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

MICRO = 1_000_000

#: Defaults (USD): Kontext pro $0.04, max $0.08, dev $0.025 per image.
DEFAULT_PRICES: dict[str, int] = {
    "flux-kontext-pro": 40_000,
    "flux-kontext-max": 80_000,
    "flux-kontext-dev": 25_000,
}

Number = float | int | str | Decimal


def to_micro(amount: Number) -> int:
    """Dollars (or any unit) as a decimal string or number -> integer micro-units (half up)."""
    return int((Decimal(str(amount)) * MICRO).to_integral_value(rounding=ROUND_HALF_UP))


def from_micro(amount: int) -> Decimal:
    """Integer micro-units -> an exact Decimal of the currency unit (for display)."""
    return Decimal(amount) / MICRO


def chargeable(mode: str) -> bool:
    """Whether keys of this mode ("live"/"test") pay: test-mode keys never do."""
    return mode != "test"


#: the keys of a model's price mapping that are not resolution classes
_PRICE_WORDS = frozenset({"per_image", "per_megapixel", "first_megapixel", "further_megapixel",
                          "generate", "edit"})


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """The price of one image of a model: `per_image` unless `by_operation` names the
    operation, plus `per_megapixel` times the output megapixels when that is known.

    With `first_megapixel` set, the image is priced by size instead (BFL's FLUX.2 formula):
    `first_megapixel` + `further_megapixel` for each further megapixel, where the megapixels
    are the output's plus every input image's, rounded up to a whole one (at least 1). With
    `by_resolution`, a resolution class it names has that price (FLUX 3 Image)."""

    per_image: int
    by_operation: dict[str, int] = field(default_factory=dict)
    per_megapixel: int = 0
    first_megapixel: int | None = None
    further_megapixel: int = 0
    by_resolution: dict[str, int] = field(default_factory=dict)

    @property
    def by_size(self) -> bool:
        """Whether the price follows the image's size (settled on the real output)."""
        return self.first_megapixel is not None or bool(self.per_megapixel)

    def unit(self, operation: str, megapixels: float | None, *,
             input_megapixels: float = 0.0, resolution: str | None = None) -> Decimal:
        if self.first_megapixel is not None:
            total = Decimal(str(megapixels or 0)) + Decimal(str(input_megapixels or 0))
            count = max(int(total.to_integral_value(rounding=ROUND_CEILING)), 1)
            return Decimal(self.first_megapixel) + Decimal(self.further_megapixel) * (count - 1)
        if resolution is not None and resolution in self.by_resolution:
            return Decimal(self.by_resolution[resolution])
        base = Decimal(self.by_operation.get(operation, self.per_image))
        if self.per_megapixel and megapixels:
            base += Decimal(self.per_megapixel) * Decimal(str(megapixels))
        return base


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Per-image prices. `prices[model]` is the default; `by_operation[model][op]` overrides it;
    `per_megapixel[model]` adds per output megapixel; `groups[name]` multiplies the price for
    keys in that price group."""

    prices: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: dict[str, float | Decimal] = field(default_factory=dict)
    default_price: int = 0
    per_megapixel: dict[str, int] = field(default_factory=dict)
    first_megapixel: dict[str, int] = field(default_factory=dict)
    further_megapixel: dict[str, int] = field(default_factory=dict)
    by_resolution: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, prices: Mapping[str, Number | Mapping[str, Number]] | None = None,
                    price_groups: Mapping[str, Number] | None = None, *,
                    default_price: Number = 0) -> PriceTable:
        """A table from settings values in currency units.

        `prices[model]` is a number (per image, every operation) or a mapping with any of
        `per_image`, `per_megapixel`, `first_megapixel` + `further_megapixel` (size-priced,
        inputs counted), operation names (`generate`, `edit`) and resolution classes (any
        other key, e.g. `1k`, `4k`) as keys.
        `price_groups[name]` is a multiplier. Raises ValueError for a negative value."""
        flat: dict[str, int] = {}
        by_op: dict[str, dict[str, int]] = {}
        per_mp: dict[str, int] = {}
        first: dict[str, int] = {}
        further: dict[str, int] = {}
        by_res: dict[str, dict[str, int]] = {}
        for model, spec in (DEFAULT_PRICES_UNITS if prices is None else prices).items():
            if isinstance(spec, Mapping):
                ops = {k: _money(v, f"prices.{model}.{k}") for k, v in spec.items()}
                if "per_image" in ops:
                    flat[model] = ops.pop("per_image")
                if "per_megapixel" in ops:
                    per_mp[model] = ops.pop("per_megapixel")
                if "first_megapixel" in ops:
                    first[model] = ops.pop("first_megapixel")
                if "further_megapixel" in ops:
                    further[model] = ops.pop("further_megapixel")
                classes = {k: ops.pop(k) for k in list(ops) if k not in _PRICE_WORDS}
                if classes:
                    by_res[model] = classes
                if ops:
                    by_op[model] = ops
                flat.setdefault(model, to_micro(default_price))
            else:
                flat[model] = _money(spec, f"prices.{model}")
        groups: dict[str, float | Decimal] = {}
        for name, mult in (price_groups or {}).items():
            value = Decimal(str(mult))
            if value < 0:
                raise ValueError(f"price_groups.{name} must not be negative")
            groups[name] = value
        return cls(prices=flat, by_operation=by_op, groups=groups,
                   default_price=to_micro(default_price), per_megapixel=per_mp,
                   first_megapixel=first, further_megapixel=further, by_resolution=by_res)

    def model_price(self, model: str) -> ModelPrice:
        """The price entry of `model` (the default price for an unknown model)."""
        return ModelPrice(per_image=self.prices.get(model, self.default_price),
                          by_operation=self.by_operation.get(model, {}),
                          per_megapixel=self.per_megapixel.get(model, 0),
                          first_megapixel=self.first_megapixel.get(model),
                          further_megapixel=self.further_megapixel.get(model, 0),
                          by_resolution=self.by_resolution.get(model, {}))

    def quote(self, model: str, operation: str = "generate", *, n: int = 1,
              group: str | None = None, megapixels: float | None = None,
              mode: str = "live", input_megapixels: float = 0.0,
              resolution: str | None = None) -> int:
        """Price in micro-units of `n` images of `model` for `operation` for a key of `group`
        and `mode`; 0 for test mode. Rounded half up once per image, then times `n`.
        `megapixels` is the output's, `input_megapixels` the inputs' (both counted by a
        first-megapixel price), `resolution` the resolution class asked."""
        if not chargeable(mode):
            return 0
        if n < 0:
            raise ValueError("n must not be negative")
        unit = self.model_price(model).unit(operation, megapixels,
                                            input_megapixels=input_megapixels,
                                            resolution=resolution)
        multiplier = Decimal(str(self.groups.get(group, 1))) if group else Decimal(1)
        per_image = int((unit * multiplier).to_integral_value(rounding=ROUND_HALF_UP))
        return per_image * n


def upstream_cost(cost_per_image: Number | None, n: int = 1) -> int | None:
    """The upstream's own cost of `n` images in micro-units (None when not configured), to be
    recorded beside the price for margin reports."""
    return None if cost_per_image is None else to_micro(cost_per_image) * n


def _money(value: Number, where: str) -> int:
    micro = to_micro(value)
    if micro < 0:
        raise ValueError(f"{where} must not be negative")
    return micro


#: `DEFAULT_PRICES` in currency units, as `config.example.yaml` writes them.
DEFAULT_PRICES_UNITS: dict[str, Number] = {
    "flux-kontext-pro": "0.04", "flux-kontext-max": "0.08", "flux-kontext-dev": "0.025"}
