"""fluxgate's own local diffusers workers (`fluxgate worker`), several behind one channel.

The worker's job API is documented in `worker/server.py` (submit `POST /v1/jobs` with an id we
choose, poll `GET /v1/jobs/{id}`, bytes from `GET /v1/jobs/{id}/result`, cancel
`POST /v1/jobs/{id}/cancel`, `GET /health` with queue depth, device, memory and model). This
adapter speaks it over HTTP only: it never imports the worker (torch is an optional extra).

Routing and failure (options: `workers`, the channel's `base_url` counts as one more):
- Each submit goes to the least-loaded healthy worker: load is the larger of what its
  `/health` reported (`queue_depth + running`, trusted for `health_ttl` s) and the jobs this
  adapter placed there and has not seen end; ties go to the first listed.
- A worker that refuses a connection, times out or answers 5xx is taken out for `retry_down`
  seconds (then probed again with `/health`); 429 (queue full) tries the next worker.
- A job whose worker stops answering while the job was still queued there (never started) is
  placed again on another worker with the same request: it fails over. A job that had started
  is followed on its worker (polls retry: a busy or briefly unreachable worker answers again)
  and fails only when the worker has not answered for `lost_after` seconds, or answers that
  it does not know the job (it restarted). Only the one job the gateway follows is charged.
  The request kept for failover lives in this process's memory: after a gateway restart a
  queued job whose worker died fails instead of failing over.
- A submit whose answer is lost after it was sent is not repeated on that worker; the next
  worker gets it (the job id is ours, so a worker that did queue it runs it unwatched: wasted
  work, never a second charge).
- Auth: the channel's secret (`api_key_env`) is sent as `Authorization: Bearer` to the
  configured worker URLs only; results come back inline (no URL to fetch).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from adapters.base import (
    Capabilities,
    UpstreamAuthError,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8200"
_STATES = {"succeeded": UpstreamState.SUCCEEDED, "failed": UpstreamState.FAILED,
           "canceled": UpstreamState.CANCELED}


class LocalWorkerOptions(BaseModel):
    """Channel options for `type: local_worker` (times in seconds)."""

    model_config = ConfigDict(extra="forbid")

    workers: list[str] = Field(default_factory=list)  # worker base URLs, besides base_url
    models: tuple[str, ...] = ("flux-kontext-dev",)
    max_input_images: int = Field(default=1, ge=1, le=10)  # Kontext 1, FLUX.2 up to 10
    steps: int | None = Field(default=None, ge=1)  # default: the worker's family default
    guidance: float | None = Field(default=None, ge=0)
    health_ttl: float = Field(default=2.0, ge=0)
    retry_down: float = Field(default=10.0, gt=0)
    lost_after: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=2.0, gt=0)
    submit_timeout: float = Field(default=60.0, gt=0)
    poll_timeout: float = Field(default=10.0, gt=0)


@dataclass(slots=True)
class _Worker:
    url: str
    down_until: float = 0.0
    load: int = 0  # from /health
    health_at: float = float("-inf")
    healthy: bool = False
    placed: set[str] = field(default_factory=set)  # our job ids not seen ending


def _to_request(req: UpstreamRequest, opts: LocalWorkerOptions, job_id: str) -> dict[str, Any]:
    """The worker's `POST /v1/jobs` body for `req`."""
    body: dict[str, Any] = {"id": job_id, "prompt": req.prompt,
                            "output_format": req.output_format}
    if req.width and req.height:
        body["width"], body["height"] = req.width, req.height
    if req.seed is not None and req.seed >= 0:  # BFL's -1 means "any": the worker draws one
        body["seed"] = req.seed
    steps = req.extra.get("steps", req.extra.get("num_inference_steps", opts.steps))
    guidance = req.extra.get("guidance", opts.guidance)
    if isinstance(steps, int | float) and not isinstance(steps, bool):
        body["steps"] = int(steps)
    if isinstance(guidance, int | float) and not isinstance(guidance, bool):
        body["guidance"] = float(guidance)
    if req.images:
        body["images"] = [base64.b64encode(im.data).decode("ascii") for im in req.images]
    return body


def _from_response(job: UpstreamJob, data: dict[str, Any]) -> UpstreamJob:
    """Update `job` from a worker's job view (the result bytes are fetched separately)."""
    status = str(data.get("status"))
    progress = data.get("progress")
    if isinstance(progress, int | float):
        job.progress = float(progress)
    if status in ("queued", "running"):
        job.state = UpstreamState.PENDING
        if status == "running":
            job.handle["started"] = True
        return job
    job.state = _STATES.get(status, UpstreamState.FAILED)
    if job.state is UpstreamState.FAILED:
        job.error_code = "upstream_error"
        job.error_message = str(data.get("error") or f"the worker reports {status!r}")[:500]
    elif job.state is UpstreamState.CANCELED:
        job.error_code, job.error_message = "canceled", "canceled on the worker"
    return job


