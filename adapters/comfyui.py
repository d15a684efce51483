"""A self-hosted ComfyUI server running FLUX.1 Kontext [dev] (or a user's own API-format workflow).

Docs: https://docs.comfy.org/development/comfyui-server/comms_routes (HTTP routes),
https://github.com/comfyanonymous/ComfyUI/blob/master/server.py (the routes' code),
https://github.com/comfyanonymous/ComfyUI/blob/master/script_examples/websockets_api_example.py
(the reference client), https://docs.comfy.org/tutorials/flux/flux-1-kontext-dev (the Kontext
template), https://huggingface.co/Comfy-Org/flux1-kontext-dev_ComfyUI (model file names).

Wire contract used here (every route is also mounted under `/api`; `base_url` may carry that
prefix or a reverse proxy's path):
- `POST {base}/upload/image` multipart `image` (file) + `type=input`, `overwrite=true` ->
  `{name, subfolder, type}`; the graph's LoadImage references `name` (it may get a " (n)" suffix).
- `POST {base}/prompt` `{"prompt": <API-format graph>, "client_id"}` -> 200
  `{prompt_id, number, node_errors}`; 400 `{error, node_errors}` (the graph failed validation:
  missing model file, unknown node...) -> UpstreamRejected, not retryable.
- `GET {base}/history/{prompt_id}` -> `{}` while queued/running; once done
  `{prompt_id: {"outputs": {node_id: {"images": [{filename, subfolder, type}]}}, "status":
  {"status_str": "success"|"error", "messages": [[event, data], ...]}}}`.
- `GET {base}/view?filename=&subfolder=&type=output` -> the image bytes (SaveImage writes PNG).
- `GET {base}/queue` -> `{queue_running: [[number, prompt_id, ...]], queue_pending: [...]}`: read
  when the history is empty, so a job ComfyUI forgot (restart) ends as NOT_FOUND.
- Newer servers (ComfyUI >= 0.25 takes a client-chosen `prompt_id`; the jobs API is in 0.36,
  `comfy_execution/jobs.py`): the submit sends `prompt_id` (a lowercase uuid4 we choose; the id
  the answer names is used, so an older server's own id works too) and polls
  `GET {api}/jobs/{prompt_id}` (`{api}` = `{base}/api` unless the base already ends in `/api`):
  `{id, status: pending|in_progress|completed|failed, outputs, execution_status,
  execution_error}`, 404 with a JSON body when the server knows no such job. It answers queued,
  running, finished and forgotten apart (`/history` answers `{}` for three of them). A 404 that
  is not JSON (no such route) or a 405 means an older server: this job, and every later one on
  this adapter, falls back to `/history` + `/queue`. Cancel: `POST {api}/jobs/{id}/cancel`
  (since 0.26), else the queue delete + interrupt below. Progress over the websocket is not
  read (polls only).
- cancel: `POST {base}/queue {"delete": [prompt_id]}` (if still queued), then
  `POST {base}/interrupt {"prompt_id": prompt_id}` (if running); best effort.

The built-in graph (fixed node ids, model file names overridable in options) follows the official
Kontext-dev template: UNETLoader/DualCLIPLoader(flux)/VAELoader; CLIPTextEncode; for each input
image LoadImage -> FluxKontextImageScale -> VAEEncode -> ReferenceLatent (chained: multi-reference,
up to 4 inputs); FluxGuidance; KSampler (cfg 1, negative = ConditioningZeroOut) on an
EmptySD3LatentImage of the output bucket; VAEDecode; SaveImage. The output size is the Kontext
bucket of `req.width/req.height`, else of `req.aspect_ratio`, else of the first input's ratio,
else 1024x1024. (The template samples on the encoded input latent at denoise 1.0, where the
latent's content is replaced by noise anyway; an empty latent lets the size follow the request.)

`workflow_file` replaces the built-in graph with the user's own "Save (API)" export. Placeholder
strings are substituted anywhere in it: a string that is exactly `"{{seed}}"`, `"{{width}}"`,
`"{{height}}"`, `"{{steps}}"` or `"{{guidance}}"` becomes that number; `{{prompt}}`, `{{image}}`,
`{{image_2}}` .. `{{image_4}}` (the uploaded input names) are replaced inside any string. The
number of image tokens is the channel's `max_input_images` (the gateway stitches more inputs into
one); outputs are every `type == "output"` image unless `output_node` names one node.

Quirks and what is not confirmed:
- The template's wiring, cfg 1, euler/simple, 20 steps and guidance 2.5 come from the official
  template, not from code: UNCONFIRMED. Multi-reference quality by chaining ReferenceLatent is
  UNCONFIRMED (it is how ComfyUI's own multi-image Kontext examples do it).
- Only PNG is produced (SaveImage); capabilities say png only, so the gateway falls back to png.
- `safety_tolerance` and `prompt_upsampling` are ignored: a local model has no safety filter.
- `POST /interrupt` with a `prompt_id` body interrupts only that prompt in newer builds; older
  builds ignore the body and interrupt whatever is running: UNCONFIRMED which build has which.
  It is only sent when the job is seen running.
- A 200 from /prompt with non-empty `node_errors` (some outputs invalid, the rest queued) is
  treated as a refusal: the queued prompt is deleted (best effort) and the job is not accepted.
- No auth by default. When the channel has a secret (`api_key_env`, for a ComfyUI behind an
  authenticating proxy) it is sent as `Authorization: Bearer` to the channel's own host only.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
from adapters.buckets import bucket_for_ratio

log = logging.getLogger(__name__)
#: the `status.status_str` words of a finished /history entry (absent on old servers)
TERMINAL_STATUSES = frozenset({"success", "error"})

DEFAULT_BASE_URL = "http://127.0.0.1:8188"
MAX_REFERENCES = 4
SAVE_NODE = "10"
_IMAGE_TOKENS = ("{{image}}", "{{image_2}}", "{{image_3}}", "{{image_4}}")
_NUMBER_TOKENS = ("seed", "width", "height", "steps", "guidance")
_MAX_SEED = 2**32

Graph = dict[str, Any]


class ComfyUIOptions(transport.QueueTimeouts):
    """Channel options for a ComfyUI channel (all times in seconds)."""

    models: tuple[str, ...] = ("flux-kontext-dev",)
    unet_name: str = "flux1-dev-kontext_fp8_scaled.safetensors"
    weight_dtype: str = "default"
    clip_l: str = "clip_l.safetensors"
    t5xxl: str = "t5xxl_fp8_e4m3fn_scaled.safetensors"
    vae_name: str = "ae.safetensors"
    steps: int = Field(default=20, ge=1, le=200)
    guidance: float = Field(default=2.5, ge=0, le=100)
    sampler: str = "euler"
    scheduler: str = "simple"
    filename_prefix: str = "fluxgate"
    workflow_file: Path | None = None  # a "Save (API)" export with {{placeholders}}
    output_node: str | None = None  # only this node's images (default: every "output" image)
    client_id: str = "fluxgate"


def output_size(req: UpstreamRequest) -> tuple[int, int]:
    """The Kontext bucket to render: of width/height, else aspect_ratio, else the first input."""
    if req.width and req.height:
        return bucket_for_ratio(req.width / req.height)
    if req.aspect_ratio:
        w, h = (float(x) for x in req.aspect_ratio.split(":"))
        return bucket_for_ratio(w / h)
    if req.images:
        return bucket_for_ratio(req.images[0].width / req.images[0].height)
    return 1024, 1024


def _knob(req: UpstreamRequest, name: str, default: float) -> float:
    value = req.extra.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else default


def _to_request(req: UpstreamRequest, options: ComfyUIOptions, image_names: list[str],
                seed: int, workflow: Graph | None = None) -> Graph:
    """The API-format graph for `req`, its inputs already uploaded as `image_names`.

    Raises UpstreamRejected (retryable: another channel may serve it) when the graph cannot
    take the inputs.
    """
    width, height = output_size(req)
    steps = int(_knob(req, "steps", options.steps))
    guidance = _knob(req, "guidance", options.guidance)
    if workflow is not None:
        return _fill(workflow, req.prompt, image_names, {
            "seed": seed, "width": width, "height": height, "steps": steps,
            "guidance": guidance})
    if len(image_names) > MAX_REFERENCES:
        raise UpstreamRejected(f"ComfyUI channel takes at most {MAX_REFERENCES} input images",
                               code="unsupported_request", retryable=True)
    graph: Graph = {
        "1": _node("UNETLoader", unet_name=options.unet_name, weight_dtype=options.weight_dtype),
        "2": _node("DualCLIPLoader", clip_name1=options.clip_l, clip_name2=options.t5xxl,
                   type="flux"),
        "3": _node("VAELoader", vae_name=options.vae_name),
        "4": _node("CLIPTextEncode", text=req.prompt, clip=["2", 0]),
        "5": _node("ConditioningZeroOut", conditioning=["4", 0]),
    }
    conditioning = ["4", 0]
    for i, name in enumerate(image_names):
        base = 100 + 10 * i
        load, scale, encode, ref = (str(base + k) for k in range(4))
        graph[load] = _node("LoadImage", image=name)
        graph[scale] = _node("FluxKontextImageScale", image=[load, 0])
        graph[encode] = _node("VAEEncode", pixels=[scale, 0], vae=["3", 0])
        graph[ref] = _node("ReferenceLatent", conditioning=conditioning, latent=[encode, 0])
        conditioning = [ref, 0]
    graph["6"] = _node("FluxGuidance", conditioning=conditioning, guidance=guidance)
    graph["7"] = _node("EmptySD3LatentImage", width=width, height=height, batch_size=1)
    graph["8"] = _node("KSampler", model=["1", 0], positive=["6", 0], negative=["5", 0],
                       latent_image=["7", 0], seed=seed, steps=steps, cfg=1.0,
                       sampler_name=options.sampler, scheduler=options.scheduler, denoise=1.0)
    graph["9"] = _node("VAEDecode", samples=["8", 0], vae=["3", 0])
    graph[SAVE_NODE] = _node("SaveImage", images=["9", 0], filename_prefix=options.filename_prefix)
    return graph


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def image_slots(workflow: Graph) -> int:
    """How many input images a workflow takes: its leading image tokens present."""
    text = json.dumps(workflow)
    count = 0
    for token in _IMAGE_TOKENS:
        if token not in text:
            break
        count += 1
    return count


def _fill(workflow: Graph, prompt: str, image_names: list[str],
          numbers: dict[str, int | float]) -> Graph:
    """A copy of `workflow` with its placeholders substituted (see the module docstring)."""
    slots = image_slots(workflow)
    if len(image_names) > slots:
        raise UpstreamRejected(f"this ComfyUI workflow takes {slots} input image(s)",
                               code="unsupported_request", retryable=True)
    if len(image_names) < slots:
        raise UpstreamRejected(f"this ComfyUI workflow needs {slots} input image(s)",
                               code="unsupported_request", retryable=True)
    texts = {"{{prompt}}": prompt, **dict(zip(_IMAGE_TOKENS, image_names, strict=False))}
    exact: dict[str, int | float] = {f"{{{{{k}}}}}": v for k, v in numbers.items()}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str):
            if value in exact:
                return exact[value]
            for token, text in texts.items():
                value = value.replace(token, text)
            return value
        return value

    filled: Graph = walk(workflow)
    return filled


def load_workflow(path: Path) -> Graph:
    """The API-format graph in `path`; raises ValueError for a missing or malformed file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"workflow_file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
            isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise ValueError(f"workflow_file {path}: not an API-format workflow "
                         "(export it with \"Save (API)\")")
    return data


