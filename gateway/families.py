"""The model catalogue as data: model families (FLUX.1 Kontext, FLUX.2, FLUX 3 Image), the models
of each, and the size, field and price rules every surface and upstream applies to them.

A family declares how many references it takes, how size is asked (`ratio`: Kontext's aspect
ratio; `width_height`: FLUX.2's pixel size; `ratio_resolution`: FLUX 3's ratio plus
resolution class), the knobs it takes and their ranges, whether it has a seed, its default
output format, and its price formula. A model belongs to one family and may narrow it (klein
takes 4 references, flex takes `steps` and `guidance`). Adding a model that BFL ships next
month is one `ModelEntry` (in code, or `catalogue:` in the config: see `Catalogue.extended`);
each adapter spells the fields for its upstream by family name (`UpstreamRequest.family`).

Facts, as of 2026-12 (shared/reference/upstreams-2026-12.md §1.1, with its sources):
- FLUX.2 on BFL (docs.bfl.ml/guides/prompting_editing_overview; help.bfl.ai/articles/3531680306;
  docs.bfl.ai/quick_start/pricing.md): `input_image`, `input_image_2..8` (klein: 4), `width`/
  `height` multiples of 16, min 64, at most 4 MP; `seed`; `safety_tolerance` 0..5; output
  jpeg|png (default jpeg); `disable_pup`; flex `steps` 1..50, `guidance` 1.5..10. Priced per
  megapixel, INPUT megapixels included: pro 3 c the first MP + 1.5 c each further MP, max 7 + 3,
  flex 5 + 5, klein 4B 1.4 + 0.1, klein 9B 1.5 + 0.2 ("edit from $0.045": 1 MP out + 1 MP in).
- FLUX 3 Image (docs.bfl.ai/flux_3/flux3_image_overview, .../flux3_image_generate): `images`
  1..10 (each >= 256x256, <= 16 MP); `aspect_ratio` auto + 15 ratios 21:9..9:21; `resolution`
  768sq|1k|1.5k|2k|4k; `grounding` (web search: ON at BFL by default, OFF here unless the key or
  the request enables it); `safety_tolerance` 0..4; no seed, no width/height; unknown fields
  are answered 422. Priced per resolution class: about $0.048 at 1k (Vercel's listing), 768sq
  $0.0328 and 4k $0.4856 (APIMart, third party); 1.5k and 2k are UNCONFIRMED (set between).
- UNCONFIRMED (M): the exact 15 FLUX 3 ratios (the docs say "auto + 15 ratios 21:9 .. 9:21";
  the symmetric set below is ours) and the pixel size of each resolution class (taken as the
  class's square area at the asked ratio, `768sq` always square): they decide only what the
  sandbox renders and what a quote assumes before the real size is known.
- A megapixel is 2^20 pixels (1024x1024 is "1 MP" on BFL's price list) and the billed count
  (output plus inputs) is rounded up to a whole megapixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

SizeControl = Literal["ratio", "width_height", "ratio_resolution"]
FieldKind = Literal["int", "float", "bool", "str"]
Format = Literal["png", "jpeg", "webp"]

MEGAPIXEL = 1 << 20  # BFL's megapixel: 1024 x 1024
FLUX2_MAX_PIXELS = 4 * MEGAPIXEL
FLUX2_STEP = 16
FLUX2_MIN_SIDE = 64
FLUX3_RATIOS = ("21:9", "2:1", "16:9", "3:2", "7:5", "4:3", "5:4", "1:1", "4:5", "3:4", "5:7",
                "2:3", "9:16", "1:2", "9:21")
#: resolution class -> the side of its square area in pixels (see the module docstring)
FLUX3_RESOLUTIONS: dict[str, int] = {"768sq": 768, "1k": 1024, "1.5k": 1536, "2k": 2048,
                                     "4k": 4096}
FLUX3_DEFAULT_RESOLUTION = "1k"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """A knob a family takes beyond prompt, images, size, seed and format: its kind and range
    (`lo`..`hi` for numbers, `choices` for text)."""

    name: str
    kind: FieldKind
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class PriceFormula:
    """A default price in USD: flat `per_image`, or `first_mp` + `further_mp` for each further
    megapixel (inputs counted), or one price per resolution class (`by_resolution`)."""

    per_image: str | None = None
    first_mp: str | None = None
    further_mp: str | None = None
    by_resolution: tuple[tuple[str, str], ...] = ()

    def as_config(self) -> dict[str, str] | str:
        """The formula as `billing.prices` spells it (see billing/pricing.py)."""
        if self.first_mp is not None:
            return {"per_image": "0", "first_megapixel": self.first_mp,
                    "further_megapixel": self.further_mp or "0"}
        if self.by_resolution:
            return {"per_image": dict(self.by_resolution)[FLUX3_DEFAULT_RESOLUTION],
                    **dict(self.by_resolution)}
        return self.per_image or "0"


@dataclass(frozen=True, slots=True)
class Family:
    """One model family (see the module docstring)."""

    name: str
    label: str
    size_control: SizeControl
    max_refs: int
    seed: bool
    default_format: Format
    formats: tuple[Format, ...]
    safety: tuple[int, int]
    fields: tuple[FieldRule, ...] = ()
    result_ttl: int = 600  # seconds an upstream result URL lives (download at once anyway)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model: its family, names, and what it changes of the family."""

    id: str
    family: str
    description: str
    aliases: tuple[str, ...] = ()
    price: PriceFormula = field(default_factory=PriceFormula)
    max_refs: int | None = None  # None: the family's
    fields: tuple[FieldRule, ...] = ()  # taken besides the family's
    bfl_route: bool = True  # BFL sells it (served at /v1/{id} BFL-style); dev is Replicate's


