"""Orders: one client request for `n` images, normalised, turned into JobSpecs and placed.

Every public surface (OpenAI images and chat, BFL-style, Replicate-style) fills an `Order`
with already-parsed values and calls `OrderDesk.place`; the desk fetches and validates input
images (before any upstream call or charge), stores them, builds one JobSpec per image and
hands them to the JobService.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from adapters.base import InputImage
from gateway.errors import InvalidRequest
from gateway.images.budget import PixelBudget, header_pixels
from gateway.images.fetch import ImageFetcher
from gateway.images.masks import load_mask
from gateway.images.validate import animation, sniff, validate_image
from gateway.jobs import family_rules
from gateway.jobs.intake import MAX_SEED
from gateway.jobs.model import JobSpec, OutputFormat
from gateway.jobs.service import JobService
from gateway.jobs.tables import JobRow
from gateway.settings import LimitSettings
from gateway.storable import refuse_unstorable
from gateway.storage.files import FileStore
from gateway.storage.tables import FileRow


@dataclass(slots=True)
class Order:
    """What a client asked for, parsed. `image_refs` are (param, URL/data URL/base64);
    `image_blobs` are (param, bytes) from uploads. `mask` applies to the first input image
    (see `OrderDesk.place`); `input_ratio` bounds every input's width/height when set."""

    model: str
    prompt: str
    seed: int
    n: int = 1
    operation: Literal["generate", "edit"] = "generate"
    aspect_ratio: str | None = None
    output_format: OutputFormat = "png"
    quality: int | None = None  # JPEG/WebP quality 0..100 (intake.parse_quality)
    safety_tolerance: int | None = None
    prompt_upsampling: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    image_refs: list[tuple[str, str]] = field(default_factory=list)
    image_blobs: list[tuple[str, bytes]] = field(default_factory=list)
    mask: bytes | None = None
    surface: str = "openai.images"
    webhook_url: str | None = None  # from WebhookService.accept (already checked)
    webhook_secret: str | None = None  # sealed by WebhookService.accept
    input_ratio: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    echo: dict[str, Any] | None = None  # JobSpec.echo (the Responses API)
    # the model family's size control (gateway/jobs/family_rules.py fills them)
    family: str = "kontext"
    width: int | None = None
    height: int | None = None
    resolution: str | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    key_id: str
    mode: Literal["live", "test"]
    price_group: str | None
    provenance: Literal["off", "metadata", "signed"] | None = None  # the key's own mode


