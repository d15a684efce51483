"""Black Forest Labs' own API (FLUX.1 Kontext [pro] and [max], FLUX.2, FLUX 3 Image).

Docs: https://docs.bfl.ai/integration_guidelines (hosts, polling),
https://docs.bfl.ml/api-reference/models/edit-or-create-an-image-with-flux-kontext-pro (create),
https://docs.bfl.ml/api-reference/utility/get-result.md (poll),
https://docs.bfl.ml/api_integration/errors.md (HTTP errors),
https://help.bfl.ai/articles/7158018353-what-is-the-concurrency-limit-for-the-api (24 active
tasks, 6 for kontext-max; over that: 429).

Wire contract used here:
- auth `x-key: <key>`; default host `https://api.bfl.ai` (global); `https://api.eu.bfl.ai` and
  `https://api.us.bfl.ai` are set as the channel's `base_url`.
- `POST {base}/v1/flux-kontext-pro|max` with `prompt`, `input_image` (base64 of the bytes),
  `input_image_2..4` ("experimental multiref"), `aspect_ratio` (21:9..9:21), `seed`,
  `output_format` (png|jpeg), `safety_tolerance` (0..6), `prompt_upsampling`; answers
  `{id, polling_url, cost?, input_mp?, output_mp?}`.
- `GET {polling_url}` EXACTLY as returned (it names the region that took the job; another host
  answers "Task not found"), but only on the channel's own origin or https `*.bfl.ai` (it gets
  the key; any other host fails the job with `polling_url_not_allowed`, uncontacted);
  `{id, status, result, progress}`; when Ready `result.sample` is a signed URL on a
  `delivery-*.bfl.ai` host that expires after 10 minutes.

FLUX.2 and FLUX 3 Image (shared/reference/upstreams-2026-12.md §1.1, from docs.bfl.ml/guides/
prompting_editing_overview, docs.bfl.ai/flux_3/flux3_image_generate and BFL's skills repo
`skills/bfl-api/references/endpoints.md`), by `UpstreamRequest.family`:
- `flux2`: `POST /v1/flux-2-pro|-pro-preview|-max|-flex|-klein-4b|-klein-9b` with `prompt`,
  `input_image`, `input_image_2..8`, `width`/`height` (multiples of 16, at most 4 MP), `seed`,
  `safety_tolerance` 0..5, `output_format` jpeg|png, `disable_pup`; flex also `steps`,
  `guidance`, `prompt_upsampling`. The create answer's `cost` (credits), `input_mp`,
  `output_mp` are kept.
- `flux3`: `POST /v1/flux-3-image` with `prompt`, `images` (list of base64; 1..10),
  `aspect_ratio` (`auto` or its enum), `resolution`, `grounding` (always sent: BFL's default
  is true, ours false), `safety_tolerance` 0..4, `version` when asked. Nothing else is sent:
  BFL answers 422 to an unknown field, and FLUX 3 has no seed, width/height, input_image or
  output_format (the gateway converts the result to the asked format). Result URLs live 1 h.

Quirks and what is not confirmed:
- `cost` is "price in cents" per ComfyUI's BFL model (comfy_api_nodes/apis/bfl.py), not BFL's
  reference: UNCONFIRMED; it is recorded as USD (cents / 100).
- "Processing" is not in BFL's status enum as ComfyUI copies it (Pending, Ready, Error, Request
  Moderated, Content Moderated, Task not found); it is accepted as pending anyway.
- No cancel endpoint is documented: `cancel()` does nothing.
- webp output is UNCONFIRMED for BFL direct, so it is not offered (png is sent instead).
- The webhook signature scheme is UNCONFIRMED; this adapter polls only.
- `Error` is a terminal failure (ComfyUI and BFL's reference client treat every non-Pending,
  non-Ready status as failed).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx

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

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.bfl.ai"
#: `polling_url` may name another region's host (api.eu2.bfl.ai, gateway.bfl.ai): it is polled
#: with the key only on the channel's own origin or on https `*.bfl.ai`
#: (docs.bfl.ai/integration_guidelines; shared/reference/upstreams-2026-12.md)
POLLING_SUFFIXES = (".bfl.ai",)
BFL_MODELS = ("flux-kontext-pro", "flux-kontext-max", "flux-2-pro", "flux-2-pro-preview",
              "flux-2-max", "flux-2-flex", "flux-2-klein-4b", "flux-2-klein-9b", "flux-3-image")
_EXTRA_IMAGE_FIELDS = ("input_image_2", "input_image_3", "input_image_4")
_FLUX2_IMAGE_FIELDS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
#: input images per family (Kontext: 4, experimental multiref)
FAMILY_INPUTS = {"flux2": 8, "flux3": 10}
#: how each family's knobs are spelled here (`req.extra` name -> BFL field)
FAMILY_FIELDS: dict[str, dict[str, str]] = {
    "flux2": {"disable_pup": "disable_pup", "steps": "steps", "guidance": "guidance"},
    "flux3": {"grounding": "grounding", "version": "version"},
}
_SAFETY = {"kontext": 6, "flux2": 5, "flux3": 4}
_MODERATED = frozenset({"Request Moderated", "Content Moderated"})
#: FLUX 3's Reasoning/Generating/Uploading (seen in third-party clients, not BFL's docs) are
#: not listed: like any unknown word they keep the job polling, and are logged once
_PENDING = frozenset({"Pending", "Processing", "Queued"})
#: the only words that end a job besides Ready and the moderation ones. Newer BFL models report
#: working states beyond the documented enum (`Reasoning`, `Generating`, `Uploading`, ...):
#: failing on those would release a job that BFL then finishes and bills.
_FAILED = frozenset({"Error", "Failed"})


class BflOptions(transport.QueueTimeouts):
    """Channel options for a BFL channel (all times in seconds)."""

    models: tuple[str, ...] = BFL_MODELS


def _clamp_ratio(ratio: str | None) -> str | None:
    """Keep a "W:H" inside 21:9..9:21 (BFL refuses anything wider or taller)."""
    if not ratio:
        return None
    w, h = (float(x) for x in ratio.split(":"))
    if w / h > 7 / 3:
        return "21:9"
    if w / h < 3 / 7:
        return "9:21"
    return ratio


def _flux2_body(req: UpstreamRequest) -> dict[str, Any]:
    if len(req.images) > len(_FLUX2_IMAGE_FIELDS):
        raise UpstreamRejected("BFL FLUX.2 takes at most 8 input images",
                               code="unsupported_request", retryable=True)
    body: dict[str, Any] = {"prompt": req.prompt}
    for key, image in zip(_FLUX2_IMAGE_FIELDS, req.images, strict=False):
        body[key] = base64.b64encode(image.data).decode("ascii")
    if req.width and req.height:
        body["width"], body["height"] = req.width, req.height
    if req.seed is not None:
        body["seed"] = req.seed
    if req.safety_tolerance is not None:
        body["safety_tolerance"] = min(max(req.safety_tolerance, 0), _SAFETY["flux2"])
    body["output_format"] = "png" if req.output_format == "png" else "jpeg"
    if "steps" in req.extra:  # flex: it also takes prompt_upsampling
        body["prompt_upsampling"] = req.prompt_upsampling
    for key, name in FAMILY_FIELDS["flux2"].items():
        if key in req.extra:
            body[name] = req.extra[key]
    return body


def _flux3_body(req: UpstreamRequest) -> dict[str, Any]:
    if len(req.images) > FAMILY_INPUTS["flux3"]:
        raise UpstreamRejected("BFL FLUX 3 Image takes at most 10 input images",
                               code="unsupported_request", retryable=True)
    body: dict[str, Any] = {"prompt": req.prompt}
    if req.images:
        body["images"] = [base64.b64encode(i.data).decode("ascii") for i in req.images]
    body["aspect_ratio"] = req.aspect_ratio or "auto"
    body["resolution"] = req.resolution or "1k"
    body["grounding"] = bool(req.extra.get("grounding", False))
    if req.safety_tolerance is not None:
        body["safety_tolerance"] = min(max(req.safety_tolerance, 0), _SAFETY["flux3"])
    if "version" in req.extra:
        body["version"] = req.extra["version"]
    return body


def _to_request(req: UpstreamRequest) -> tuple[str, dict[str, Any]]:
    """The create path and JSON body for `req`."""
    if req.family == "flux2":
        return f"/v1/{req.model}", _flux2_body(req)
    if req.family == "flux3":
        return f"/v1/{req.model}", _flux3_body(req)
    if len(req.images) > 1 + len(_EXTRA_IMAGE_FIELDS):
        raise UpstreamRejected("BFL takes at most 4 input images", code="unsupported_request",
                               retryable=True)
    body: dict[str, Any] = {"prompt": req.prompt}
    for i, image in enumerate(req.images):
        key = "input_image" if i == 0 else _EXTRA_IMAGE_FIELDS[i - 1]
        body[key] = base64.b64encode(image.data).decode("ascii")
    if ratio := _clamp_ratio(req.aspect_ratio):
        body["aspect_ratio"] = ratio
    if req.seed is not None:
        body["seed"] = req.seed
    body["output_format"] = "jpeg" if req.output_format == "jpeg" else "png"
    if req.safety_tolerance is not None:
        body["safety_tolerance"] = min(max(req.safety_tolerance, 0), 6)
    body["prompt_upsampling"] = req.prompt_upsampling
    return f"/v1/{req.model}", body


def _from_submit(data: dict[str, Any]) -> UpstreamJob:
    """The accepted job from BFL's create answer."""
    job_id, polling_url = data.get("id"), data.get("polling_url")
    if not isinstance(job_id, str) or not isinstance(polling_url, str):
        raise UpstreamAmbiguous(f"BFL accepted without id/polling_url: {sorted(data)}",
                                code="ambiguous_submit")
    cost = data.get("cost")
    return UpstreamJob(id=job_id, poll_url=polling_url, handle={"polling_url": polling_url},
                       progress=0.0,
                       cost=float(cost) / 100 if isinstance(cost, int | float) else None)