FAMILIES: dict[str, Family] = {
    "kontext": Family("kontext", "FLUX.1 Kontext", "ratio", 4, True, "png", ("png", "jpeg", "webp"),
                      (0, 6), (FieldRule("guidance", "float"), FieldRule("steps", "int"))),
    "flux2": Family("flux2", "FLUX.2", "width_height", 8, True, "jpeg", ("jpeg", "png", "webp"),
                    (0, 5), (FieldRule("disable_pup", "bool"),)),
    "flux3": Family("flux3", "FLUX 3 Image", "ratio_resolution", 10, False, "jpeg",
                    ("jpeg", "png", "webp"), (0, 4),
                    (FieldRule("grounding", "bool"), FieldRule("version", "str")),
                    result_ttl=3600),
}

_FLEX = (FieldRule("steps", "int", 1, 50), FieldRule("guidance", "float", 1.5, 10),
         FieldRule("prompt_upsampling", "bool"))


def _mp(first: str, further: str) -> PriceFormula:
    return PriceFormula(first_mp=first, further_mp=further)


MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("flux-kontext-pro", "kontext", "FLUX.1 Kontext [pro]: generation and editing",
               ("black-forest-labs/flux-kontext-pro", "fal-ai/flux-pro/kontext", "flux-kontext",
                "flux.1-kontext-pro", "flux-1-kontext-pro"), PriceFormula("0.04")),
    ModelEntry("flux-kontext-max", "kontext", "FLUX.1 Kontext [max]: highest quality and "
               "typography", ("black-forest-labs/flux-kontext-max", "fal-ai/flux-pro/kontext/max",
                              "flux.1-kontext-max", "flux-1-kontext-max"), PriceFormula("0.08")),
    ModelEntry("flux-kontext-dev", "kontext", "FLUX.1 Kontext [dev]: open weights",
               ("black-forest-labs/flux-kontext-dev", "fal-ai/flux-kontext/dev",
                "flux.1-kontext-dev", "flux-1-kontext-dev"), PriceFormula("0.025")),
    ModelEntry("flux-2-pro", "flux2", "FLUX.2 [pro]: generation and editing with up to 8 "
               "references, up to 4 MP", ("black-forest-labs/flux-2-pro", "fal-ai/flux-2-pro",
                                          "flux.2-pro"), _mp("0.03", "0.015")),
    ModelEntry("flux-2-pro-preview", "flux2", "FLUX.2 [pro] preview (tracks the latest weights)",
               ("flux.2-pro-preview",), _mp("0.03", "0.015")),
    ModelEntry("flux-2-max", "flux2", "FLUX.2 [max]: highest quality",
               ("black-forest-labs/flux-2-max", "flux.2-max"), _mp("0.07", "0.03")),
    ModelEntry("flux-2-flex", "flux2", "FLUX.2 [flex]: steps and guidance",
               ("black-forest-labs/flux-2-flex", "fal-ai/flux-2-flex", "flux.2-flex"),
               _mp("0.05", "0.05"), fields=_FLEX),
    ModelEntry("flux-2-klein-4b", "flux2", "FLUX.2 [klein] 4B: fast, up to 4 references",
               ("black-forest-labs/flux-2-klein-4b", "fal-ai/flux-2/klein/4b", "flux.2-klein-4b"),
               _mp("0.014", "0.001"), max_refs=4),
    ModelEntry("flux-2-klein-9b", "flux2", "FLUX.2 [klein] 9B: up to 4 references",
               ("black-forest-labs/flux-2-klein-9b", "flux.2-klein-9b"), _mp("0.015", "0.002"),
               max_refs=4),
    ModelEntry("flux-2-dev", "flux2", "FLUX.2 [dev]: open weights (Replicate, sandbox)",
               ("black-forest-labs/flux-2-dev", "flux.2-dev"), _mp("0.025", "0.0125"),
               fields=(FieldRule("go_fast", "bool"), FieldRule("guidance", "float", 0, 10),
                       FieldRule("steps", "int", 1, 50)), bfl_route=False),
    ModelEntry("flux-3-image", "flux3", "FLUX 3 Image: up to 10 references, up to 4K, "
               "optional web grounding", ("black-forest-labs/flux-3-image", "flux-3",
                                          "blackforestlabs/flux-3/text-to-image"),
               PriceFormula(by_resolution=(("768sq", "0.0328"), ("1k", "0.048"),
                                           ("1.5k", "0.096"), ("2k", "0.144"),
                                           ("4k", "0.4856")))),
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model resolved against its family: everything intake and pricing need."""

    entry: ModelEntry
    family: Family

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def max_refs(self) -> int:
        return self.entry.max_refs if self.entry.max_refs is not None else self.family.max_refs

    @property
    def fields(self) -> dict[str, FieldRule]:
        return {f.name: f for f in (*self.family.fields, *self.entry.fields)}

    def capabilities(self) -> dict[str, Any]:
        """What `/v1/models` shows of the model."""
        fam = self.family
        caps: dict[str, Any] = {
            "family": fam.name, "family_label": fam.label, "max_input_images": self.max_refs,
            "size_control": fam.size_control, "seed": fam.seed,
            "output_formats": list(fam.formats), "default_output_format": fam.default_format,
            "safety_tolerance": list(fam.safety),
            "fields": {name: _rule_text(rule) for name, rule in self.fields.items()},
        }
        if fam.size_control == "width_height":
            caps["max_megapixels"] = FLUX2_MAX_PIXELS / MEGAPIXEL
            caps["size_multiple"] = FLUX2_STEP
        if fam.size_control == "ratio_resolution":
            caps["aspect_ratios"] = ["auto", *FLUX3_RATIOS]
            caps["resolutions"] = list(FLUX3_RESOLUTIONS)
        return caps


def _rule_text(rule: FieldRule) -> dict[str, Any]:
    out: dict[str, Any] = {"type": rule.kind}
    if rule.lo is not None:
        out["minimum"] = rule.lo
    if rule.hi is not None:
        out["maximum"] = rule.hi
    if rule.choices:
        out["enum"] = list(rule.choices)
    return out


class Catalogue:
    """The models served: the built-in entries plus the operator's (`Settings.catalogue`)."""

    def __init__(self, models: Iterable[ModelEntry] = MODELS,
                 families: Mapping[str, Family] | None = None) -> None:
        self.families = dict(families or FAMILIES)
        self.models: dict[str, ModelSpec] = {}
        for entry in models:
            self.models[entry.id] = ModelSpec(entry, self.families[entry.family])

    @classmethod
    def extended(cls, extra: Mapping[str, Mapping[str, Any]] | None) -> Catalogue:
        """The built-in catalogue plus `extra` (model id -> {family, description?, aliases?,
        max_refs?, bfl_route?, price?: {per_image | first_mp, further_mp | <class>: price}});
        raises ValueError for an unknown family or a malformed entry."""
        entries = {m.id: m for m in MODELS}
        for model_id, spec in (extra or {}).items():
            family = str(spec.get("family", ""))
            if family not in FAMILIES:
                raise ValueError(f"catalogue.{model_id}.family must be one of "
                                 f"{', '.join(FAMILIES)}")
            unknown = set(spec) - {"family", "description", "aliases", "max_refs", "price",
                                   "bfl_route"}
            if unknown:
                raise ValueError(f"catalogue.{model_id}: unknown keys {sorted(unknown)}")
            base = entries.get(model_id)
            entries[model_id] = replace(
                base or ModelEntry(model_id, family, ""), family=family,
                description=str(spec.get("description", base.description if base else model_id)),
                aliases=tuple(str(a) for a in spec.get("aliases", base.aliases if base else ())),
                max_refs=int(spec["max_refs"]) if "max_refs" in spec else (
                    base.max_refs if base else None),
                bfl_route=bool(spec.get("bfl_route", base.bfl_route if base else True)),
                price=_price(model_id, spec["price"]) if "price" in spec else (
                    base.price if base else PriceFormula("0")))
        return cls(entries.values())

    def get(self, model_id: str) -> ModelSpec | None:
        return self.models.get(model_id)

    def find(self, name: str | None) -> ModelSpec | None:
        """The model named `name` (its id or one of its aliases, any case), if any."""
        key = (name or "").strip().lower()
        return next((m for m in self.models.values()
                     if key == m.id.lower() or key in (a.lower() for a in m.entry.aliases)),
                    None)

    def spec(self, model_id: str) -> ModelSpec:
        """The model's spec; an unknown id is treated as a Kontext model (what the gateway
        served before families existed)."""
        found = self.models.get(model_id)
        if found is not None:
            return found
        return ModelSpec(ModelEntry(model_id, "kontext", model_id), self.families["kontext"])

    def family_of(self, model_id: str) -> str:
        return self.spec(model_id).family.name

    def default_prices(self) -> dict[str, str | dict[str, str]]:
        """Each model's default price, as `billing.prices` spells it."""
        return {m.id: m.entry.price.as_config() for m in self.models.values()}


