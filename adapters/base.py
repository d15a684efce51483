"""The adapter contract: what every upstream file in `adapters/` implements, and its types.

An adapter turns one `UpstreamRequest` into a job at one upstream and reports on it. It knows
nothing of HTTP servers, billing or the database: it receives plain data and a shared
`httpx.AsyncClient`, and answers plain data. The exception tree is:

    AdapterError                      base; `retryable` and `accepted` tell the caller what to do
    ├── UpstreamRejected              the upstream refused the job; it was NOT accepted (safe to
    │   │                             fail over): 4xx validation, 429, 5xx on submit, refused
    │   │                             connection
    │   └── UpstreamAuthError         401/402/403: the channel's credentials or credit are bad;
    │                                 the channel must be disabled until an admin re-enables it
    ├── UpstreamAmbiguous             the submit may or may not have been accepted (a timeout
    │                                 after the request was sent); never re-submit
    └── UpstreamUnavailable           poll/download could not reach the upstream (retry later)

A job that the upstream accepted and then failed is not an exception: `poll()` answers an
`UpstreamJob` whose `state` is `failed` or `moderated`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

OutputFormat = Literal["png", "jpeg", "webp"]
Operation = Literal["generate", "edit"]


class AdapterError(Exception):
    """Base of every error an adapter raises."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        if retryable is not None:  # per-instance override of the class default
            self.retryable = retryable


class UpstreamRejected(AdapterError):
    """The upstream did not accept the job (nothing was started, nothing will be billed).

    `retryable` is true for 429/5xx/connection errors: another channel may take the job.
    """


class UpstreamAuthError(UpstreamRejected):
    """401/402/403: bad credentials, no credit, or no access; disable the channel."""


class UpstreamAmbiguous(AdapterError):
    """The submit was sent but its outcome is unknown; the caller must not re-submit."""


class UpstreamUnavailable(AdapterError):
    """A poll, cancel or download could not be completed now; it may be tried again."""

    retryable = True


class UpstreamState(enum.StrEnum):
    """Where an upstream job stands, as the adapter understands the upstream's answer."""

    PENDING = "pending"  # accepted, queued or running
    SUCCEEDED = "succeeded"  # outputs are set
    FAILED = "failed"  # error_code/error_message are set
    MODERATED = "moderated"  # refused by the upstream's safety filter (input or output)
    NOT_FOUND = "not_found"  # the upstream no longer knows the job (expired, wrong host)
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self is not UpstreamState.PENDING


@dataclass(frozen=True, slots=True)
class InputImage:
    """An input image the gateway has already fetched, sniffed and validated."""

    data: bytes
    mime: str  # image/png, image/jpeg, image/webp
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One image to make: what the gateway asks of an upstream, already normalised.

    `model` is the upstream's own model name (after the channel's name mapping).
    `aspect_ratio` is `"W:H"` already inside the model's range, or None for the upstream's
    default (the input image's ratio when there is one, else 1:1). `width`/`height` are the
    Kontext bucket the gateway expects back (a hint; upstreams may ignore it).
    `quality` is the asked JPEG/WebP quality (0..100), forwarded where the upstream takes one.
    `extra` carries model-specific knobs that some upstreams accept: guidance, steps,
    go_fast, disable_pup, grounding (only those the model's family takes: the gateway drops
    the others).

    `family` names the model's family (gateway/families.py: `kontext`, `flux2`, `flux3`); each
    adapter spells the fields per family. For `flux2`, `width`/`height` ARE the size asked
    (multiples of 16, at most 4 MP); for `flux3` the size is `aspect_ratio` (None = auto) and
    `resolution` (768sq, 1k, 1.5k, 2k, 4k), `width`/`height` only what is expected back, and
    `seed` is None (it has none).
    """

    model: str
    prompt: str
    operation: Operation = "generate"
    images: tuple[InputImage, ...] = ()
    aspect_ratio: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    output_format: OutputFormat = "png"
    quality: int | None = None  # 0..100 for JPEG/WebP (OpenAI output_compression, Replicate
    # output_quality); None: the upstream's default
    safety_tolerance: int | None = None
    prompt_upsampling: bool = False
    extra: dict[str, float | int | bool | str] = field(default_factory=dict)
    family: str = "kontext"
    resolution: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamOutput:
    """One result image: either its bytes (local upstreams) or a URL to fetch at once."""

    url: str | None = None
    data: bytes | None = None
    content_type: str | None = None


@dataclass(slots=True)
class UpstreamJob:
    """The upstream's view of one job; everything needed to resume polling after a restart.

    `handle` is adapter-private, JSON-serialisable state (for example the status URL a queue
    returned); the gateway stores it verbatim and gives it back.
    """

    id: str
    state: UpstreamState = UpstreamState.PENDING
    poll_url: str | None = None
    handle: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    outputs: list[UpstreamOutput] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    progress: float | None = None
    cost: float | None = None  # the upstream's own cost in USD, when it reports one
    retry_after: float | None = None  # a hint for the next poll, in seconds


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an upstream can do; the gateway routes and validates with this.

    Ratios are width/height bounds (Kontext: 3/7 .. 7/3). `aspect_ratios` lists the exact
    ratios an upstream accepts when it takes an enum (None = any ratio in range).
    """

    models: tuple[str, ...]
    max_input_images: int = 1
    min_ratio: float = 3 / 7
    max_ratio: float = 7 / 3
    aspect_ratios: tuple[str, ...] | None = None
    output_formats: tuple[OutputFormat, ...] = ("png", "jpeg")
    safety_range: tuple[int, int] = (0, 6)
    supports_cancel: bool = False
    label: str = ""  # shown to users next to results from this upstream, e.g. "sandbox"
    #: input images per model family where it differs from `max_input_images` (the Kontext
    #: figure): e.g. {"flux2": 8, "flux3": 10}; the model's own limit applies on top
    family_inputs: dict[str, int] = field(default_factory=dict)

    def inputs_for(self, family: str) -> int:
        """How many input images this upstream takes natively for a model of `family`."""
        return self.family_inputs.get(family, self.max_input_images)


@runtime_checkable
class Adapter(Protocol):
    """One upstream. Implementations live one per file in `adapters/`.

    submit: start a job; raises UpstreamRejected (not accepted), UpstreamAuthError, or
        UpstreamAmbiguous (maybe accepted). Answers the accepted job (state may already be
        terminal for synchronous upstreams).
    poll: refresh a job; raises UpstreamUnavailable when the upstream cannot be reached.
    cancel: best effort; never raises for an upstream without cancel.
    download: fetch one output's bytes (from the URL the upstream returned); raises
        UpstreamUnavailable, or UpstreamRejected when the URL has expired (404/403/410).
    """

    capabilities: Capabilities

    async def submit(self, req: UpstreamRequest) -> UpstreamJob: ...

    async def poll(self, job: UpstreamJob) -> UpstreamJob: ...

    async def cancel(self, job: UpstreamJob) -> None: ...

    async def download(self, output: UpstreamOutput) -> bytes: ...
