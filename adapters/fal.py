"""fal.ai's queue API, running FLUX.1 Kontext [pro] and [max], FLUX.2 and FLUX 3 Image.

Docs: https://docs.fal.ai/model-endpoints/queue (submit, status, result, cancel),
https://fal.ai/models/fal-ai/flux-pro/kontext/llms.txt (edit schema),
https://fal.ai/docs/model-api-reference/image-generation-api/flux-pro-kontext-text-to-image,
https://fal.ai/docs/model-api-reference/image-generation-api/flux-pro-kontext-multi,
https://docs.fal.ai/documentation/model-apis/media-expiration; client behaviour read in
fal-ai/fal `projects/fal_client/src/fal_client/client.py`.

Wire contract used here:
- `Authorization: Key <FAL_KEY>`; submit `POST https://queue.fal.run/{endpoint}` (the channel's
  `base_url` replaces the host) answers `{request_id, status_url, response_url, cancel_url}`.
- Poll the RETURNED `status_url`: it drops the endpoint's sub-path
  (`fal-ai/flux-pro/kontext` → `.../fal-ai/flux-pro/requests/{id}/status`), so it must never be
  rebuilt. `{status: IN_QUEUE|IN_PROGRESS|COMPLETED, queue_position?, error?, error_type?}`;
  COMPLETED with `error` is a failure. Then `GET response_url` answers
  `{images: [{url, ...}], seed, has_nsfw_concepts: [bool], prompt}`.
- The three URLs are stored in `UpstreamJob.handle`, so polling resumes after a restart. They
  get the key, so they are used only on the channel's own origin: a job naming another host
  fails with `polling_url_not_allowed`, uncontacted.
- Cancel: `PUT cancel_url` (works only while queued; later answers are ignored).
- Endpoints by input count: none → `{endpoint}/text-to-image`; one → `{endpoint}` with
  `image_url` (a data URI); two or more → `{endpoint}/multi` with `image_urls`.
- `safety_tolerance` is a STRING "1".."6" (0 is sent as "1"); `aspect_ratio` is snapped to
  {21:9,16:9,4:3,3:2,1:1,2:3,3:4,9:16,9:21}; `output_format` jpeg|png (fal's default is jpeg,
  so it is always sent); `enhance_prompt` carries prompt_upsampling; `guidance_scale` comes
  from `req.extra["guidance"]`; `num_images` is 1.
- `has_nsfw_concepts[i] == true`: that image is dropped; when none is left the job is moderated.

FLUX.2 and FLUX 3 (fal.ai model pages; shared/reference/upstreams-2026-12.md §1.3), by
`UpstreamRequest.family`:
- `flux2`: `fal-ai/flux-2-pro`, `fal-ai/flux-2-flex`, `fal-ai/flux-2/klein/4b`; with input
  images `{endpoint}/edit` and `image_urls` (data URIs, up to 8; klein 4); the size as
  `image_size: {width, height}`; `seed`; `safety_tolerance` a string "1".."5";
  `output_format` jpeg|png; flex `num_inference_steps` and `guidance_scale`. fal prices it
  per megapixel, input and output ($0.03 first MP + $0.015 each further, pro).
- `flux3`: `blackforestlabs/flux-3/text-to-image`, with input images
  `blackforestlabs/flux-3/edit-image` and `image_urls` (up to 10, each at most 4 MP: a
  larger one is refused here as unsupported, so another channel may take the job);
  `aspect_ratio` (`auto` or its enum), `resolution`, `grounding` (always sent),
  `safety_tolerance` "1".."4"; no seed.
UNCONFIRMED: the FLUX 3 endpoints' field names beyond `prompt` and `image_urls` (taken to be
BFL's own); `fal-ai/flux-2-max` (not listed; add it through `endpoints` if it exists).

Confirmed in fal's API reference for `fal-ai/flux-pro/kontext/multi` (its input schema and
example): `image_urls` is a required `list<string>`, with the same `aspect_ratio` enum,
`output_format` jpeg|png and string `safety_tolerance` "1".."6" as the single-image endpoint.
UNCONFIRMED: the multi endpoint's image maximum (4 here; the reference names none); the
image object's fields beyond `url`; the default CDN retention; `fal-ai/flux-kontext/dev`'s
schema (not served by default; add it through `endpoints` only if it matches).
"""

