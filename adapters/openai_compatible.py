"""Any OpenAI-compatible image API (resellers, other gateways, another fluxgate).

Docs: https://platform.openai.com/docs/api-reference/images (generations, edits, the error
envelope `{"error": {message, type, param, code}}`). Resellers that serve Kontext this way are
observed, not authoritative (see shared/reference/upstreams.md §7: new-api maps `size` to
`aspect_ratio`; some pass BFL's 10-minute URLs through unchanged).

Wire contract used here:
- `Authorization: Bearer <key>`; `base_url` may or may not end in `/v1` (both work).
- No input image: `POST {base}/v1/images/generations`, JSON `{model, prompt, n: 1,
  response_format, size?, aspect_ratio?, seed?, output_format?, output_compression?,
  safety_tolerance?, prompt_upsampling?}`; `output_format` is OpenAI's png|jpeg|webp (all three
  are asked for as they are), `output_compression` (0-100) is sent for jpeg/webp when the
  client asked for a quality; the Kontext knobs are top-level fields (our own API accepts them the
  same way; an upstream that does not know them is expected to ignore them; set
  `kontext_fields: false` for a strict one). `size` is the expected Kontext bucket `WxH`.
- Input images: `POST {base}/v1/images/edits`, multipart with one `image[]` part per image
  (the field name is an option) and the other fields as text parts.
- Synchronous: `submit()` answers a job that is already terminal; `data[].b64_json` is decoded
  into `UpstreamOutput(data=...)`, `data[].url` is downloaded later (fetch it at once: it may
  be a 10-minute BFL URL).
- Moderation: an error whose `code` is `content_policy_violation` or `moderation_blocked`
  (OpenAI's names) is NOT raised: `submit()` answers a job in state MODERATED, the same way a
  BFL "Request Moderated" arrives, so the job service needs no special case and the breaker
  counts a healthy upstream. Other errors follow the shared mapping in `adapters.transport`.
- A read timeout after the request was sent is ambiguous (the reseller may have charged);
  never re-submitted.
- Model names come from the channel's `models` mapping (ours → the reseller's).
- Open diffusion servers: vLLM-Omni (`vllm serve black-forest-labs/FLUX.2-dev --omni`,
  docs.vllm.ai/projects/vllm-omni: serving/image_generation_api) and SGLang diffusion
  (`sglang serve --model-path ...`) answer the same `/v1/images/generations` (and
  `/images/edits`) with `data[].b64_json`, and take `size`, `seed`, `num_inference_steps` and
  `guidance_scale` top-level: `diffusion_fields: true`, `kontext_fields: false` (see the README's
  "Chaining open servers" example). No key unless the server was started with one.
UNCONFIRMED: which Kontext extras a given reseller honours; whether it bills moderated images.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from adapters import transport
from adapters.base import (
    Capabilities,
    UpstreamAmbiguous,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRequest,
    UpstreamState,
)

_MODERATION_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class OpenAICompatibleOptions(BaseModel):
    """Channel options for an OpenAI-compatible channel (times in seconds)."""

    model_config = ConfigDict(extra="forbid")

    response_format: Literal["b64_json", "url"] = "b64_json"
    send_size: bool = True  # send `size` = the expected bucket, e.g. "1392x752"
    kontext_fields: bool = True  # send aspect_ratio/seed/output_format/... as top-level fields
    # open diffusion servers (vLLM-Omni, SGLang): send the job's `steps` and `guidance` as
    # `num_inference_steps` and `guidance_scale`, and `seed`, top-level (their own names)
    diffusion_fields: bool = False
    image_field: str = "image[]"  # multipart field of the input images on /images/edits
    models: tuple[str, ...] = ("flux-kontext-pro", "flux-kontext-max", "flux-kontext-dev")
    max_input_images: int = Field(default=4, ge=1, le=16)
    connect_timeout: float = Field(default=5.0, gt=0)
    # the whole synchronous generation: resellers hold the request 10-90 s, some longer
    request_timeout: float = Field(default=300.0, gt=0)
    download_timeout: float = Field(default=30.0, gt=0)


def api_root(base_url: str) -> str:
    """`https://host` or `https://host/v1/` → `https://host/v1`."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def _fields(req: UpstreamRequest, opts: OpenAICompatibleOptions) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": req.model, "prompt": req.prompt, "n": 1,
                              "response_format": opts.response_format}
    if opts.send_size and req.width and req.height:
        fields["size"] = f"{req.width}x{req.height}"
    if opts.kontext_fields:
        if req.aspect_ratio:
            fields["aspect_ratio"] = req.aspect_ratio
        if req.seed is not None:
            fields["seed"] = req.seed
        fields["output_format"] = req.output_format
        if req.quality is not None and req.output_format in ("jpeg", "webp"):
            fields["output_compression"] = req.quality  # OpenAI: 0-100, jpeg and webp only
        if req.safety_tolerance is not None:
            fields["safety_tolerance"] = req.safety_tolerance
        if req.prompt_upsampling:
            fields["prompt_upsampling"] = True
    if opts.diffusion_fields:
        if req.seed is not None:
            fields["seed"] = req.seed
        for ours, theirs, kind in (("steps", "num_inference_steps", int),
                                   ("guidance", "guidance_scale", float)):
            value = req.extra.get(ours)
            if ours == "steps" and value is None:
                value = req.extra.get("num_inference_steps")
            if isinstance(value, int | float) and not isinstance(value, bool):
                fields[theirs] = kind(value)
    return fields


