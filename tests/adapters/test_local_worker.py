"""local_worker adapter routing against respx stubs of the worker's job API (worker/server.py);
the real workers are driven in tests/worker/."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from adapters.base import (
    UpstreamAuthError,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
    UpstreamUnavailable,
)
from adapters.local_worker import LocalWorkerAdapter, LocalWorkerOptions

A, B = "http://gpu-a:8200", "http://gpu-b:8200"
REQ = UpstreamRequest(model="flux-kontext-dev", prompt="a fox", width=1392, height=752, seed=4,
                      extra={"steps": 8, "guidance": 3.0})


def health(queue: int = 0, running: int = 0) -> httpx.Response:
    return httpx.Response(200, json={"status": "ok", "model": "flux-kontext-dev",
                                     "queue_depth": queue, "running": running})


def accepted(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(202, json={"id": body["id"], "status": "queued", "step": 0,
                                     "steps": body.get("steps", 28), "progress": 0.0})


def make(client: httpx.AsyncClient, **options: object) -> LocalWorkerAdapter:
    return LocalWorkerAdapter(LocalWorkerOptions(workers=[A, B], health_ttl=0, **options),
                              "s3cret", None, client)


async def test_least_loaded_worker_gets_the_job(client: httpx.AsyncClient,
                                                mock: respx.MockRouter) -> None:
    mock.get(f"{A}/health").mock(return_value=health(queue=2, running=1))
    mock.get(f"{B}/health").mock(return_value=health(running=1))
    on_b = mock.post(f"{B}/v1/jobs").mock(side_effect=accepted)
    job = await make(client).submit(REQ)
    assert job.handle["worker"] == B and on_b.call_count == 1
    sent = on_b.calls.last.request
    assert sent.headers["authorization"] == "Bearer s3cret"
    body = json.loads(sent.content)
    assert body == {"id": job.id, "prompt": "a fox", "output_format": "png", "width": 1392,
                    "height": 752, "seed": 4, "steps": 8, "guidance": 3.0}


async def test_full_queue_tries_the_next_and_auth_is_refused(client: httpx.AsyncClient,
                                                             mock: respx.MockRouter) -> None:
    mock.get(f"{A}/health").mock(return_value=health())
    mock.get(f"{B}/health").mock(return_value=health(queue=5))
    mock.post(f"{A}/v1/jobs").mock(return_value=httpx.Response(
        429, json={"error": {"code": "queue_full", "message": "full"}}))
    on_b = mock.post(f"{B}/v1/jobs").mock(side_effect=accepted)
    job = await make(client).submit(REQ)
    assert job.handle["worker"] == B and on_b.call_count == 1
    mock.post(f"{A}/v1/jobs").mock(return_value=httpx.Response(
        401, json={"error": {"code": "unauthorized", "message": "wrong worker secret"}}))
    with pytest.raises(UpstreamAuthError, match="wrong worker secret"):
        await make(client).submit(REQ)


async def test_no_worker_answering_is_a_retryable_refusal(client: httpx.AsyncClient,
                                                          mock: respx.MockRouter) -> None:
    mock.get(url__regex=r"http://gpu-[ab]:8200/health").mock(
        side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamRejected) as caught:
        await make(client).submit(REQ)
    assert caught.value.retryable and caught.value.code == "no_worker"


async def test_queued_job_fails_over_started_job_is_followed(client: httpx.AsyncClient,
                                                             mock: respx.MockRouter) -> None:
    mock.get(f"{A}/health").mock(return_value=health())
    mock.get(f"{B}/health").mock(return_value=health(running=1))
    mock.post(f"{A}/v1/jobs").mock(side_effect=accepted)
    on_b = mock.post(f"{B}/v1/jobs").mock(side_effect=accepted)
    adapter = make(client, lost_after=60)
    queued, started = await adapter.submit(REQ), await adapter.submit(REQ)
    assert queued.handle["worker"] == started.handle["worker"] == A
    running = mock.get(f"{A}/v1/jobs/{started.id}").mock(return_value=httpx.Response(
        200, json={"id": started.id, "status": "running", "step": 3, "steps": 8,
                   "progress": 0.375}))
    started = await adapter.poll(started)
    assert started.handle["started"] is True and started.progress == 0.375
    for route in (running, mock.get(f"{A}/v1/jobs/{queued.id}")):  # A dies
        route.mock(side_effect=httpx.ConnectError("gone"))
    moved = await adapter.poll(queued)  # never started on A: placed again on B
    assert moved.state is UpstreamState.PENDING and moved.handle["worker"] == B
    assert json.loads(on_b.calls.last.request.content)["id"] == queued.id
    with pytest.raises(UpstreamUnavailable):  # started on A: followed there, not moved
        await adapter.poll(started)
    assert started.handle["worker"] == A and on_b.call_count == 1