from __future__ import annotations

import base64
import json
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

DEFAULT_BASE_URL = "https://queue.fal.run"
ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
DEFAULT_ENDPOINTS = {
    "flux-kontext-pro": "fal-ai/flux-pro/kontext",
    "flux-kontext-max": "fal-ai/flux-pro/kontext/max",
    "flux-2-pro": "fal-ai/flux-2-pro",
    "flux-2-flex": "fal-ai/flux-2-flex",
    "flux-2-klein-4b": "fal-ai/flux-2/klein/4b",
    "flux-3-image": "blackforestlabs/flux-3",
}
#: per family: input images, and the (text-to-image, edit) sub-paths of the endpoint
FAMILY_INPUTS = {"flux2": 8, "flux3": 10}
FAMILY_PATHS = {"flux2": ("", "/edit"), "flux3": ("/text-to-image", "/edit-image")}
#: how each family's knobs are spelled on fal (`req.extra` name -> input field)
FAMILY_FIELDS: dict[str, dict[str, str]] = {
    "flux2": {"steps": "num_inference_steps", "guidance": "guidance_scale"},
    "flux3": {"grounding": "grounding"},
}
_FLUX3_EDIT_PIXELS = 4_000_000  # fal's FLUX 3 edit: each image at most 4 MP
_MAX_IMAGES = 4
_MODERATION = re.compile(r"nsfw|content.?policy|moderat|safety|flagged", re.IGNORECASE)


class FalOptions(transport.QueueTimeouts):
    """Channel options for a fal channel (times in seconds)."""

    models: tuple[str, ...] = tuple(DEFAULT_ENDPOINTS)
    endpoints: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ENDPOINTS))
    object_ttl: int | None = Field(default=None, ge=60)  # X-Fal-Object-Lifecycle-Preference


def _family_request(endpoint: str, req: UpstreamRequest) -> tuple[str, dict[str, Any]]:
    """FLUX.2 / FLUX 3 on fal (see the module docstring)."""
    limit = FAMILY_INPUTS[req.family]
    if len(req.images) > limit:
        raise UpstreamRejected(f"fal takes at most {limit} input images for {req.model}",
                               code="unsupported_request", retryable=True)
    if req.family == "flux3" and any(i.width * i.height > _FLUX3_EDIT_PIXELS
                                     for i in req.images):
        raise UpstreamRejected("fal's FLUX 3 edit takes images of at most 4 MP",
                               code="unsupported_request", retryable=True)
    t2i, edit = FAMILY_PATHS[req.family]
    body: dict[str, Any] = {"prompt": req.prompt}
    if req.images:
        body["image_urls"] = [transport.data_url(i.data, i.mime) for i in req.images]
    if req.family == "flux3":
        body["aspect_ratio"] = req.aspect_ratio or "auto"
        body["resolution"] = req.resolution or "1k"
        body["grounding"] = bool(req.extra.get("grounding", False))
        if req.safety_tolerance is not None:
            body["safety_tolerance"] = str(min(max(req.safety_tolerance, 1), 4))
    else:
        if req.width and req.height:
            body["image_size"] = {"width": req.width, "height": req.height}
        if req.seed is not None:
            body["seed"] = req.seed
        if req.safety_tolerance is not None:
            body["safety_tolerance"] = str(min(max(req.safety_tolerance, 1), 5))
        body["output_format"] = "png" if req.output_format == "png" else "jpeg"
    for key, field in FAMILY_FIELDS[req.family].items():
        if key in req.extra and field not in body:
            body[field] = req.extra[key]
    return endpoint + (edit if req.images else t2i), body


