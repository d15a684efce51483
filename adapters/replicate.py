"""Replicate's HTTP API, running the official FLUX.1 Kontext models.

Docs: https://replicate.com/docs/topics/predictions/create-a-prediction (create, `Prefer: wait`),
https://replicate.com/docs/topics/predictions/lifecycle (statuses),
https://replicate.com/docs/topics/predictions/rate-limits (429 body),
https://replicate.com/changelog/2025-10-16-prediction-deadlines (`Cancel-After`, `aborted`),
model schemas: https://replicate.com/black-forest-labs/flux-kontext-pro/api (and -max, -dev),
https://replicate.com/flux-kontext-apps/multi-image-kontext-pro/api; client behaviour read in
replicate/replicate-python (`client.py`, `prediction.py`).

Wire contract used here:
- `Authorization: Bearer <token>`; base `https://api.replicate.com` (a base ending in `/v1` is
  accepted too).
- `POST {base}/v1/models/{owner}/{name}/predictions` with `{"input": {...}}` and
  `Prefer: wait=N` (N = `wait` option, ≤ 60; 0 sends no Prefer header). The read timeout is
  N + 5 s. If the model finishes in time the answer carries `output`; otherwise it is still
  `starting`/`processing` and the job is polled at `urls.get` (else `/v1/predictions/{id}`).
- statuses: starting/processing → pending; succeeded → `output` (a URI string or a list);
  failed → failed, or moderated when `error` reads like a safety refusal ("NSFW", "flagged",
  "sensitive", Replicate's `E005`); canceled/aborted → canceled.
- cancel: `POST urls.cancel` (else `/v1/predictions/{id}/cancel`).
- `urls.get`/`urls.cancel` get the token, so they are used only on the channel's own origin: a
  job whose `urls.get` names another host fails with `polling_url_not_allowed`, uncontacted.
- errors are RFC 7807 (`detail`); 429 `{"detail": "Request was throttled. Your rate limit
  resets in ~30s."}` → retry_after from `Retry-After`, else from that sentence.

Model mapping: our ids map to `black-forest-labs/flux-kontext-pro|max|dev` unless the channel
names an `owner/name` itself. With 2 input images pro/max switch to
`flux-kontext-apps/multi-image-kontext-pro|max` (`input_image_1`, `input_image_2`; exactly 2;
safety_tolerance 0..2). Input images are sent as data URLs (Replicate recommends them only
under 1 MB; a `/v1/files` upload is not implemented). `aspect_ratio` is snapped to the model's
enum; without a ratio it is `match_input_image` when there is an input image, else `1:1`.
safety_tolerance is capped at 2 when input images are used ("2 is currently the maximum
allowed when input images are used"). Dev takes no safety_tolerance; it takes `guidance`,
`num_inference_steps` (alias `steps`) and `go_fast` from `req.extra`, and `output_quality`
(0-100, jpg/webp) from `req.quality`. Output formats: pro/max and the multi-image apps take
{jpg, png}, dev {webp, jpg, png}: webp asked of pro/max is sent as png (lossless) and the
gateway converts the result.

FLUX.2 and FLUX 3 Image (replicate.com model pages; shared/reference/upstreams-2026-12.md §1.2),
by `UpstreamRequest.family`:
- `flux2` (`black-forest-labs/flux-2-pro|max|flex|dev|klein-4b|klein-9b`): `input_images` (data
  URLs, up to 8), the size as `aspect_ratio: "custom"` + `width`/`height` (Replicate takes
  256..2048 a side: a larger asked side is scaled into that box, ratio kept), `seed`,
  `safety_tolerance` 1..5 (not on dev), `output_format` webp|jpg|png (always sent: Replicate's
  default is webp), `output_quality`; flex `steps`/`guidance`, dev `go_fast`/`guidance`/
  `num_inference_steps`.
- `flux3` (`black-forest-labs/flux-3-image`): `images` (up to 10), `aspect_ratio` (`auto` or
  its enum), `resolution` (the class), `grounding` (always sent, false unless enabled),
  `safety_tolerance` 0..4, `output_format`, `output_quality`; no seed.
UNCONFIRMED: whether Replicate's FLUX.2 width/height must be multiples of 32 (the gateway sends
multiples of 16, as BFL takes); the FLUX.2 `resolution` enum's spelling (never sent here).

UNCONFIRMED: Replicate's Kontext prices (not reported by the API; `cost` stays None); the
moderation wording of `error` (matched loosely); `go_fast` on dev (seen on a mirror only).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
from pydantic import Field

from adapters import transport
from adapters.base import (
    Capabilities,
    UpstreamAmbiguous,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
    UpstreamUnavailable,
)
from adapters.buckets import nearest_ratio

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.replicate.com"
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4", "21:9", "9:21",
                 "2:1", "1:2")
DEFAULT_MODEL_NAMES = {
    "flux-kontext-pro": "black-forest-labs/flux-kontext-pro",
    "flux-kontext-max": "black-forest-labs/flux-kontext-max",
    "flux-kontext-dev": "black-forest-labs/flux-kontext-dev",
    "flux-2-pro": "black-forest-labs/flux-2-pro",
    "flux-2-max": "black-forest-labs/flux-2-max",
    "flux-2-flex": "black-forest-labs/flux-2-flex",
    "flux-2-dev": "black-forest-labs/flux-2-dev",
    "flux-2-klein-4b": "black-forest-labs/flux-2-klein-4b",
    "flux-2-klein-9b": "black-forest-labs/flux-2-klein-9b",
    "flux-3-image": "black-forest-labs/flux-3-image",
}
#: input images per family beyond Kontext's 2 (the multi-image apps)
FAMILY_INPUTS = {"flux2": 8, "flux3": 10}
#: how each family's knobs are spelled on Replicate (`req.extra` name -> input field)
FAMILY_FIELDS: dict[str, dict[str, str]] = {
    "flux2": {"steps": "steps", "guidance": "guidance", "go_fast": "go_fast"},
    "flux2-dev": {"steps": "num_inference_steps", "guidance": "guidance", "go_fast": "go_fast"},
    "flux3": {"grounding": "grounding"},
}
_REPLICATE_SIDE = (256, 2048)
DEFAULT_MULTI_IMAGE_MODELS = {
    "black-forest-labs/flux-kontext-pro": "flux-kontext-apps/multi-image-kontext-pro",
    "black-forest-labs/flux-kontext-max": "flux-kontext-apps/multi-image-kontext-max",
}
_MODERATION = re.compile(r"nsfw|flagged|sensitive|moderat|safety|content policy|\bE005\b",
                         re.IGNORECASE)
_DEV_EXTRAS = {"guidance": "guidance", "num_inference_steps": "num_inference_steps",
               "steps": "num_inference_steps", "go_fast": "go_fast",
               "output_quality": "output_quality"}


class ReplicateOptions(transport.QueueTimeouts):
    """Channel options for a Replicate channel (times in seconds; `submit_timeout` applies
    when `wait` is 0)."""

    wait: int = Field(default=60, ge=0, le=60)  # Prefer: wait=N on create; 0 = answer at once
    cancel_after: str | None = None  # Cancel-After header, e.g. "10m" (a deadline upstream)
    models: tuple[str, ...] = tuple(DEFAULT_MODEL_NAMES)
    model_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MODEL_NAMES))
    multi_image_models: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_MULTI_IMAGE_MODELS))


def _unsupported(message: str) -> UpstreamRejected:
    # retryable: another channel (BFL takes 4 images, text-to-image...) may serve it
    return UpstreamRejected(message, code="unsupported_request", retryable=True)


def _aspect_ratio(req: UpstreamRequest) -> str:
    if req.aspect_ratio:
        w, h = req.aspect_ratio.split(":")
        return nearest_ratio(float(w) / float(h), ASPECT_RATIOS)
    return "match_input_image" if req.images else "1:1"


def _custom_size(width: int, height: int) -> tuple[int, int]:
    """`width` x `height` inside Replicate's 256..2048 box, ratio kept, multiples of 16."""
    lo, hi = _REPLICATE_SIDE
    scale = min(1.0, hi / max(width, height))
    scale = max(scale, lo / min(width, height))
    return (min(hi, max(lo, round(width * scale / 16) * 16)),
            min(hi, max(lo, round(height * scale / 16) * 16)))


