"""The model families the worker serves: detection from `model_index.json` and size rules.

Pure functions, no torch: the CLI can refuse a wrong directory before the heavy imports.

- Kontext [dev] (`FluxKontextPipeline`): the output is the Kontext ~1 MP bucket nearest the
  asked ratio (diffusers' `PREFERRED_KONTEXT_RESOLUTIONS`, `adapters/buckets.py`); one input
  image; default 28 steps, guidance 2.5 (the model card's value).
- FLUX.2 [dev] (`Flux2Pipeline`) and FLUX.2 [klein] (`Flux2KleinPipeline`): width and height
  are floored to multiples of 16, at least 64 and at most 4 MP (BFL's FLUX.2 rules); several
  reference images (each at least 64 px a side: diffusers refuses smaller ones). dev: 50 steps,
  guidance 4; klein (step-distilled): 4 steps, guidance ignored by the pipeline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from adapters.buckets import bucket_for_ratio


class ModelDirError(Exception):
    """The model directory is missing, unreadable, or holds a pipeline the worker does not run."""


@dataclass(frozen=True, slots=True)
class Family:
    """What the worker needs to know about one pipeline class."""

    name: str  # "kontext" | "flux2" | "flux2-klein"
    pipeline_class: str  # diffusers class name in model_index.json
    model: str  # the gateway's model id this pipeline serves
    max_input_images: int
    default_steps: int
    default_guidance: float
    min_input_side: int  # an input smaller than this on a side is refused

    def output_size(self, width: int | None, height: int | None,
                    first_input: tuple[int, int] | None = None) -> tuple[int, int]:
        """The size this family renders for an asked size (or the first input's ratio)."""
        if self.name == "kontext":
            if width and height:
                return bucket_for_ratio(width / height)
            if first_input:
                return bucket_for_ratio(first_input[0] / first_input[1])
            return 1024, 1024
        if not (width and height):
            if first_input:  # the input's ratio at about 1 MP
                ratio = first_input[0] / first_input[1]
                width, height = round(1024 * math.sqrt(ratio)), round(1024 / math.sqrt(ratio))
            else:
                width, height = 1024, 1024
        scale = min(1.0, math.sqrt(FLUX2_MAX_PIXELS / (width * height)))
        w, h = max(64, int(width * scale) // 16 * 16), max(64, int(height * scale) // 16 * 16)
        return w, h


FLUX2_MAX_PIXELS = 4 * 1024 * 1024


def capped(size: tuple[int, int], max_area: int | None) -> tuple[int, int]:
    """`size` scaled down (same ratio, multiples of 16, at least 64 px a side) to at most
    `max_area` pixels: the worker's `--max-area`, for small GPUs and for tests."""
    width, height = size
    if not max_area or width * height <= max_area:
        return size
    scale = math.sqrt(max_area / (width * height))
    return max(64, int(width * scale) // 16 * 16), max(64, int(height * scale) // 16 * 16)

FAMILIES: dict[str, Family] = {f.pipeline_class: f for f in (
    Family("kontext", "FluxKontextPipeline", "flux-kontext-dev", 1, 28, 2.5, 16),
    Family("flux2", "Flux2Pipeline", "flux-2-dev", 10, 50, 4.0, 64),
    Family("flux2-klein", "Flux2KleinPipeline", "flux-2-klein-4b", 4, 4, 1.0, 64),
)}


def detect(model_dir: Path) -> Family:
    """The family of the diffusers pipeline saved in `model_dir`; raises ModelDirError."""
    index = model_dir / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelDirError(f"{model_dir}: no model_index.json (point --model-path at a "
                            "diffusers pipeline folder, see the README)") from exc
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{index}: {exc}") from exc
    name = data.get("_class_name") if isinstance(data, dict) else None
    family = FAMILIES.get(str(name))
    if family is None:
        known = ", ".join(FAMILIES)
        raise ModelDirError(f"{index}: pipeline {name!r} is not one the worker runs ({known})")
    return family