def _rejection(data: dict[str, Any]) -> str:
    """A readable message from /prompt's `error` and `node_errors`."""
    error = data.get("error")
    parts = [str(error.get("message") or error.get("type")) if isinstance(error, dict)
             else str(error or "ComfyUI refused the workflow")]
    node_errors = data.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            msgs = [f"{e.get('message', '')}: {e.get('details', '')}".rstrip(": ")
                    for e in info.get("errors", []) if isinstance(e, dict)]
            parts.append(f"node {node_id} ({info.get('class_type', '?')}): {'; '.join(msgs)}")
    return "; ".join(parts)[:500]


def _from_response(job: UpstreamJob, data: dict[str, Any], base: str,
                   output_node: str | None = None) -> UpstreamJob:
    """Update `job` from a /history/{prompt_id} answer (`{}`: still queued or running)."""
    entry = data.get(job.id)
    if not isinstance(entry, dict):
        job.state = UpstreamState.PENDING
        return job
    raw_status = entry.get("status")
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    messages = [m for m in status.get("messages", []) if isinstance(m, list) and len(m) == 2]
    events = {str(m[0]): m[1] for m in messages}
    if "execution_interrupted" in events:
        job.state, job.error_code = UpstreamState.CANCELED, "canceled"
        job.error_message = "interrupted on the ComfyUI server"
        return job
    status_str = status.get("status_str")
    if status_str == "error":
        job.state, job.error_code = UpstreamState.FAILED, "upstream_error"
        job.error_message = _execution_error(events.get("execution_error"))
        return job
    if status_str is not None and status_str not in TERMINAL_STATUSES:
        # only the documented terminal words end a job: another one is polled until the
        # deadline (failing it could release a job the server then finishes), logged once
        if job.handle.get("unknown_status") != status_str:
            log.warning("ComfyUI prompt %s reports status %r, not a documented one: still "
                        "polling", job.id, status_str)
            job.handle["unknown_status"] = status_str
        job.state = UpstreamState.PENDING
        return job
    raw_outputs = entry.get("outputs")
    outputs: dict[str, Any] = raw_outputs if isinstance(raw_outputs, dict) else {}
    found: list[UpstreamOutput] = []
    for node_id, out in outputs.items():
        if output_node is not None and node_id != output_node:
            continue
        for img in out.get("images", []) if isinstance(out, dict) else []:
            if isinstance(img, dict) and img.get("type", "output") == "output" \
                    and img.get("filename"):
                query = urlencode({"filename": img["filename"],
                                   "subfolder": img.get("subfolder", ""), "type": "output"})
                found.append(UpstreamOutput(url=f"{base}/view?{query}"))
    if not found:
        job.state, job.error_code = UpstreamState.FAILED, "upstream_error"
        job.error_message = "ComfyUI finished without an output image (is there a SaveImage node?)"
        return job
    job.state, job.outputs, job.progress = UpstreamState.SUCCEEDED, found, 1.0
    return job