def _from_response(job: UpstreamJob, data: dict[str, Any]) -> UpstreamJob:
    """Update `job` from a get_result answer."""
    status = str(data.get("status", ""))
    progress = data.get("progress")
    known = status in _PENDING or status in _FAILED or status in _MODERATED \
        or status in ("Ready", "Task not found")
    if not known and job.handle.get("unknown_status") != status:
        log.warning("BFL task %s reports status %r, not a documented one: still polling",
                    job.id, status[:40])
        job.handle["unknown_status"] = status  # logged once per job and word
    if status in _PENDING or not known:
        job.state = UpstreamState.PENDING
        if isinstance(progress, int | float):
            job.progress = float(progress)
        return job
    result = data.get("result")
    if status == "Ready":
        sample = result.get("sample") if isinstance(result, dict) else None
        if isinstance(sample, str) and sample:
            job.state = UpstreamState.SUCCEEDED
            job.outputs = [UpstreamOutput(url=sample)]
            job.progress = 1.0
            return job
        job.state = UpstreamState.FAILED
        job.error_code, job.error_message = "upstream_error", "Ready without result.sample"
        return job
    detail = _detail(data, result) or status
    if status in _MODERATED:
        job.state = UpstreamState.MODERATED
        job.error_code = "content_moderated"
    elif status == "Task not found":
        job.state = UpstreamState.NOT_FOUND
        job.error_code = "not_found"
    else:  # "Error" / "Failed"
        job.state = UpstreamState.FAILED
        job.error_code = "upstream_error"
    job.error_message = detail
    return job


