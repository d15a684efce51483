"""The model catalogue: canonical model names, their aliases and what they accept."""

from __future__ import annotations

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

_BY_NAME: dict[str, str] = {}
for _m in MODELS:
    _BY_NAME[_m.id] = _m.id
    for _a in _m.aliases:
        _BY_NAME[_a.lower()] = _m.id


def resolve_model(name: str | None, param: str = "model") -> str:
    """The canonical id for `name` or one of its aliases; raises NotFound (model_not_found)."""
    if not name:
        raise NotFound("You must provide a model parameter.", param=param, code="model_not_found")
    canonical = _BY_NAME.get(name.strip().lower())
    if canonical is None:
        raise NotFound(f"The model `{name}` does not exist or you do not have access to it.",
                       param=param, code="model_not_found")
    return canonical
