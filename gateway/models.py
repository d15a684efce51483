"""The model catalogue: canonical model names, their aliases and what they accept."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import NotFound


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    aliases: tuple[str, ...]
    description: str


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("flux-kontext-pro", ("black-forest-labs/flux-kontext-pro", "fal-ai/flux-pro/kontext",
                                   "flux-kontext", "flux.1-kontext-pro", "flux-1-kontext-pro"),
              "FLUX.1 Kontext [pro]: generation and editing"),
    ModelInfo("flux-kontext-max", ("black-forest-labs/flux-kontext-max",
                                   "fal-ai/flux-pro/kontext/max", "flux.1-kontext-max",
                                   "flux-1-kontext-max"),
              "FLUX.1 Kontext [max]: highest quality and typography"),
    ModelInfo("flux-kontext-dev", ("black-forest-labs/flux-kontext-dev", "fal-ai/flux-kontext/dev",
                                   "flux.1-kontext-dev", "flux-1-kontext-dev"),
              "FLUX.1 Kontext [dev]: open weights"),
)

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
                  aliases: Mapping[str, str] | None = None) -> str:
    """The canonical id for `name`, one of its built-in aliases or one of `aliases` (the
    configured `model_aliases`: name -> canonical id); raises NotFound (model_not_found)."""
    if not name:
        raise NotFound("You must provide a model parameter.", param=param, code="model_not_found")
    key = name.strip().lower()
    canonical = _BY_NAME.get(key)
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