def _to_request(req: UpstreamRequest, opts: FalOptions) -> tuple[str, dict[str, Any]]:
    """The endpoint id and the JSON body for `req`."""
    endpoint = req.model if "/" in req.model else opts.endpoints.get(req.model, req.model)
    if req.family in FAMILY_INPUTS:
        return _family_request(endpoint, req)
    body: dict[str, Any] = {"prompt": req.prompt}
    images = [transport.data_url(i.data, i.mime) for i in req.images]
    if len(images) > _MAX_IMAGES:
        raise UpstreamRejected(f"fal Kontext takes at most {_MAX_IMAGES} input images",
                               code="unsupported_request", retryable=True)
    if not images:
        endpoint += "/text-to-image"
    elif len(images) == 1:
        body["image_url"] = images[0]
    else:
        endpoint += "/multi"
        body["image_urls"] = images
    if req.aspect_ratio:
        w, h = req.aspect_ratio.split(":")
        body["aspect_ratio"] = nearest_ratio(float(w) / float(h), ASPECT_RATIOS)
    if req.seed is not None:
        body["seed"] = req.seed
    body["output_format"] = "jpeg" if req.output_format == "jpeg" else "png"
    if req.safety_tolerance is not None:
        body["safety_tolerance"] = str(min(max(req.safety_tolerance, 1), 6))
    body["enhance_prompt"] = req.prompt_upsampling
    if isinstance(guidance := req.extra.get("guidance"), int | float):
        body["guidance_scale"] = guidance
    body["num_images"] = 1
    return endpoint, body


def _from_submit(data: dict[str, Any]) -> UpstreamJob:
    urls = {k: data.get(k) for k in ("status_url", "response_url", "cancel_url")}
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not all(isinstance(u, str) for u in urls.values()):
        raise UpstreamAmbiguous(f"fal accepted without request id/URLs: {sorted(data)}",
                                code="ambiguous_submit")
    return UpstreamJob(id=request_id, poll_url=str(urls["status_url"]),
                       handle={k: str(v) for k, v in urls.items()})


def _from_status(job: UpstreamJob, data: dict[str, Any]) -> bool:
    """Update `job` from a status answer; True when the result should be fetched now."""
    status = data.get("status")
    error = data.get("error")
    if status in ("IN_QUEUE", "IN_PROGRESS") or (status != "COMPLETED" and not error):
        # a word fal may add, without an error, is still working: only COMPLETED ends a job
        job.state = UpstreamState.PENDING
        return False
    if status == "COMPLETED" and not error:
        return True
    message = str(error or f"unexpected status {status!r}")
    moderated = bool(_MODERATION.search(f"{message} {data.get('error_type') or ''}"))
    job.state = UpstreamState.MODERATED if moderated else UpstreamState.FAILED
    job.error_code = "content_moderated" if moderated else "upstream_error"
    job.error_message = message
    return False


def _from_response(job: UpstreamJob, data: dict[str, Any]) -> UpstreamJob:
    """Update `job` from the result (`response_url`) answer."""
    raw_images, raw_flags = data.get("images"), data.get("has_nsfw_concepts")
    images: list[Any] = raw_images if isinstance(raw_images, list) else []
    flags: list[Any] = raw_flags if isinstance(raw_flags, list) else []
    outputs: list[UpstreamOutput] = []
    flagged = 0
    for i, image in enumerate(images):
        if i < len(flags) and flags[i] is True:
            flagged += 1
            continue
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            outputs.append(_output(image["url"], image.get("content_type")))
    if outputs:
        job.state, job.outputs, job.progress = UpstreamState.SUCCEEDED, outputs, 1.0
    elif flagged:
        job.state, job.error_code = UpstreamState.MODERATED, "content_moderated"
        job.error_message = "fal flagged the result (has_nsfw_concepts)"
    else:
        job.state, job.error_code = UpstreamState.FAILED, "upstream_error"
        job.error_message = "fal completed without images"
    return job


def _output(url: str, content_type: Any) -> UpstreamOutput:
    mime = content_type if isinstance(content_type, str) else None
    if url.startswith("data:"):  # sync_mode answers inline
        head, _, payload = url.partition(",")
        return UpstreamOutput(data=base64.b64decode(payload),
                              content_type=mime or head[5:].split(";")[0] or None)
    return UpstreamOutput(url=url, content_type=mime)