def _family_input(name: str, req: UpstreamRequest) -> dict[str, Any]:
    """The `input` of a FLUX.2 or FLUX 3 prediction (see the module docstring)."""
    images = [transport.data_url(i.data, i.mime) for i in req.images]
    limit = FAMILY_INPUTS[req.family]
    if len(images) > limit:
        raise _unsupported(f"{name} on Replicate takes at most {limit} input images")
    fmt = {"jpeg": "jpg", "png": "png", "webp": "webp"}[req.output_format]
    body: dict[str, Any] = {"prompt": req.prompt}
    dev = name.endswith("-dev")
    if req.family == "flux3":
        if images:
            body["images"] = images
        body["aspect_ratio"] = req.aspect_ratio or "auto"
        body["resolution"] = req.resolution or "1k"
        if req.safety_tolerance is not None:
            body["safety_tolerance"] = min(max(req.safety_tolerance, 0), 4)
        fields = FAMILY_FIELDS["flux3"]
        body["grounding"] = bool(req.extra.get("grounding", False))
    else:
        if images:
            body["input_images"] = images
        if req.width and req.height:
            body["aspect_ratio"] = "custom"
            body["width"], body["height"] = _custom_size(req.width, req.height)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.safety_tolerance is not None and not dev:
            body["safety_tolerance"] = min(max(req.safety_tolerance, 1), 5)
        fields = FAMILY_FIELDS["flux2-dev" if dev else "flux2"]
    for key, field in fields.items():
        if key in req.extra and field not in body:
            body[field] = req.extra[key]
    body["output_format"] = fmt
    if req.quality is not None and fmt != "png":
        body["output_quality"] = req.quality
    return body


