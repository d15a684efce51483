"""Prices: per model and operation, per megapixel, groups, n, test mode; no floats."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.pricing import PriceTable, chargeable, from_micro, to_micro, upstream_cost


def test_defaults() -> None:
    table = PriceTable.from_config()
    assert table.quote("flux-kontext-pro") == 40_000
    assert table.quote("flux-kontext-max", n=3) == 240_000
    assert table.quote("flux-kontext-dev", "edit") == 25_000
    assert table.quote("unknown") == 0


def test_config_shapes_groups_and_megapixels() -> None:
    table = PriceTable.from_config(
        {"pro": 0.04, "max": {"per_image": "0.08", "edit": "0.09", "per_megapixel": "0.01"}},
        {"reseller": 0.85, "premium": "1.5"}, default_price="0.05")
    assert table.quote("pro", group="reseller") == 34_000
    assert table.quote("pro", group="premium", n=2) == 120_000
    assert table.quote("pro", group="nobody") == 40_000
    assert table.quote("max") == 80_000  # output size unknown
    assert table.quote("max", megapixels=1.0) == 90_000
    assert table.quote("max", "edit", megapixels=2.0, n=2) == 2 * 110_000
    assert table.quote("max", "edit", megapixels=2.0, group="reseller") == 93_500
    assert table.quote("other") == 50_000


def test_test_mode_is_never_charged() -> None:
    table = PriceTable.from_config()
    assert table.quote("flux-kontext-max", n=4, mode="test") == 0
    assert not chargeable("test") and chargeable("live")


def test_money_is_exact() -> None:
    assert to_micro(0.1) + to_micro(0.2) == to_micro("0.3") == 300_000
    assert to_micro("0.0000005") == 1  # half up
    assert from_micro(25_000) == Decimal("0.025")
    assert upstream_cost(0.03, 2) == 60_000 and upstream_cost(None) is None
    with pytest.raises(ValueError):
        PriceTable.from_config({"x": -1})
    with pytest.raises(ValueError):
        PriceTable.from_config({}, {"g": -1})
