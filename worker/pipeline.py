"""Loading a diffusers pipeline from a local folder and running one batch of jobs on it.

Contract:
- `load(model_dir, family, device)` reads weights from `model_dir` only (`local_files_only`,
  `HF_HUB_OFFLINE=1` set before diffusers is imported): nothing is downloaded at run time.
  bf16 on a GPU, fp32 on the CPU (bf16 matmuls on a CPU are slow and not deterministic
  across thread counts).
- `Runner.run(batch)` makes one image per job of a batch of compatible jobs (same size, steps,
  guidance and inputs-or-not), in one pipeline call. Each job has its own
  `torch.Generator(device).manual_seed(seed)`: the same seed gives the same bytes on the same
  device (and batch size). Batched, a job draws the same noise (diffusers draws each latent
  from its own generator) but the batch's matmuls add up in another order, so its image can
  differ from the one made alone in the last bits: batching is off by default
  (`--max-batch 1`). Progress is reported per denoising step through the pipeline's
  `callback_on_step_end`; a batch whose jobs are all canceled stops at the next step
  (`Canceled`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from worker.families import Family


class Canceled(Exception):
    """Every job of the batch was canceled; raised out of the pipeline between two steps."""


@dataclass(slots=True)
class Work:
    """One image to make, already validated and sized by the job API."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    images: list[Image.Image] = field(default_factory=list)
    output_format: str = "png"

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one pipeline call (inputs are never batched)."""
        if self.images:
            return ("inputs", id(self))
        return ("text", self.width, self.height, self.steps, self.guidance)


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@dataclass(slots=True)
class Loaded:
    """A loaded pipeline and where it runs."""

    pipe: Any
    family: Family
    device: str
    dtype: str


def load(model_dir: Path, family: Family, device: str) -> Loaded:
    """Load the pipeline in `model_dir` onto `device`; raises RuntimeError for a device torch
    cannot use, and diffusers' own errors for broken weights."""
    _offline()
    import diffusers
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: torch sees no CUDA device on this machine")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    cls = getattr(diffusers, family.pipeline_class)
    pipe = cls.from_pretrained(str(model_dir), torch_dtype=dtype, local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return Loaded(pipe, family, device, str(dtype).removeprefix("torch."))


def encode(image: Image.Image, output_format: str) -> tuple[bytes, str]:
    """The image as PNG/JPEG/WebP bytes and its MIME type."""
    buf = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=95)
        return buf.getvalue(), "image/jpeg"
    if output_format == "webp":
        image.save(buf, "WEBP", quality=95)
        return buf.getvalue(), "image/webp"
    image.save(buf, "PNG")
    return buf.getvalue(), "image/png"


class Runner:
    """Runs batches on one loaded pipeline (one batch at a time: call from one thread)."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def run(self, batch: Sequence[Work], on_step: Callable[[int], None],
            canceled: Callable[[], bool]) -> list[Image.Image]:
        """One image per job of `batch` (all of one `batch_key`); `on_step(n)` after step n
        (1-based); raises Canceled when `canceled()` answers true after a step."""
        import torch

        first = batch[0]
        loaded = self.loaded
        gen_device = "cpu" if loaded.device == "cpu" else loaded.device

        def callback(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1)
            if canceled():
                raise Canceled
            return kwargs

        args: dict[str, Any] = {
            "prompt": [w.prompt for w in batch],
            "width": first.width, "height": first.height,
            "num_inference_steps": first.steps, "guidance_scale": first.guidance,
            "generator": [torch.Generator(gen_device).manual_seed(w.seed) for w in batch],
            "callback_on_step_end": callback,
        }
        if first.images:
            args["image"] = first.images[0] if loaded.family.name == "kontext" \
                else list(first.images)
        if loaded.family.name == "kontext":
            # the output follows width/height only with max_area = their product (else it is
            # rescaled to 1 MP); the input is resized to its own ratio's bucket (the default)
            args["max_area"] = first.width * first.height
        with torch.inference_mode():
            out = loaded.pipe(**args)
        images: list[Image.Image] = list(out.images)
        return images