def _detail(data: dict[str, Any], result: Any) -> str | None:
    status = str(data.get("status", ""))
    for source in (data.get("details"), data.get("error"), result):
        if isinstance(source, str) and source:
            return f"{status}: {source}"
        if isinstance(source, dict) and source:
            reasons = source.get("Moderation Reasons") or source.get("message")
            if reasons:
                return f"{status}: {reasons}"
    return None


class BflAdapter:
    """BFL API adapter (see the module docstring)."""

    def __init__(self, options: BflOptions, secret: str | None, base_url: str | None,
                 client: httpx.AsyncClient, results: httpx.AsyncClient | None = None) -> None:
        self.options = options
        self._key = secret or ""
        self._base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._client = client
        self._results = results or client  # result URLs: the gateway's guarded client
        self.capabilities = Capabilities(
            models=options.models, max_input_images=4, min_ratio=3 / 7, max_ratio=7 / 3,
            output_formats=("png", "jpeg"), safety_range=(0, 6), supports_cancel=False,
            label="bfl", family_inputs=dict(FAMILY_INPUTS))

    def _phases(self, total: float) -> httpx.Timeout:
        return httpx.Timeout(total, connect=self.options.connect_timeout)

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        path, body = _to_request(req)
        opts = self.options
        resp = await transport.submit_call(
            self._client, "POST", self._base + path, json=body,
            headers={"x-key": self._key, "accept": "application/json"},
            deadline=opts.submit_timeout, phases=self._phases(opts.submit_timeout))
        transport.raise_for_submit(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamAmbiguous("BFL answered 2xx with a body that is not JSON",
                                    code="ambiguous_submit") from exc
        return _from_submit(data if isinstance(data, dict) else {})

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        url = job.poll_url or str(job.handle.get("polling_url") or "")
        if not url:  # a job from before polling_url existed: BFL's documented fallback
            url = f"{self._base}/v1/get_result?id={job.id}"
        if not transport.origin_allowed(url, self._base, POLLING_SUFFIXES):
            return transport.refuse_url(job, url)
        opts = self.options
        resp = await transport.poll_call(
            self._client, "GET", url, headers={"x-key": self._key, "accept": "application/json"},
            deadline=opts.poll_timeout, phases=self._phases(opts.poll_timeout))
        if resp.status_code == 404:
            job.state, job.error_code = UpstreamState.NOT_FOUND, "not_found"
            job.error_message = transport.error_message(resp)
            return job
        transport.raise_for_poll(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamUnavailable("BFL status answer is not JSON", code="bad_answer") from exc
        return _from_response(job, data if isinstance(data, dict) else {})

    async def cancel(self, job: UpstreamJob) -> None:
        """BFL documents no cancel endpoint; nothing to do."""

    async def download(self, output: UpstreamOutput) -> bytes:
        return await transport.download_output(self._results, output,
                                               deadline=self.options.download_timeout,
                                               connect=self.options.connect_timeout)