def _to_request(req: UpstreamRequest, opts: OpenAICompatibleOptions) -> tuple[str, dict[str, Any]]:
    """The path under `/v1` and the httpx keyword arguments (json=, or data= and files=)."""
    fields = _fields(req, opts)
    if not req.images:
        return "/images/generations", {"json": fields}
    text = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in fields.items()}
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
    files = [(opts.image_field, (f"image_{i}.{ext.get(im.mime, 'png')}", im.data, im.mime))
             for i, im in enumerate(req.images)]
    return "/images/edits", {"data": text, "files": files}


def _from_response(data: dict[str, Any], mime: str) -> UpstreamJob:
    """A synchronous images answer → a terminal job."""
    job = UpstreamJob(id=f"oai_{uuid.uuid4().hex}", progress=1.0)
    raw = data.get("data")
    items: list[Any] = raw if isinstance(raw, list) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("b64_json"), str):
            try:
                job.outputs.append(UpstreamOutput(data=base64.b64decode(item["b64_json"]),
                                                  content_type=mime))
            except (binascii.Error, ValueError):
                continue
        elif isinstance(item.get("url"), str):
            job.outputs.append(UpstreamOutput(url=item["url"], content_type=mime))
    if job.outputs:
        job.state = UpstreamState.SUCCEEDED
    else:
        job.state, job.error_code = UpstreamState.FAILED, "upstream_error"
        job.error_message = "the upstream answered without images"
    return job


def _moderated(resp: httpx.Response) -> UpstreamJob | None:
    """The MODERATED job for an OpenAI content-policy error, else None."""
    try:
        body = resp.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or error.get("code") not in _MODERATION_CODES:
        return None
    return UpstreamJob(id=f"oai_{uuid.uuid4().hex}", state=UpstreamState.MODERATED,
                       error_code="content_moderated",
                       error_message=str(error.get("message") or error.get("code")))


class OpenAICompatibleAdapter:
    """OpenAI-compatible images adapter (see the module docstring)."""

    def __init__(self, options: OpenAICompatibleOptions, secret: str | None, base_url: str | None,
                 client: httpx.AsyncClient, results: httpx.AsyncClient | None = None) -> None:
        if not base_url:
            raise ValueError("an openai channel needs a base_url")
        self.options = options
        self._key = secret
        self._root = api_root(base_url)
        self._client = client
        self._results = results or client  # result URLs: the gateway's guarded client
        self.capabilities = Capabilities(
            models=options.models, max_input_images=options.max_input_images,
            output_formats=("png", "jpeg", "webp"), safety_range=(0, 6), supports_cancel=False,
            label="openai")

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        opts = self.options
        path, kwargs = _to_request(req, opts)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        resp = await transport.submit_call(
            self._client, "POST", self._root + path, headers=headers,
            deadline=opts.request_timeout,
            phases=httpx.Timeout(opts.request_timeout, connect=opts.connect_timeout), **kwargs)
        if not resp.is_success and (moderated := _moderated(resp)) is not None:
            return moderated
        transport.raise_for_submit(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamAmbiguous("the upstream answered 2xx with a body that is not JSON",
                                    code="ambiguous_submit") from exc
        return _from_response(data if isinstance(data, dict) else {},
                              _MIME.get(req.output_format, "image/png"))

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        """Synchronous upstream: the job is already terminal."""
        return job

    async def cancel(self, job: UpstreamJob) -> None:
        """Synchronous upstream: nothing to cancel."""

    async def download(self, output: UpstreamOutput) -> bytes:
        return await transport.download_output(self._results, output,
                                               deadline=self.options.download_timeout,
                                               connect=self.options.connect_timeout)
