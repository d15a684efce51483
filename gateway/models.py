"""The model catalogue: canonical model names, their aliases and what they accept."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import NotFound
from gateway.families import MODELS as FAMILY_MODELS
from gateway.families import Catalogue


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    aliases: tuple[str, ...]
    description: str


#: every built-in model of every family (gateway/families.py holds the data)
MODELS: tuple[ModelInfo, ...] = tuple(ModelInfo(m.id, m.aliases, m.description)
                                      for m in FAMILY_MODELS)

#: OpenAI model names that clients hard-code (the ComfyUI OpenAI node defaults to
#: `gpt-image-1`, others send `dall-e-3`), answered by a Kontext model; `model_aliases` in the
#: settings replaces this mapping
DEFAULT_ALIASES: dict[str, str] = {
    "gpt-image-1": "flux-kontext-pro",
    "gpt-image-1-mini": "flux-kontext-pro",
    "gpt-image-1.5": "flux-kontext-max",
    "dall-e-3": "flux-kontext-pro",
    "dall-e-2": "flux-kontext-pro",
}

_BY_NAME: dict[str, str] = {}
for _m in MODELS:
    _BY_NAME[_m.id] = _m.id
    for _a in _m.aliases:
        _BY_NAME[_a.lower()] = _m.id


def is_model(name: str) -> bool:
    """Whether `name` is a canonical model id."""
    return any(m.id == name for m in MODELS)


def resolve_model(name: str | None, param: str = "model",
                  aliases: Mapping[str, str] | None = None,
                  catalogue: Catalogue | None = None) -> str:
    """The canonical id for `name`, one of its built-in aliases, one of `aliases` (the
    configured `model_aliases`: name -> canonical id) or a model (or alias) the operator added
    to `catalogue`; raises NotFound (model_not_found)."""
    if not name:
        raise NotFound("You must provide a model parameter.", param=param, code="model_not_found")
    key = name.strip().lower()
    canonical = _BY_NAME.get(key)
    if canonical is None and catalogue is not None:
        canonical = next((m.id for m in catalogue.models.values()
                          if key == m.id.lower() or key in (a.lower() for a in m.entry.aliases)),
                         None)
    if canonical is None and aliases:
        canonical = next((target for alias, target in aliases.items()
                          if alias.lower() == key), None)
    if canonical is None:
        raise NotFound(f"The model `{name}` does not exist or you do not have access to it.",
                       param=param, code="model_not_found")
    return canonical


def listed_models(served: Iterable[str], aliases: Mapping[str, str]) -> list[tuple[str, str]]:
    """`(id, canonical id)` for what `/v1/models` lists: the served models, then each
    configured alias whose model is served."""
    served = list(served)
    return [(m, m) for m in served] + [(a, t) for a, t in aliases.items() if t in served]
