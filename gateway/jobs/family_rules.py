"""Family rules at intake: fit an `Order` to its model's family (gateway/families.py), the same
way for every surface.

- Size: Kontext keeps its aspect ratio; FLUX.2 gets `width`/`height` (an OpenAI `size` rounded
  to multiples of 16 within 4 MP, a ratio at about 1 MP, else the first input's ratio at about
  1 MP, else 1024x1024); FLUX 3 gets an aspect ratio of its enum (or `auto`) and a resolution
  class (`resolution` when given, else the class nearest an OpenAI `size`'s area, else `2k`
  for `quality: hd|high`, else `1k`).
- Strictness: a knob the model does not take is dropped and noted on the job (FLUX 3 answers
  422 to unknown fields); a value out of range is InvalidRequest (400) naming the field; a
  seed asked of a family without one is noted, never silently ignored.
- `grounding` (FLUX 3's web search; it sends the prompt to a search engine) is sent as false
  unless the request or the key (`meta.grounding: true`) enables it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest
from gateway.families import (
    FLUX2_MAX_PIXELS,
    FLUX2_MIN_SIDE,
    FLUX2_STEP,
    FLUX3_DEFAULT_RESOLUTION,
    FLUX3_RESOLUTIONS,
    FieldRule,
    ModelSpec,
    flux2_size,
    flux2_size_for_ratio,
    flux3_size,
    nearest_flux3_ratio,
    nearest_resolution,
)
from gateway.jobs import intake

if TYPE_CHECKING:  # orders calls `fit_inputs`
    from gateway.jobs.orders import Order

FLUX3_MIN_SIDE = 256  # each reference at least 256x256 (docs.bfl.ai/flux_3/flux3_image_overview)


def apply(order: Order, model: ModelSpec, *, size: Any = None, width: Any = None,
          height: Any = None, resolution: Any = None, quality: Any = None,
          seed_asked: bool = False, knobs: Mapping[str, Any] | None = None,
          grounding_default: bool = False) -> None:
    """Fit `order` (already parsed by its surface) to `model`'s family; see the module
    docstring. `knobs` are the model-specific fields the client sent (None values ignored).
    Raises InvalidRequest naming the field."""
    family = model.family
    order.family = family.name
    lo, hi = family.safety
    if order.safety_tolerance is not None and not lo <= order.safety_tolerance <= hi:
        raise InvalidRequest(
            f"Invalid safety_tolerance {order.safety_tolerance}: {model.id} takes {lo} to {hi}.",
            param="safety_tolerance", code="invalid_safety_tolerance")
    given = {k: v for k, v in (knobs or {}).items() if v is not None and v != ""}
    if family.name == "kontext":  # its surfaces parse its knobs as they always did
        return
    rules = model.fields
    taken: dict[str, Any] = {}
    for name, value in {**order.extra, **given}.items():
        rule = rules.get(name)
        if rule is None:
            shown = "".join(c for c in str(name)[:40] if c.isprintable())
            order.notes.append(f"{shown}: not a field of {model.id} ({family.label}); dropped")
            continue
        taken[name] = _checked(rule, value)
    order.extra = taken
    if order.prompt_upsampling and "prompt_upsampling" not in rules:
        order.prompt_upsampling = False
        order.notes.append(f"prompt_upsampling: not a field of {model.id} ({family.label}); "
                           "dropped" + (" (FLUX.2 upsamples unless disable_pup is true)"
                                        if family.name == "flux2" else ""))
    if seed_asked and not family.seed:
        order.notes.append(f"seed: {family.label} takes no seed; the result is not "
                           "reproducible by seed")
    if "grounding" in rules:
        order.extra["grounding"] = bool(taken.get("grounding", grounding_default))
    if family.size_control == "width_height":
        _flux2_size(order, size, width, height)
    elif family.size_control == "ratio_resolution":
        if width is not None or height is not None:
            order.notes.append(f"width/height: not fields of {model.id}; its size is "
                               "aspect_ratio + resolution")
        _flux3_size(order, size, resolution, quality)


def _checked(rule: FieldRule, value: Any) -> Any:
    param = rule.name
    if rule.kind == "bool":
        return intake.parse_bool(value, param=param)
    if rule.kind == "str":
        text = str(value)
        if rule.choices and text not in rule.choices:
            raise InvalidRequest(f"Invalid {param} {value!r}: use one of "
                                 f"{', '.join(rule.choices)}.", param=param)
        return text
    number: float = (intake.parse_int(value, param=param) if rule.kind == "int"
                     else intake.parse_float(value, param=param))
    if (rule.lo is not None and number < rule.lo) or (rule.hi is not None and number > rule.hi):
        raise InvalidRequest(f"Invalid {param} {value!r}: must be between {rule.lo:g} and "
                             f"{rule.hi:g}.", param=param, code=f"invalid_{param}")
    return number


def _dims(size: Any) -> tuple[int, int] | None:
    """`"1536x1024"` -> (1536, 1024); None for a ratio or a word."""
    text = str(size or "").strip().lower()
    if "x" not in text:
        return None
    w, _, h = text.partition("x")
    if not (w.strip().isdigit() and h.strip().isdigit()):
        return None
    return int(w), int(h)


def _flux2_size(order: Order, size: Any, width: Any, height: Any) -> None:
    if width is not None or height is not None:
        w = 1024 if width is None else intake.parse_int(width, param="width")
        h = 1024 if height is None else intake.parse_int(height, param="height")
        for param, value in (("width", w), ("height", h)):
            if value < FLUX2_MIN_SIDE:
                raise InvalidRequest(f"Invalid {param} {value}: at least {FLUX2_MIN_SIDE}.",
                                     param=param, code="invalid_size")
        if w * h > FLUX2_MAX_PIXELS:
            raise InvalidRequest(f"Invalid width {w} x height {h}: at most 4 megapixels "
                                 f"({FLUX2_MAX_PIXELS} pixels).", param="width",
                                 code="invalid_size")
        order.width, order.height = flux2_size(w, h)
        if (order.width, order.height) != (w, h):
            order.notes.append(f"size: {w}x{h} rounded to multiples of {FLUX2_STEP}: "
                               f"{order.width}x{order.height}")
        return
    dims = _dims(size)
    if dims is not None:
        w, h = dims
        if min(w, h) < FLUX2_MIN_SIDE:
            raise InvalidRequest(f"Invalid size {size!r}: each side at least {FLUX2_MIN_SIDE}.",
                                 param="size", code="invalid_size")
        order.width, order.height = flux2_size(w, h)
        if (order.width, order.height) != (w, h):
            order.notes.append(f"size: {w}x{h} asked; FLUX.2 makes multiples of {FLUX2_STEP} "
                               f"within 4 MP: {order.width}x{order.height}")
    elif order.aspect_ratio:
        rw, rh = order.aspect_ratio.split(":")
        order.width, order.height = flux2_size_for_ratio(float(rw) / float(rh))
    # else: decided by `fit_inputs` (the first input's ratio, else 1024x1024)


def _flux3_size(order: Order, size: Any, resolution: Any, quality: Any) -> None:
    dims = _dims(size)
    if resolution not in (None, ""):
        text = str(resolution).strip().lower()
        if text not in FLUX3_RESOLUTIONS:
            raise InvalidRequest(f"Invalid resolution {resolution!r}: use one of "
                                 f"{', '.join(FLUX3_RESOLUTIONS)}.", param="resolution",
                                 code="invalid_resolution")
        order.resolution = text
    elif dims is not None:
        order.resolution = nearest_resolution(dims[0] * dims[1])
    elif str(quality or "").strip().lower() in ("hd", "high"):
        order.resolution = "2k"
    else:
        order.resolution = FLUX3_DEFAULT_RESOLUTION
    if order.aspect_ratio:
        rw, rh = order.aspect_ratio.split(":")
        snapped = nearest_flux3_ratio(float(rw) / float(rh))
        if snapped != order.aspect_ratio:
            order.notes.append(f"aspect_ratio: {order.aspect_ratio} is not one of FLUX 3's; "
                               f"{snapped} was asked")
        order.aspect_ratio = snapped


def fit_inputs(order: Order, inputs: Sequence[tuple[int, int]]) -> None:
    """Settle the output size once the inputs' (width, height) are known: FLUX.2 without a
    size follows the first input's ratio at about 1 MP; FLUX 3's expected size follows its
    ratio (or `auto`: the first input's) and class."""
    first = inputs[0] if inputs else None
    if order.family == "flux3":
        for i, (w, h) in enumerate(inputs):
            if min(w, h) < FLUX3_MIN_SIDE:  # BFL refuses smaller references
                raise InvalidRequest(f"images[{i}]: {w}x{h} is smaller than FLUX 3 Image takes "
                                     f"({FLUX3_MIN_SIDE}x{FLUX3_MIN_SIDE} at least).",
                                     param="image", code="image_too_small")
    if order.family == "flux2" and order.width is None:
        ratio = first[0] / first[1] if first else 1.0
        order.width, order.height = flux2_size_for_ratio(ratio)
    elif order.family == "flux3":
        order.width, order.height = flux3_size(order.aspect_ratio,
                                               order.resolution or FLUX3_DEFAULT_RESOLUTION,
                                               first)


def wants_seed(value: Any) -> bool:
    """Whether a client really asked a seed (not absent, '' or -1 = random)."""
    if value is None or value == "":
        return False
    try:
        return not math.isclose(float(value), -1)
    except (TypeError, ValueError):
        return True