def _price(model_id: str, spec: Any) -> PriceFormula:
    if not isinstance(spec, Mapping):
        return PriceFormula(per_image=str(spec))
    if "first_mp" in spec:
        return PriceFormula(first_mp=str(spec["first_mp"]),
                            further_mp=str(spec.get("further_mp", "0")))
    classes = {k: str(v) for k, v in spec.items() if k in FLUX3_RESOLUTIONS}
    if classes:
        return PriceFormula(by_resolution=tuple(classes.items()))
    if "per_image" in spec:
        return PriceFormula(per_image=str(spec["per_image"]))
    raise ValueError(f"catalogue.{model_id}.price: use per_image, first_mp/further_mp or "
                     "resolution classes")


# -- size arithmetic (pure) ----------------------------------------------------------------------
def round16(value: float) -> int:
    """The nearest multiple of 16 (halves up), at least 16."""
    return max(FLUX2_STEP, math.floor(value / FLUX2_STEP + 0.5) * FLUX2_STEP)


def flux2_size(width: float, height: float) -> tuple[int, int]:
    """`width` x `height` rounded to multiples of 16 and scaled down (ratio kept) to fit 4 MP."""
    w, h = round16(width), round16(height)
    if w * h > FLUX2_MAX_PIXELS:
        scale = math.sqrt(FLUX2_MAX_PIXELS / (width * height))
        w, h = int(width * scale) // FLUX2_STEP * FLUX2_STEP, \
            int(height * scale) // FLUX2_STEP * FLUX2_STEP
    return w, h