def _from_job(job: UpstreamJob, data: dict[str, Any], base: str,
              output_node: str | None = None) -> UpstreamJob:
    """Update `job` from a `GET /api/jobs/{id}` answer (`{}`: the server knows no such job)."""
    status = data.get("status")
    if not data:
        job.state, job.error_code = UpstreamState.NOT_FOUND, "not_found"
        job.error_message = "ComfyUI no longer knows this prompt (restarted?)"
        return job
    if status in ("pending", "in_progress"):
        job.state = UpstreamState.PENDING
        job.handle["running"] = status == "in_progress"
        return job
    if status not in ("completed", "failed"):  # only documented words end a job
        if job.handle.get("unknown_status") != status:
            log.warning("ComfyUI job %s reports status %r, not a documented one: still "
                        "polling", job.id, status)
            job.handle["unknown_status"] = str(status)
        job.state = UpstreamState.PENDING
        return job
    raw = data.get("execution_status")
    execution: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    execution.setdefault("status_str", "error" if status == "failed" else "success")
    if status == "failed" and data.get("execution_error") and not any(
            isinstance(m, list) and m and m[0] == "execution_error"
            for m in execution.get("messages", [])):
        execution["messages"] = [*execution.get("messages", []),
                                 ["execution_error", data["execution_error"]]]
    entry = {"outputs": data.get("outputs") or {}, "status": execution}
    return _from_response(job, {job.id: entry}, base, output_node)


