"""A Response as it stands (`response_body`) and its server-sent events (`events`).

The stream follows OpenAI's sequence for a hosted image tool: `response.created`,
`response.in_progress`, `response.output_item.added` (the `image_generation_call`),
`response.image_generation_call.in_progress`, `.generating` (once the upstream has the job),
`.partial_image` (only when the tool asked for `partial_images`: Kontext makes no
intermediate images, so the one partial is the finished image, sent just before
`.completed`), `.completed`, `response.output_item.done`, then the message item (`added`,
`content_part.added`, `output_text.delta`, `output_text.done`, `content_part.done`, `done`)
and `response.completed` with the whole Response and its usage. While the upstream works a
`: ping` comment goes out every `chat.keepalive` seconds. Every event carries `type` (also as
the SSE `event:`) and an increasing `sequence_number`.

A job that fails after the stream started ends it with `response.output_item.done` (the call
`failed`) and `response.failed`, whose `response.error` says why. A client that leaves does not
cancel its job: it runs, is stored and charged (or released) as any other.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from billing.errors import BillingError
from gateway.api.chat import finished, markdown
from gateway.api.chat import result_images as chat_images
from gateway.api.deps import Services, from_sandbox
from gateway.api.errors import error_body
from gateway.api.response_objects import (
    item_id,
    message_item,
    response_error,
    response_id_of,
    usage,
)
from gateway.errors import GatewayError
from gateway.jobs.model import JobStatus, Stage
from gateway.jobs.service import job_error
from gateway.jobs.tables import JobRow

log = logging.getLogger(__name__)

#: stages at which the upstream has the job (the call is `generating`)
_AT_UPSTREAM = (Stage.SUBMITTED.value, Stage.UPSTREAM_DONE.value, Stage.STORED.value,
                Stage.SETTLED.value)
_STATUS = {JobStatus.QUEUED: "queued", JobStatus.RUNNING: "in_progress",
           JobStatus.SUCCEEDED: "completed", JobStatus.FAILED: "failed",
           JobStatus.CANCELED: "cancelled"}


def _size(output: dict[str, Any]) -> str:
    return f"{output['width']}x{output['height']}"


async def image_item(services: Services, row: JobRow) -> dict[str, Any]:
    """The `image_generation_call` item of a job as it stands (with the base64 `result` once
    it succeeded)."""
    echo = row.spec.get("echo") or {}
    item: dict[str, Any] = {"id": item_id(row.id), "type": "image_generation_call",
                            "status": "in_progress", "result": None,
                            "action": echo.get("action") or row.operation,
                            "background": "opaque", "quality": "auto",
                            "output_format": row.spec.get("output_format", "png"),
                            "revised_prompt": row.prompt}
    status = JobStatus(row.status)
    if status is JobStatus.SUCCEEDED and row.outputs:
        output = row.outputs[0]
        blob = (await services.files.blob(output["storage_key"]) if output.get("storage_key")
                else (await services.files.read(output["file_id"]))[1])
        item.update(status="completed", result=base64.b64encode(blob).decode(),
                    output_format=output["ext"], size=_size(output), width=output["width"],
                    height=output["height"], seed=row.seed,
                    url=services.files.url(output["file_id"], output["ext"]))
    elif status.terminal:
        item["status"] = "failed"
    elif row.stage in _AT_UPSTREAM:
        item["status"] = "generating"
    return item


def base_response(row: JobRow, status: str) -> dict[str, Any]:
    """The Response of `row` without output, error and usage."""
    echo = row.spec.get("echo") or {}
    return {"id": response_id_of(row.batch_id or ""), "object": "response",
            "created_at": int(row.created_at.timestamp()), "status": status,
            "background": bool(echo.get("background")), "error": None,
            "incomplete_details": None, "instructions": echo.get("instructions"),
            "max_output_tokens": None, "metadata": echo.get("metadata") or {},
            "model": echo.get("model") or row.model, "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": echo.get("previous_response_id"), "store": True,
            "text": {"format": {"type": "text"}}, "tool_choice": echo.get("tool_choice", "auto"),
            "tools": echo.get("tools") or [], "truncation": "disabled", "usage": None,
            "user": echo.get("user")}


async def response_body(services: Services, row: JobRow) -> dict[str, Any]:
    """The Response of a job as it stands now (see `gateway.api.response_objects`)."""
    status = JobStatus(row.status)
    body = base_response(row, _STATUS[status])
    item = await image_item(services, row)
    body["output"] = [item]
    if item["status"] == "completed":
        images = chat_images(services, row)
        text = markdown(images, from_sandbox(services, row.channel))
        body["output"].append(message_item(row.id, text))
        body["usage"] = usage(row.prompt, len(row.spec.get("input_file_ids") or []), 1)
    elif status.terminal:
        body["error"] = response_error(error_body(job_error(row)))
    return body


class _Frames:
    """SSE frames with one increasing `sequence_number`."""

    def __init__(self) -> None:
        self._numbers: Iterator[int] = itertools.count()

    def __call__(self, type_: str, **fields: Any) -> str:
        data = {"type": type_, "sequence_number": next(self._numbers), **fields}
        return f"event: {type_}\ndata: {json.dumps(data)}\n\n"


def _message_frames(frame: _Frames, message: dict[str, Any]) -> list[str]:
    part = message["content"][0]
    at = {"output_index": 1, "item_id": message["id"], "content_index": 0}
    return [
        frame("response.output_item.added", output_index=1,
              item={**message, "status": "in_progress", "content": []}),
        frame("response.content_part.added", **at, part={**part, "text": ""}),
        frame("response.output_text.delta", **at, delta=part["text"], logprobs=[]),
        frame("response.output_text.done", **at, text=part["text"], logprobs=[]),
        frame("response.content_part.done", **at, part=part),
        frame("response.output_item.done", output_index=1, item=message),
    ]


async def events(services: Services, row: JobRow) -> AsyncIterator[str]:
    """The SSE answer for a placed job (see the module docstring); never raises."""
    keepalive = services.settings.chat.keepalive
    deadline = time.monotonic() + services.settings.jobs.sync_wait
    frame = _Frames()
    ig = item_id(row.id)
    at = {"output_index": 0, "item_id": ig}
    created = base_response(row, "in_progress")
    done = False
    try:
        yield frame("response.created", response=created)
        yield frame("response.in_progress", response=created)
        yield frame("response.output_item.added", output_index=0,
                    item={"id": ig, "type": "image_generation_call", "status": "in_progress",
                          "result": None})
        yield frame("response.image_generation_call.in_progress", **at)
        generating = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                [row] = await services.jobs.wait([row.id],
                                                 within=max(0.01, min(keepalive, remaining)))
                terminal = JobStatus(row.status).terminal
                if not generating and (row.stage in _AT_UPSTREAM or terminal):
                    generating = True
                    yield frame("response.image_generation_call.generating", **at)
                if terminal or remaining <= keepalive or services.jobs.draining:
                    break
                yield ": ping\n\n"
            finished(row, draining=services.jobs.draining)  # raises the job's error
            final = await response_body(services, row)
        except Exception as exc:
            if not isinstance(exc, GatewayError | BillingError):
                log.exception("responses stream for job %s failed", row.id)
            failed = base_response(row, "failed")
            failed["error"] = response_error(error_body(exc))
            item = {"id": ig, "type": "image_generation_call", "status": "failed",
                    "result": None}
            failed["output"] = [item]
            yield frame("response.output_item.done", output_index=0, item=item)
            yield frame("response.failed", response=failed)
        else:
            image = final["output"][0]
            partials = (row.spec.get("echo") or {}).get("partial_images") or 0
            if partials:
                yield frame("response.image_generation_call.partial_image", **at,
                            partial_image_index=0, partial_image_b64=image["result"],
                            size=image["size"], output_format=image["output_format"],
                            background="opaque", quality="auto")
            yield frame("response.image_generation_call.completed", **at)
            yield frame("response.output_item.done", output_index=0, item=image)
            for text in _message_frames(frame, final["output"][1]):
                yield text
            yield frame("response.completed", response=final)
        done = True
    finally:
        if not done:
            log.info("responses client left during job %s; the job continues and is stored",
                     row.id)
