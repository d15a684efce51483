"""The model-family fields an OpenAI-shaped request (images, edits, chat) may carry as extras
(`extra_body` in the SDKs): FLUX.2's `width`/`height`, `disable_pup`, flex's `steps`/
`guidance`; FLUX 3's `resolution`, `grounding`, `version`. Each is fitted to the model's
family by `gateway/jobs/family_rules.py` (dropped and noted when the model does not take it,
400 naming it when out of range).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.api.deps import Principal, Services
from gateway.jobs import family_rules
from gateway.jobs.orders import Order

#: knobs read from a request's extra fields (the size fields are read apart)
KNOBS = ("guidance", "steps", "disable_pup", "grounding", "version", "go_fast")


def fit(order: Order, services: Services, principal: Principal, fields: Mapping[str, Any], *,
        size: Any = None, quality: Any = None, seed: Any = None,
        knobs: tuple[str, ...] = KNOBS) -> None:
    """Fit `order` to its model's family with the request's `fields` (extras included)."""
    model = services.jobs.catalogue.spec(order.model)
    family_rules.apply(
        order, model, size=size, width=fields.get("width"), height=fields.get("height"),
        resolution=fields.get("resolution"), quality=quality,
        seed_asked=family_rules.wants_seed(seed),
        knobs={k: fields.get(k) for k in knobs}, grounding_default=principal.grounding)