class OrderDesk:
    """Validates inputs, stores them and creates the jobs of an order."""

    def __init__(self, *, jobs: JobService, files: FileStore, fetcher: ImageFetcher,
                 limits: LimitSettings, budget: PixelBudget | None = None) -> None:
        self.jobs = jobs
        self.files = files
        self.fetcher = fetcher
        self.limits = limits
        self.budget = budget or PixelBudget(limits.decode_pixel_budget, limits.decode_wait)

    async def load_image(self, param: str, data: bytes,
                         ratio: tuple[float, float] | None = None,
                         notes: list[str] | None = None) -> InputImage:
        """Validate uploaded or fetched bytes (raises 400/413/415 naming `param`); `ratio`
        bounds the upright width/height; a re-encoding (EXIF rotation, GIF...) is noted in
        `notes`."""
        lo, hi = ratio if ratio is not None else (None, None)
        async with self.budget.admit(header_pixels(data)):  # bounded memory: see budget.py
            return await anyio.to_thread.run_sync(lambda: validate_image(
                data, param=param, max_bytes=self.limits.max_image_bytes,
                max_pixels=self.limits.max_image_pixels, min_ratio=lo, max_ratio=hi,
                notes=notes))

    def check_image_count(self, count: int, param: str = "image",
                          model: str | None = None) -> None:
        """Raise InvalidRequest (`too_many_images`) above the per-request cap: the larger of
        `limits.max_input_images` and the references `model` takes (FLUX.2: 8, FLUX 3: 10)."""
        cap = self.limits.max_input_images
        found = self.jobs.catalogue.find(model) if model is not None else None
        if found is not None:
            cap = max(cap, found.max_refs)
        if count > cap:
            raise InvalidRequest(f"{param}: too many input images: {count}; at most "
                                 f"{cap} per request.", param=param, code="too_many_images")

    async def inputs(self, order: Order) -> list[InputImage]:
        """Every input image of the order, fetched and validated, in order. An animated one
        is used as its first frame, and the order's `notes` say so."""
        self.check_image_count(len(order.image_refs) + len(order.image_blobs), model=order.model)
        blobs = list(order.image_blobs)
        if order.image_refs:  # fetched at once, not one after another (chat headers wait)
            try:
                async with asyncio.TaskGroup() as group:
                    fetches = [group.create_task(self.fetcher.load(ref, param=param))
                               for param, ref in order.image_refs]
            except BaseExceptionGroup as group_error:  # the first refusal, as a plain error
                raise group_error.exceptions[0] from None
            blobs += [(param, task.result())
                      for (param, _), task in zip(order.image_refs, fetches, strict=True)]
        images = []
        for param, data in blobs:
            images.append(await self.load_image(param, data, order.input_ratio, order.notes))
            fmt = await anyio.to_thread.run_sync(animation, data)
            if fmt is not None:  # kept, as the upstreams would take it, but said
                order.notes.append(f"{param}: an animated {'APNG' if fmt == 'PNG' else fmt} "
                                   "image; only its first frame was used")
        return images

    def check_mask_slots(self, customer: Customer, model: str, count: int) -> None:
        """Raise InvalidRequest (`mask_with_stitching`) when no channel that could serve
        `model` for this customer takes `count` input images: they would be stitched into one
        image, where the mask (drawn on the first image) has no defined place."""
        router = self.jobs.router
        channels = ([router.test_channel] if customer.mode == "test"
                    else [c for c in router.channels if c.serves(model)])
        entry = self.jobs.catalogue.spec(model)
        slots = max((min(c.adapter.capabilities.inputs_for(entry.family.name), entry.max_refs)
                     for c in channels if c is not None), default=count)
        if slots < count:
            raise InvalidRequest(
                f"mask: the channels for {model} take at most {slots} input image(s), so the "
                f"{count} images would be stitched into one, and a mask cannot be placed on a "
                "stitched result. Send the image to edit alone with its mask, or no mask.",
                param="mask", code="mask_with_stitching")

    def check_prompt_length(self, order: Order) -> None:
        """Raise InvalidRequest (`string_above_max_length`, naming `prompt`) when the prompt
        is longer than `limits.max_prompt_chars` allows for the order's API family."""
        limit = self.limits.max_prompt_chars.for_surface(order.surface)
        if len(order.prompt) > limit:
            raise InvalidRequest(
                f"Invalid 'prompt': string too long. Expected a string with maximum length "
                f"{limit}, but got a string with length {len(order.prompt)} instead.",
                param="prompt", code="string_above_max_length")

    async def store_mask(self, customer: Customer, mask: bytes,
                         images: list[InputImage]) -> FileRow:
        """Validate `mask` against the first (upright) input image and store its bytes;
        answers its file row, recorded with the job. Raises 400 (`mask_size_mismatch`, no
        image), 413 or 415 naming `mask`."""
        if not images:
            raise InvalidRequest("mask: a mask needs an input image to apply to.",
                                 param="mask", code="mask_without_image")
        size = (images[0].width, images[0].height)
        async with self.budget.admit(header_pixels(mask)):
            await anyio.to_thread.run_sync(lambda: load_mask(
                mask, image_size=size, max_bytes=self.limits.max_image_bytes,
                max_pixels=self.limits.max_image_pixels).close())
        fmt = sniff(mask) or "PNG"
        return await self.files.stage(mask, f"image/{fmt.lower()}", kind="mask",
                                      key_id=customer.key_id, size=size)

    async def place(self, customer: Customer, order: Order) -> list[JobRow]:
        """`prepare` the order, then create its jobs (reserving their price); raises
        InsufficientFunds when the balance is short."""
        specs, files = await self.prepare(customer, order)
        return await self.jobs.create(specs, files=files)

    async def prepare(self, customer: Customer, order: Order,
                      ) -> tuple[list[JobSpec], list[FileRow]]:
        """The order's job specs, with every input fetched, validated and its bytes stored,
        and the input files' rows, which `JobService.create` records with the jobs; raises
        InvalidRequest and friends (nothing is created or charged).

        A mask is validated against the first input image and stored (`kind="mask"`); the
        job service composites each result with that input (see `JobService._store`)."""
        refuse_unstorable(order.prompt, "prompt")  # NUL & co (both databases alike)
        refuse_unstorable(order.extra)
        self.check_prompt_length(order)
        if not order.prompt.strip():
            raise InvalidRequest("prompt must not be empty (image URLs alone are not a prompt).",
                                 param="prompt", code="invalid_prompt")
        images = await self.inputs(order)
        family_rules.fit_inputs(order, [(i.width, i.height) for i in images])
        files = []
        mask_id = None
        if order.mask is not None and len(images) > 1:
            self.check_mask_slots(customer, order.model, len(images))
        if order.mask is not None:
            files.append(await self.store_mask(customer, order.mask, images))
            mask_id = files[-1].id
        file_ids = []
        for image in images:
            files.append(await self.files.stage(image.data, image.mime, kind="input",
                                                key_id=customer.key_id,
                                                size=(image.width, image.height)))
            file_ids.append(files[-1].id)
        batch_id = f"batch_{secrets.token_hex(8)}"
        specs = [
            JobSpec(key_id=customer.key_id, key_mode=customer.mode,
                    price_group=customer.price_group, provenance=customer.provenance,
                    surface=order.surface, batch_id=batch_id,
                    model=order.model, operation=order.operation, prompt=order.prompt,
                    input_file_ids=file_ids, mask_file_id=mask_id,
                    aspect_ratio=order.aspect_ratio, notes=list(order.notes),
                    seed=(order.seed + i) % (MAX_SEED + 1), output_format=order.output_format,
                    quality=order.quality,
                    safety_tolerance=order.safety_tolerance,
                    prompt_upsampling=order.prompt_upsampling, extra=dict(order.extra),
                    webhook_url=order.webhook_url, webhook_secret=order.webhook_secret,
                    echo=order.echo,
                    family=order.family, width=order.width, height=order.height,
                    resolution=order.resolution,
                    input_pixels=sum(i.width * i.height for i in images))
            for i in range(order.n)
        ]
        return specs, files