def _to_request(req: UpstreamRequest, opts: ReplicateOptions) -> tuple[str, dict[str, Any]]:
    """The `owner/name` to run and the prediction's `input` for `req`."""
    name = req.model if "/" in req.model else opts.model_names.get(
        req.model, f"black-forest-labs/{req.model}")
    if req.family in FAMILY_INPUTS:
        return name, {"input": _family_input(name, req)}
    is_dev = name.rsplit("/", 1)[-1].endswith("-dev")
    images = [transport.data_url(i.data, i.mime) for i in req.images]
    fmt = {"jpeg": "jpg", "png": "png", "webp": "webp" if is_dev else "png"}[req.output_format]
    body: dict[str, Any] = {"prompt": req.prompt}
    if len(images) >= 2:
        multi = opts.multi_image_models.get(name)
        if is_dev or multi is None:
            raise _unsupported(f"{name} on Replicate takes one input image")
        if len(images) > 2:
            raise _unsupported("Replicate's multi-image Kontext takes exactly 2 input images")
        name = multi
        body["input_image_1"], body["input_image_2"] = images
    elif images:
        body["input_image"] = images[0]
    elif is_dev:
        raise _unsupported("flux-kontext-dev on Replicate needs an input image")
    body["aspect_ratio"] = _aspect_ratio(req)
    if req.seed is not None:
        body["seed"] = req.seed
    body["output_format"] = fmt
    if is_dev:
        for key, field in _DEV_EXTRAS.items():
            if key in req.extra:
                body[field] = req.extra[key]
        if req.quality is not None and fmt != "png":  # dev's schema: 0-100, not for png
            body["output_quality"] = req.quality
    else:
        if req.safety_tolerance is not None:
            cap = 2 if images else 6
            body["safety_tolerance"] = min(max(req.safety_tolerance, 0), cap)
        if len(images) < 2:  # the multi-image apps have no prompt_upsampling input
            body["prompt_upsampling"] = req.prompt_upsampling
    return name, {"input": body}


def _from_response(data: dict[str, Any], job: UpstreamJob | None = None) -> UpstreamJob:
    """A prediction object (create answer or GET) → the job."""
    pred_id = data.get("id")
    if not isinstance(pred_id, str):
        raise UpstreamUnavailable("Replicate answered without a prediction id", code="bad_answer")
    raw_urls = data.get("urls")
    urls: dict[str, Any] = raw_urls if isinstance(raw_urls, dict) else {}
    if job is None:
        job = UpstreamJob(id=pred_id)
    if isinstance(urls.get("get"), str):
        job.poll_url = urls["get"]
    if isinstance(urls.get("cancel"), str):
        job.handle["cancel_url"] = urls["cancel"]
    status = data.get("status")
    error = data.get("error")
    if status in ("starting", "processing") or (
            status not in ("succeeded", "failed", "canceled", "aborted") and not error):
        # a status Replicate may add, without an error, is still working: only the known
        # terminal words end a job (failing it would release one Replicate then bills)
        job.state = UpstreamState.PENDING
    elif status == "succeeded":
        output = data.get("output")
        found = [output] if isinstance(output, str) else (
            [o for o in output if isinstance(o, str)] if isinstance(output, list) else [])
        if found:
            job.state = UpstreamState.SUCCEEDED
            job.outputs = [UpstreamOutput(url=u) for u in found]
            job.progress = 1.0
        else:
            job.state, job.error_code = UpstreamState.FAILED, "upstream_error"
            job.error_message = "succeeded without output"
    elif status in ("canceled", "aborted"):
        job.state, job.error_code = UpstreamState.CANCELED, str(status)
        job.error_message = str(error) if error else f"prediction {status}"
    else:  # failed, or an unknown status that carries an error
        message = str(error) if error else f"prediction {status}"
        moderated = bool(_MODERATION.search(message))
        job.state = UpstreamState.MODERATED if moderated else UpstreamState.FAILED
        job.error_code = "content_moderated" if moderated else "upstream_error"
        job.error_message = message
    return job


