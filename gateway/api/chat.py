"""OpenAI chat completions for chat shells: POST /v1/chat/completions with the image models.

The last user message is the prompt; its images (or, failing those, the most recent image of
the conversation) are edited; see `gateway.api.chat_input`. The answer's content is a markdown
image with the gateway's own signed file URL (never a data URL: chat shells blank them, and
large SSE lines break proxies) and the message also carries OpenRouter-style `images`.

Everything that can be refused (key, rate limit, model, input, balance, jobs-in-flight cap) is
checked and the job is placed before an answer starts, so such errors are ordinary JSON errors
with their status. With
`stream: true` the answer is always `text/event-stream`: the role chunk at once, `: ping`
comments every `chat.keepalive` seconds while the job runs, the image, a `finish_reason:
"stop"` chunk, the usage chunk when `stream_options.include_usage` is set, and `data: [DONE]`;
a failure after the stream started is sent as `data: {"error": {...}}` before `[DONE]`.

A client that disconnects does not cancel its job: the job runs in the JobService, not in the
request, so it finishes, its image is stored and it is charged once, and it stays in the key's
job history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from billing.errors import BillingError
from gateway.api import family_fields
from gateway.api.chat_input import ChatInput, chat_input
from gateway.api.deps import (
    LimitedPrincipalDep,
    Principal,
    Services,
    ServicesDep,
    from_sandbox,
)
from gateway.api.edits import body_limit, bounded, validated
from gateway.api.errors import stream_error_event
from gateway.api.guards import Gate, idempotent
from gateway.api.images import DeskDep, customer_of
from gateway.api.openapi import CHAT_REQUEST_BODY, OPENAI_CREATE_ERRORS, OPENAI_ERRORS
from gateway.api.own_files import attach_refs
from gateway.api.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionContentPartImage,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    CompletionUsage,
    ImageURL,
)
from gateway.errors import GatewayError, InvalidRequest, not_ready
from gateway.jobs import intake
from gateway.jobs.model import JobStatus
from gateway.jobs.orders import Order, OrderDesk
from gateway.jobs.service import job_error
from gateway.jobs.tables import JobRow
from gateway.models import resolve_model
from gateway.settings import LimitSettings

log = logging.getLogger(__name__)
router = APIRouter(responses=OPENAI_ERRORS)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
PARAM = "messages"


@dataclass(frozen=True, slots=True)
class Reply:
    """The identity every chunk of one answer shares."""

    id: str
    created: int
    model: str

    def chunk(self, delta: ChoiceDelta, finish_reason: Literal["stop"] | None = None) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[choice])
        return f"data: {chunk.model_dump_json()}\n\n"

    def usage_chunk(self, usage: CompletionUsage) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                    choices=[], usage=usage)
        return f"data: {chunk.model_dump_json()}\n\n"


def usage_for(prompt: str, images: int) -> CompletionUsage:
    """Nominal token counts (images are not tokens): ~4 characters per prompt token and one
    completion token per image."""
    prompt_tokens = max(1, math.ceil(len(prompt) / 4))
    return CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=images,
                           total_tokens=prompt_tokens + images)


def result_images(services: Services, row: JobRow) -> list[ChatCompletionContentPartImage]:
    return [ChatCompletionContentPartImage(image_url=ImageURL(
        url=services.files.url(output["file_id"], output["ext"]))) for output in row.outputs]


def markdown(images: list[ChatCompletionContentPartImage], sandbox: bool = False) -> str:
    alt = "image (sandbox: synthetic, not a model's output)" if sandbox else "image"
    return "\n\n".join(f"![{alt}]({image.image_url.url})" for image in images)


def finished(row: JobRow, *, draining: bool = False) -> JobRow:
    """`row` if it succeeded; raises the job's error when it failed, Timeout when it runs
    (Interrupted when the gateway is stopping)."""
    if row.status == JobStatus.SUCCEEDED.value:
        return row
    if JobStatus(row.status).terminal:
        raise job_error(row)
    raise not_ready([row.id], draining=draining)


async def events(services: Services, reply: Reply, job_id: str, prompt: str,
                 include_usage: bool) -> AsyncIterator[str]:
    """The SSE answer for a placed job (see the module docstring); never raises."""
    chat = services.settings.chat
    done = False
    try:
        yield reply.chunk(ChoiceDelta(role="assistant", content=""))
        try:
            if chat.progress:
                yield reply.chunk(ChoiceDelta(content="Generating the image…\n\n"))
            deadline = time.monotonic() + services.settings.jobs.sync_wait
            status = JobStatus.QUEUED.value
            while True:
                remaining = deadline - time.monotonic()
                within = max(0.01, min(chat.keepalive, remaining))
                [row] = await services.jobs.wait([job_id], within=within)
                if JobStatus(row.status).terminal or remaining <= chat.keepalive \
                        or services.jobs.draining:
                    break
                if chat.progress and row.status != status:
                    status = row.status
                    yield reply.chunk(ChoiceDelta(content=f"Status: {status}…\n\n"))
                yield ": ping\n\n"
            images = result_images(services, finished(row, draining=services.jobs.draining))
            content = markdown(images, from_sandbox(services, row.channel))
            yield reply.chunk(ChoiceDelta(content=content, images=images))
            yield reply.chunk(ChoiceDelta(), finish_reason="stop")
            if include_usage:
                yield reply.usage_chunk(usage_for(prompt, len(images)))
        except Exception as exc:
            if not isinstance(exc, GatewayError | BillingError):
                log.exception("chat stream for job %s failed", job_id)
            yield stream_error_event(exc)
        yield "data: [DONE]\n\n"
        done = True
    finally:
        if not done:
            log.info("chat client left during job %s; the job continues and is stored", job_id)


async def read_chat_request(request: Request, limits: LimitSettings,
                            ) -> tuple[ChatCompletionRequest, dict[str, object]]:
    """The request and its idempotency fingerprint, parsed here rather than as a FastAPI body
    parameter: FastAPI would keep the raw bytes and the parsed JSON alive until the answer
    ends (a stream runs for minutes, and shells send images as data URLs of up to 20 MB
    each). Here each form is dropped once the next exists, and none outlives placing the job."""
    raw = bytearray()
    async for chunk in bounded(request, body_limit(limits), "a chat request"):
        raw += chunk
    try:
        data = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from exc
    del raw
    body = validated(ChatCompletionRequest, data)
    canonical: dict[str, object] = {}
    if not body.stream and "idempotency-key" in request.headers:  # only then is it needed
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          default=str)
        canonical["json_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return body, canonical


@router.post("/v1/chat/completions", openapi_extra=CHAT_REQUEST_BODY,
             responses={**OPENAI_CREATE_ERRORS, 200: {
                 "description": "The completion (JSON), or with `stream: true` its chunks as "
                                "server-sent events",
                 "content": {"application/json": {},
                             "text/event-stream": {"schema": {"type": "string"}}}}})
async def create_chat_completion(request: Request, principal: LimitedPrincipalDep,
                                 services: ServicesDep, desk: DeskDep) -> Response:
    """Generate or edit one image from a conversation (see the module docstring). Counts
    against the key's rate limit and jobs-in-flight cap; `Idempotency-Key` is honoured for
    `stream: false` (a stream cannot be replayed, so streams ignore it)."""
    body, canonical = await read_chat_request(request, services.settings.limits)
    if body.stream:
        return await _stream(request, Gate(services, principal), body, principal, services,
                             desk)
    return await idempotent(request, principal, services,
                            lambda gate: _complete(gate, body, principal, services, desk),
                            canonical=canonical)


async def _place(gate: Gate, body: ChatCompletionRequest, principal: Principal,
                 services: Services, desk: OrderDesk) -> tuple[Reply, ChatInput, JobRow]:
    """Validate the request and create its job; raises before anything is charged."""
    requested = (body.model or "").removesuffix(":image")  # LobeChat's image-chat model ids
    model = resolve_model(requested or None, aliases=services.settings.model_aliases,
                          catalogue=services.jobs.catalogue)
    principal.check_model(model)
    wanted = chat_input(body.messages)
    order = Order(
        model=model, prompt=wanted.prompt, seed=intake.parse_seed(body.seed),
        operation="edit" if wanted.images else "generate",
        aspect_ratio=intake.choose_aspect_ratio(aspect_ratio=body.aspect_ratio, size=body.size),
        output_format=intake.parse_output_format(body.output_format),
        quality=intake.parse_quality(output_compression=body.output_compression),
        safety_tolerance=intake.parse_safety(body.safety_tolerance),
        prompt_upsampling=intake.parse_bool(body.prompt_upsampling or False,
                                            param="prompt_upsampling"),
        surface="openai.chat")
    family_fields.fit(order, services, principal, {**(body.model_extra or {})}, size=body.size,
                      quality=getattr(body, "quality", None), seed=body.seed)
    # gateway file URLs are read from storage (never fetched over HTTP)
    refs = [(f"{PARAM}[image {i}]", ref) for i, ref in enumerate(wanted.images)]
    await attach_refs(services, principal, refs, order, param=PARAM)
    [row] = await gate.place(desk, customer_of(principal), order)
    reply = Reply(id=f"chatcmpl-{secrets.token_hex(12)}", created=int(time.time()),
                  model=body.model or model)
    return reply, wanted, row


async def _stream(request: Request, gate: Gate, body: ChatCompletionRequest,
                  principal: Principal, services: Services, desk: OrderDesk) -> Response:
    reply, wanted, row = await _place(gate, body, principal, services, desk)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    headers = {**SSE_HEADERS, **(getattr(request.state, "rate_headers", None) or {})}
    return StreamingResponse(events(services, reply, row.id, wanted.prompt, include_usage),
                             media_type="text/event-stream", headers=headers)


async def _complete(gate: Gate, body: ChatCompletionRequest, principal: Principal,
                    services: Services, desk: OrderDesk) -> Response:
    reply, wanted, row = await _place(gate, body, principal, services, desk)
    [row] = await services.jobs.wait([row.id])
    images = result_images(services, finished(row, draining=services.jobs.draining))
    completion = ChatCompletion(
        id=reply.id, created=reply.created, model=reply.model,
        choices=[Choice(message=ChatCompletionMessage(
            content=markdown(images, from_sandbox(services, row.channel)), images=images))],
        usage=usage_for(wanted.prompt, len(images)))
    return JSONResponse(completion.model_dump(mode="json"))
