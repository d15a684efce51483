"""The worker's job board: a bounded queue, one runner thread, batching, progress, cancel.

Job states: `queued` → `running` → `succeeded` | `failed` | `canceled` (the last three are
terminal). A job id may be chosen by the client (the gateway does, so that a submit whose
answer was lost can be looked up instead of sent twice); submitting an id that exists answers
the existing job. Finished jobs (and their result bytes) are kept for `keep_seconds`, then
forgotten (a poll then answers 404).

Batching: the runner takes the oldest queued job and up to `max_batch - 1` later queued jobs
with the same `Work.batch_key()` (text-to-image of one size, steps and guidance) into one
pipeline call. Cancel: a queued job ends at once; a running job is flagged, and its batch
stops at the next step when every job in it is flagged (otherwise its image is dropped).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from worker.pipeline import Canceled, Runner, Work, encode

log = logging.getLogger(__name__)

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


@dataclass(slots=True)
class Job:
    id: str
    work: Work
    status: Status = "queued"
    step: int = 0
    cancel_requested: bool = False
    result: bytes | None = None
    content_type: str | None = None
    error: str | None = None
    batch_size: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None

    def view(self) -> dict[str, object]:
        """The job as the API answers it."""
        w = self.work
        return {"id": self.id, "status": self.status, "step": self.step, "steps": w.steps,
                "progress": round(self.step / w.steps, 4) if w.steps else None,
                "width": w.width, "height": w.height, "seed": w.seed, "error": self.error,
                "batch_size": self.batch_size or None,
                "content_type": self.content_type}


class JobBoard:
    """Holds every job; `start()` runs the runner thread until `stop()`."""

    def __init__(self, runner: Runner, *, max_batch: int = 1, max_queue: int = 64,
                 keep_seconds: float = 600.0) -> None:
        self._runner = runner
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.keep_seconds = keep_seconds
        self._jobs: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="worker-runner", daemon=True)
        self.images_made = 0
        self.batches_run = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel_requested = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, work: Work, job_id: str | None = None) -> Job:
        """Queue `work` (or answer the job `job_id` names); raises QueueFull."""
        with self._cond:
            self._forget_old()
            if job_id is not None and job_id in self._jobs:
                return self._jobs[job_id]
            if self.queue_depth() >= self.max_queue:
                raise QueueFull(f"the worker's queue is full ({self.max_queue} jobs)")
            job = Job(id=job_id or uuid.uuid4().hex, work=work)
            self._jobs[job.id] = job
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job (no-op once it is terminal); answers it, or None when unknown."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.status in TERMINAL:
                return job
            job.cancel_requested = True
            if job.status == "queued":
                self._finish(job, "canceled")
            return job

    def queue_depth(self) -> int:
        return sum(1 for j in self._jobs.values() if j.status == "queued")

    def running(self) -> int:
        return sum(1 for j in self._jobs.values() if j.status == "running")

    def _forget_old(self) -> None:
        now = time.monotonic()
        old = [j.id for j in self._jobs.values()
               if j.finished is not None and now - j.finished > self.keep_seconds]
        for job_id in old:
            del self._jobs[job_id]

    def _finish(self, job: Job, status: Status, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.monotonic()
        job.work.images.clear()  # the inputs are not needed any more

    def _take(self) -> list[Job] | None:
        """The next batch, marked running; None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                queued = [j for j in self._jobs.values() if j.status == "queued"]
                if queued:
                    break
                self._cond.wait()
            key = queued[0].work.batch_key()
            batch = [j for j in queued if j.work.batch_key() == key][: self.max_batch]
            now = time.monotonic()
            for job in batch:
                job.status, job.started, job.batch_size = "running", now, len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        def on_step(step: int) -> None:
            for job in batch:
                job.step = step

        def canceled() -> bool:
            return all(j.cancel_requested for j in batch)

        try:
            images = self._runner.run([j.work for j in batch], on_step, canceled)
            encoded = [encode(image, job.work.output_format)
                       for image, job in zip(images, batch, strict=True)]
        except Canceled:
            with self._cond:
                for job in batch:
                    self._finish(job, "canceled")
            return
        except Exception as exc:  # a failed job is data: say what went wrong, go on
            log.exception("batch of %d failed", len(batch))
            with self._cond:
                for job in batch:
                    self._finish(job, "failed", f"{type(exc).__name__}: {exc}"[:500])
            return
        with self._cond:
            self.batches_run += 1
            for job, (data, mime) in zip(batch, encoded, strict=True):
                if job.cancel_requested:
                    self._finish(job, "canceled")
                    continue
                job.result, job.content_type, job.step = data, mime, job.work.steps
                self.images_made += 1
                self._finish(job, "succeeded")