class FalAdapter:
    """fal queue adapter (see the module docstring)."""

    def __init__(self, options: FalOptions, secret: str | None, base_url: str | None,
                 client: httpx.AsyncClient, results: httpx.AsyncClient | None = None) -> None:
        self.options = options
        self._key = secret or ""
        self._base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._client = client
        self._results = results or client  # result URLs: the gateway's guarded client
        self.capabilities = Capabilities(
            models=options.models, max_input_images=_MAX_IMAGES, min_ratio=3 / 7,
            max_ratio=7 / 3, aspect_ratios=ASPECT_RATIOS, output_formats=("png", "jpeg"),
            safety_range=(1, 6), supports_cancel=True, label="fal",
            family_inputs=dict(FAMILY_INPUTS))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self._key}"}

    def _phases(self, total: float) -> httpx.Timeout:
        return httpx.Timeout(total, connect=self.options.connect_timeout)

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        opts = self.options
        endpoint, body = _to_request(req, opts)
        headers = self._headers()
        if opts.object_ttl:
            headers["X-Fal-Object-Lifecycle-Preference"] = json.dumps(
                {"expiration_duration_seconds": opts.object_ttl})
        resp = await transport.submit_call(
            self._client, "POST", f"{self._base}/{endpoint}", json=body, headers=headers,
            deadline=opts.submit_timeout, phases=self._phases(opts.submit_timeout))
        transport.raise_for_submit(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamAmbiguous("fal accepted with a body that is not JSON",
                                    code="ambiguous_submit") from exc
        return _from_submit(data if isinstance(data, dict) else {})

    async def _get(self, url: str) -> httpx.Response:
        return await transport.poll_call(
            self._client, "GET", url, headers=self._headers(),
            deadline=self.options.poll_timeout, phases=self._phases(self.options.poll_timeout))

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        status_url = str(job.handle.get("status_url") or job.poll_url or "")
        response_url = str(job.handle.get("response_url") or "")
        if not status_url or not response_url:
            raise UpstreamUnavailable("fal job without stored status/response URLs",
                                      code="bad_handle")
        for url in (status_url, response_url):
            if not transport.origin_allowed(url, self._base):
                return transport.refuse_url(job, url)
        resp = await self._get(status_url)
        if resp.status_code == 404:
            return _not_found(job, resp)
        transport.raise_for_poll(resp)
        if not _from_status(job, _json(resp)):
            return job
        resp = await self._get(response_url)
        if resp.status_code == 404:
            return _not_found(job, resp)
        if resp.status_code in (400, 422):  # the request ran and failed (e.g. validation)
            message = transport.error_message(resp)
            moderated = bool(_MODERATION.search(message))
            job.state = UpstreamState.MODERATED if moderated else UpstreamState.FAILED
            job.error_code = "content_moderated" if moderated else "upstream_error"
            job.error_message = message
            return job
        transport.raise_for_poll(resp)
        return _from_response(job, _json(resp))

    async def cancel(self, job: UpstreamJob) -> None:
        url = str(job.handle.get("cancel_url") or "")
        if not url:
            return
        if not transport.origin_allowed(url, self._base):
            log.warning("fal cancel of %s skipped: cancel_url is not on the channel's host",
                        job.id)
            return
        resp = await transport.poll_call(
            self._client, "PUT", url, headers=self._headers(),
            deadline=self.options.poll_timeout, phases=self._phases(self.options.poll_timeout))
        if not resp.is_success:  # 400 once processing started: nothing to cancel
            log.info("fal cancel of %s answered %s", job.id, resp.status_code)

    async def download(self, output: UpstreamOutput) -> bytes:
        return await transport.download_output(self._results, output,
                                               deadline=self.options.download_timeout,
                                               connect=self.options.connect_timeout)


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as exc:
        raise UpstreamUnavailable("fal answered with non-JSON", code="bad_answer") from exc
    return data if isinstance(data, dict) else {}


def _not_found(job: UpstreamJob, resp: httpx.Response) -> UpstreamJob:
    job.state, job.error_code = UpstreamState.NOT_FOUND, "not_found"
    job.error_message = transport.error_message(resp)
    return job