class ReplicateAdapter:
    """Replicate adapter (see the module docstring)."""

    def __init__(self, options: ReplicateOptions, secret: str | None, base_url: str | None,
                 client: httpx.AsyncClient, results: httpx.AsyncClient | None = None) -> None:
        self.options = options
        self._token = secret or ""
        self._base = (base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        self._client = client
        self._results = results or client  # result URLs: the gateway's guarded client
        self.capabilities = Capabilities(
            models=options.models, max_input_images=2, min_ratio=3 / 7, max_ratio=7 / 3,
            aspect_ratios=ASPECT_RATIOS, output_formats=("png", "jpeg", "webp"),
            safety_range=(0, 6), supports_cancel=True, label="replicate",
            family_inputs=dict(FAMILY_INPUTS))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        opts = self.options
        name, body = _to_request(req, opts)
        headers = self._headers()
        if opts.wait:
            headers["Prefer"] = f"wait={opts.wait}"
            read = opts.wait + 5.0
        else:
            read = opts.submit_timeout
        if opts.cancel_after:
            headers["Cancel-After"] = opts.cancel_after
        resp = await transport.submit_call(
            self._client, "POST", f"{self._base}/v1/models/{name}/predictions", json=body,
            headers=headers, deadline=read + opts.connect_timeout,
            phases=httpx.Timeout(read, connect=opts.connect_timeout))
        transport.raise_for_submit(resp)
        try:
            data = resp.json()
            return _from_response(data if isinstance(data, dict) else {})
        except (ValueError, UpstreamUnavailable) as exc:
            # a 2xx we cannot read: the prediction may exist, so never re-submit
            raise UpstreamAmbiguous(f"unreadable create answer: {exc}",
                                              code="ambiguous_submit") from exc

    def _poll_url(self, job: UpstreamJob) -> str:
        return job.poll_url or f"{self._base}/v1/predictions/{job.id}"

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        opts = self.options
        url = self._poll_url(job)
        if not transport.origin_allowed(url, self._base):
            return transport.refuse_url(job, url)
        resp = await transport.poll_call(
            self._client, "GET", url, headers=self._headers(),
            deadline=opts.poll_timeout,
            phases=httpx.Timeout(opts.poll_timeout, connect=opts.connect_timeout))
        if resp.status_code == 404:
            job.state, job.error_code = UpstreamState.NOT_FOUND, "not_found"
            job.error_message = transport.error_message(resp)
            return job
        transport.raise_for_poll(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamUnavailable("Replicate answered with non-JSON",
                                      code="bad_answer") from exc
        return _from_response(data if isinstance(data, dict) else {}, job)

    async def cancel(self, job: UpstreamJob) -> None:
        opts = self.options
        url = str(job.handle.get("cancel_url") or f"{self._base}/v1/predictions/{job.id}/cancel")
        if not transport.origin_allowed(url, self._base):
            log.warning("replicate cancel of %s skipped: urls.cancel is not on the channel's "
                        "host", job.id)
            return
        resp = await transport.poll_call(
            self._client, "POST", url, headers=self._headers(), deadline=opts.poll_timeout,
            phases=httpx.Timeout(opts.poll_timeout, connect=opts.connect_timeout))
        if not resp.is_success:
            log.info("replicate cancel of %s answered %s", job.id, resp.status_code)

    async def download(self, output: UpstreamOutput) -> bytes:
        return await transport.download_output(self._results, output,
                                               deadline=self.options.download_timeout,
                                               connect=self.options.connect_timeout)