def flux2_size_for_ratio(ratio: float, pixels: int = MEGAPIXEL) -> tuple[int, int]:
    """About `pixels` at `ratio` (width/height), in multiples of 16."""
    return flux2_size(math.sqrt(pixels * ratio), math.sqrt(pixels / ratio))


def flux3_size(aspect_ratio: str | None, resolution: str,
               first_input: tuple[int, int] | None = None) -> tuple[int, int]:
    """The pixel size a FLUX 3 job of `aspect_ratio` (None/"auto": the first input's ratio,
    else 1:1) and `resolution` class is expected to have (see the module docstring)."""
    side = FLUX3_RESOLUTIONS.get(resolution, 1024)
    if resolution == "768sq":
        return side, side
    if aspect_ratio and aspect_ratio != "auto":
        w, h = aspect_ratio.split(":")
        ratio = float(w) / float(h)
    elif first_input:
        ratio = first_input[0] / first_input[1]
    else:
        ratio = 1.0
    return round16(side * math.sqrt(ratio)), round16(side / math.sqrt(ratio))


def nearest_flux3_ratio(ratio: float) -> str:
    return min(FLUX3_RATIOS, key=lambda r: abs(math.log(_ratio(r)) - math.log(ratio)))


def nearest_resolution(pixels: float) -> str:
    """The resolution class whose area is nearest `pixels` (log distance); 768sq only for a
    square ask is decided by the caller."""
    classes = [c for c in FLUX3_RESOLUTIONS if c != "768sq"]
    return min(classes, key=lambda c: abs(math.log(FLUX3_RESOLUTIONS[c] ** 2) - math.log(pixels)))


def _ratio(text: str) -> float:
    w, h = text.split(":")
    return float(w) / float(h)


def megapixels(width: int, height: int) -> Decimal:
    """Pixels in BFL's megapixels (2^20), exact, to 4 places (what answers show)."""
    return (Decimal(width * height) / MEGAPIXEL).quantize(Decimal("0.0001"))