class LocalWorkerAdapter:
    """Several `fluxgate worker` processes behind one channel (see the module docstring)."""

    def __init__(self, options: LocalWorkerOptions, secret: str | None, base_url: str | None,
                 client: httpx.AsyncClient, clock: Any = time.monotonic) -> None:
        urls = ([base_url] if base_url else []) + list(options.workers)
        urls = list(dict.fromkeys(u.rstrip("/") for u in urls)) or [DEFAULT_BASE_URL]
        self.options = options
        self._workers = {u: _Worker(u) for u in urls}
        self._key = secret
        self._client = client
        self._clock = clock
        self._pending: dict[str, dict[str, Any]] = {}  # job id -> body, for failover
        self.capabilities = Capabilities(
            models=options.models, max_input_images=options.max_input_images,
            output_formats=("png", "jpeg", "webp"), safety_range=(0, 6), supports_cancel=True,
            label="local")

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}"} if self._key else {}

    def _timeout(self, total: float) -> httpx.Timeout:
        return httpx.Timeout(total, connect=self.options.connect_timeout)

    def _down(self, worker: _Worker, why: str) -> None:
        if worker.down_until <= self._clock():
            log.warning("local worker %s taken out for %.0f s: %s", worker.url,
                        self.options.retry_down, why)
        worker.healthy, worker.down_until = False, self._clock() + self.options.retry_down

    async def _refresh(self, worker: _Worker) -> None:
        now = self._clock()
        if now < worker.down_until or now - worker.health_at < self.options.health_ttl:
            return
        try:
            resp = await self._client.get(f"{worker.url}/health", headers=self._headers(),
                                          timeout=self._timeout(self.options.poll_timeout))
            data = resp.json() if resp.is_success else None
        except (httpx.HTTPError, ValueError) as exc:
            self._down(worker, type(exc).__name__)
            return
        if not isinstance(data, dict) or data.get("status") != "ok":
            self._down(worker, f"/health answered {resp.status_code}")
            return
        worker.health_at, worker.healthy = now, True
        worker.load = int(data.get("queue_depth") or 0) + int(data.get("running") or 0)

    async def _ranked(self, exclude: set[str]) -> list[_Worker]:
        """Healthy workers not in `exclude`, least loaded first."""
        candidates = [w for w in self._workers.values() if w.url not in exclude]
        await asyncio.gather(*(self._refresh(w) for w in candidates))
        order = {u: i for i, u in enumerate(self._workers)}
        healthy = [w for w in candidates if w.healthy and self._clock() >= w.down_until]
        return sorted(healthy, key=lambda w: (max(w.load, len(w.placed)), order[w.url]))

    async def _place(self, body: dict[str, Any], exclude: set[str]) -> _Worker:
        """Queue `body` on the best worker that takes it; raises UpstreamRejected (retryable)
        when none does, UpstreamAuthError on 401/403, UpstreamRejected for a refused job."""
        tried = set(exclude)
        full = False
        while True:
            ranked = await self._ranked(tried)
            if not ranked:
                raise UpstreamRejected(
                    "every local worker is " + ("busy (queue full)" if full else
                                                "unreachable or out of service"),
                    status=429 if full else 503, code="no_worker", retryable=True,
                    retry_after=1.0 if full else None)
            worker = ranked[0]
            tried.add(worker.url)
            try:
                resp = await self._client.post(f"{worker.url}/v1/jobs", json=body,
                                               headers=self._headers(),
                                               timeout=self._timeout(self.options.submit_timeout))
            except httpx.HTTPError as exc:
                self._down(worker, type(exc).__name__)
                continue
            if resp.status_code in (401, 403):
                raise UpstreamAuthError(f"worker {worker.url}: {_message(resp)}",
                                        status=resp.status_code)
            if resp.status_code == 429:
                full = True
                continue
            if resp.status_code >= 500:
                self._down(worker, f"submit answered {resp.status_code}")
                continue
            if not resp.is_success:
                raise UpstreamRejected(f"worker {worker.url}: {_message(resp)}",
                                       status=resp.status_code, code="invalid_request",
                                       retryable=False)
            worker.placed.add(str(body["id"]))
            return worker

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        job_id = f"lw_{uuid.uuid4().hex}"
        body = _to_request(req, self.options, job_id)
        worker = await self._place(body, set())
        self._pending[job_id] = body
        return UpstreamJob(id=job_id, poll_url=f"{worker.url}/v1/jobs/{job_id}", progress=0.0,
                           handle={"worker": worker.url, "started": False})

    def _release(self, job: UpstreamJob) -> None:
        worker = self._workers.get(str(job.handle.get("worker")))
        if worker is not None:
            worker.placed.discard(job.id)

    async def _fail_over(self, job: UpstreamJob, worker_url: str) -> bool:
        """Place a never-started job on another worker; False when it cannot be."""
        body = self._pending.get(job.id)
        if body is None or job.handle.get("started"):
            return False
        try:
            target = await self._place(body, {worker_url})
        except UpstreamRejected as exc:
            log.warning("job %s: cannot fail over from %s: %s", job.id, worker_url, exc.message)
            return False
        self._release(job)
        log.warning("job %s failed over from %s to %s (it had not started)", job.id,
                    worker_url, target.url)
        job.handle.update(worker=target.url, lost_since=None)
        job.poll_url = f"{target.url}/v1/jobs/{job.id}"
        job.state = UpstreamState.PENDING
        return True

    def _lost(self, job: UpstreamJob, url: str, why: str) -> UpstreamJob:
        """A started job's worker did not answer: retry later, or fail after `lost_after`."""
        now = time.time()
        since = job.handle.get("lost_since")
        if not isinstance(since, int | float):
            job.handle["lost_since"] = since = now
        if now - since < self.options.lost_after:
            raise UpstreamUnavailable(f"worker {url} did not answer ({why})", retry_after=1.0)
        self._finish(job)
        job.state, job.error_code = UpstreamState.FAILED, "upstream_error"
        job.error_message = (f"the local worker {url} stopped answering while it ran the job "
                             f"(nothing for {self.options.lost_after:.0f} s)")
        return job

    def _finish(self, job: UpstreamJob) -> None:
        self._release(job)
        self._pending.pop(job.id, None)

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        url = str(job.handle.get("worker") or "")
        worker = self._workers.get(url) or self._workers.setdefault(url, _Worker(url))
        try:
            resp = await self._client.get(f"{url}/v1/jobs/{job.id}", headers=self._headers(),
                                          timeout=self._timeout(self.options.poll_timeout))
        except httpx.HTTPError as exc:
            self._down(worker, type(exc).__name__)
            if await self._fail_over(job, url):
                return job
            return self._lost(job, url, type(exc).__name__)
        if resp.status_code == 404:
            if await self._fail_over(job, url):
                return job
            self._finish(job)
            job.state, job.error_code = UpstreamState.NOT_FOUND, "not_found"
            job.error_message = f"the local worker {url} no longer knows the job (restarted?)"
            return job
        if not resp.is_success:
            if resp.status_code >= 500:
                self._down(worker, f"poll answered {resp.status_code}")
            raise UpstreamUnavailable(f"worker {url}: {_message(resp)}",
                                      status=resp.status_code, retry_after=1.0)
        job.handle["lost_since"] = None
        try:
            data = resp.json()
        except ValueError as exc:
            raise UpstreamUnavailable(f"worker {url}: answer is not JSON") from exc
        _from_response(job, data if isinstance(data, dict) else {})
        if not job.state.terminal:
            return job
        if job.state is UpstreamState.SUCCEEDED:
            try:
                result = await self._client.get(
                    f"{url}/v1/jobs/{job.id}/result", headers=self._headers(),
                    timeout=self._timeout(self.options.poll_timeout))
            except httpx.HTTPError as exc:
                job.state = UpstreamState.PENDING
                return self._lost(job, url, type(exc).__name__)
            if not result.is_success:
                job.state = UpstreamState.PENDING
                raise UpstreamUnavailable(f"worker {url} result: {_message(result)}",
                                          retry_after=1.0)
            job.outputs = [UpstreamOutput(data=result.content,
                                          content_type=result.headers.get("content-type"))]
            job.cost = 0.0
        self._finish(job)
        return job

    async def cancel(self, job: UpstreamJob) -> None:
        url = str(job.handle.get("worker") or "")
        self._finish(job)
        try:
            await self._client.post(f"{url}/v1/jobs/{job.id}/cancel", headers=self._headers(),
                                    timeout=self._timeout(self.options.poll_timeout))
        except httpx.HTTPError as exc:
            log.info("cancel of %s on %s failed: %s", job.id, url, type(exc).__name__)

    async def download(self, output: UpstreamOutput) -> bytes:
        if output.data is not None:
            return output.data
        raise UpstreamUnavailable("local workers answer their images inline")


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    return f"HTTP {resp.status_code}"