def _execution_error(data: Any) -> str:
    if not isinstance(data, dict):
        return "ComfyUI execution failed"
    where = f"{data.get('node_type', '?')} (node {data.get('node_id', '?')})"
    what = ": ".join(str(data[k]) for k in ("exception_type", "exception_message") if data.get(k))
    return f"{where}: {what or 'execution failed'}"[:500]


def _in_queue(data: dict[str, Any], prompt_id: str) -> str | None:
    """"running", "pending" or None: where /queue lists `prompt_id`."""
    for key, where in (("queue_running", "running"), ("queue_pending", "pending")):
        for item in data.get(key, []) or []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return where
    return None


class ComfyUIAdapter:
    """ComfyUI server adapter (see the module docstring)."""

    def __init__(self, options: ComfyUIOptions, secret: str | None, base_url: str | None,
                 client: httpx.AsyncClient, results: httpx.AsyncClient | None = None) -> None:
        self.options = options
        self._key = secret
        self._base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._client = client
        self._results = results or client  # result URLs: the gateway's guarded client
        self._workflow = load_workflow(options.workflow_file) if options.workflow_file else None
        # None: not known yet; False: this server has no /api/jobs (an older ComfyUI)
        self._jobs_api: bool | None = None
        self._api = self._base if self._base.endswith("/api") else self._base + "/api"
        slots = image_slots(self._workflow) if self._workflow is not None else MAX_REFERENCES
        self.capabilities = Capabilities(
            models=options.models, max_input_images=slots, min_ratio=3 / 7, max_ratio=7 / 3,
            output_formats=("png",), safety_range=(0, 6), supports_cancel=True, label="comfyui")

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        return headers

    def _phases(self, total: float) -> httpx.Timeout:
        return httpx.Timeout(total, connect=self.options.connect_timeout)

    async def _upload(self, data: bytes, mime: str) -> str:
        """Upload one input; a failure before /prompt never started a job, so it is retryable."""
        ext = {"image/jpeg": "jpg", "image/webp": "webp"}.get(mime, "png")
        opts = self.options
        try:
            resp = await transport.submit_call(
                self._client, "POST", f"{self._base}/upload/image", headers=self._headers(),
                files={"image": (f"fluxgate-{uuid.uuid4().hex}.{ext}", data, mime)},
                data={"type": "input", "overwrite": "true"},
                deadline=opts.submit_timeout, phases=self._phases(opts.submit_timeout))
        except UpstreamAmbiguous as exc:
            raise UpstreamRejected(f"input upload failed: {exc.message}", code="upload_failed",
                                   retryable=True) from exc
        transport.raise_for_submit(resp)
        try:
            body = resp.json()
        except ValueError:
            body = None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise UpstreamRejected("ComfyUI upload answered without a name", code="upload_failed",
                                   retryable=True)
        subfolder = body.get("subfolder") if isinstance(body, dict) else None
        return f"{subfolder}/{name}" if subfolder else name

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        names = [await self._upload(image.data, image.mime) for image in req.images]
        seed = req.seed if req.seed is not None else secrets.randbelow(_MAX_SEED)
        graph = _to_request(req, self.options, names, seed, self._workflow)
        opts = self.options
        prompt_id = str(uuid.uuid4())  # client-chosen (ComfyUI >= 0.25 keeps it)
        resp = await transport.submit_call(
            self._client, "POST", f"{self._base}/prompt", headers=self._headers(),
            json={"prompt": graph, "client_id": opts.client_id, "prompt_id": prompt_id},
            deadline=opts.submit_timeout, phases=self._phases(opts.submit_timeout))
        data = _json_or_none(resp)
        if resp.status_code == 400 and isinstance(data, dict):
            raise UpstreamRejected(_rejection(data), status=400, code="invalid_workflow",
                                   retryable=False)
        transport.raise_for_submit(resp)
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            raise UpstreamAmbiguous("ComfyUI accepted without a prompt_id",
                                    code="ambiguous_submit")
        job = UpstreamJob(id=data["prompt_id"], handle={
            "history_path": f"/history/{data['prompt_id']}", "seed": seed,
            "jobs_path": f"/jobs/{data['prompt_id']}" if self._jobs_api is not False
            else None}, progress=0.0)
        if data.get("node_errors"):
            await self.cancel(job)
            raise UpstreamRejected(_rejection(data), code="invalid_workflow", retryable=False)
        return job

    async def _get(self, path: str) -> dict[str, Any]:
        opts = self.options
        resp = await transport.poll_call(
            self._client, "GET", self._base + path, headers=self._headers(),
            deadline=opts.poll_timeout, phases=self._phases(opts.poll_timeout))
        transport.raise_for_poll(resp)
        data = _json_or_none(resp)
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"ComfyUI {path} answer is not a JSON object",
                                      code="bad_answer")
        return data

    async def _jobs_answer(self, job: UpstreamJob) -> dict[str, Any] | None:
        """The /api/jobs/{id} answer; None (and the job falls back to /history) on a server
        without that route; {} when the server knows no such job."""
        path = job.handle.get("jobs_path")
        if not isinstance(path, str) or self._jobs_api is False:
            return None
        opts = self.options
        resp = await transport.poll_call(
            self._client, "GET", self._api + path, headers=self._headers(),
            deadline=opts.poll_timeout, phases=self._phases(opts.poll_timeout))
        data = _json_or_none(resp)
        if resp.status_code in (404, 405) and not isinstance(data, dict):
            log.info("ComfyUI at %s has no /api/jobs: polling /history", self._base)
            self._jobs_api = False
            job.handle["jobs_path"] = None
            return None
        if resp.status_code == 404:
            return {}
        transport.raise_for_poll(resp)
        if not isinstance(data, dict):
            raise UpstreamUnavailable("ComfyUI /api/jobs answer is not a JSON object",
                                      code="bad_answer")
        self._jobs_api = True
        return data

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        answer = await self._jobs_answer(job)
        if answer is not None:
            return _from_job(job, answer, self._base, self.options.output_node)
        path = str(job.handle.get("history_path") or f"/history/{job.id}")
        data = await self._get(path)
        if job.id in data:
            return _from_response(job, data, self._base, self.options.output_node)
        where = _in_queue(await self._get("/queue"), job.id)
        if where is None:  # finished between the two reads, or forgotten by a restart
            data = await self._get(path)
            if job.id not in data:
                job.state, job.error_code = UpstreamState.NOT_FOUND, "not_found"
                job.error_message = "ComfyUI no longer knows this prompt (restarted?)"
                return job
            return _from_response(job, data, self._base, self.options.output_node)
        job.state = UpstreamState.PENDING
        job.handle["running"] = where == "running"
        return job

    async def cancel(self, job: UpstreamJob) -> None:
        """Cancel through /api/jobs where the server has it; else delete the prompt from the
        queue, then interrupt it if it is running; best effort."""
        opts = self.options
        if isinstance(job.handle.get("jobs_path"), str) and self._jobs_api is not False:
            try:
                resp = await transport.poll_call(
                    self._client, "POST", f"{self._api}{job.handle['jobs_path']}/cancel",
                    headers=self._headers(), json={}, deadline=opts.poll_timeout,
                    phases=self._phases(opts.poll_timeout))
            except UpstreamUnavailable as exc:
                log.info("ComfyUI cancel of %s failed: %s", job.id, exc.message)
                return
            if resp.is_success:
                return
            if resp.status_code not in (404, 405) or isinstance(_json_or_none(resp), dict):
                log.info("ComfyUI cancel of %s answered %s", job.id, resp.status_code)
                return
        for path, body in (("/queue", {"delete": [job.id]}), ("/interrupt", {"prompt_id": job.id})):
            try:
                if path == "/interrupt" and \
                        _in_queue(await self._get("/queue"), job.id) != "running":
                    return
                resp = await transport.poll_call(
                    self._client, "POST", self._base + path, headers=self._headers(), json=body,
                    deadline=opts.poll_timeout, phases=self._phases(opts.poll_timeout))
            except UpstreamUnavailable as exc:
                log.info("ComfyUI cancel of %s: %s failed: %s", job.id, path, exc.message)
                return
            if not resp.is_success:
                log.info("ComfyUI cancel of %s: %s answered %s", job.id, path, resp.status_code)

    async def download(self, output: UpstreamOutput) -> bytes:
        own = bool(output.url and output.url.startswith(self._base + "/"))
        headers = self._headers() if own and self._key else None
        return await transport.download_output(self._results, output,
                                               deadline=self.options.download_timeout,
                                               connect=self.options.connect_timeout,
                                               headers=headers)


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None
