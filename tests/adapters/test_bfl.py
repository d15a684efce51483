"""BFL adapter against respx stubs that follow docs.bfl.ml's wire format."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import respx

from adapters.base import (
    InputImage,
    UpstreamAmbiguous,
    UpstreamAuthError,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
    UpstreamUnavailable,
)
from adapters.bfl import BflAdapter, BflOptions

KEY = "bfl-test-key"
POLL = "https://api.us1.bfl.ai/v1/get_result?id=task-123"
SAMPLE = ("https://delivery-eu1.bfl.ai/results/ab/cd/sample.jpeg"
          "?se=2025-01-01T00%3A10%3A00Z&sp=r&sig=abc%2Bdef%3D")


def make(client: httpx.AsyncClient, base_url: str | None = None) -> BflAdapter:
    return BflAdapter(BflOptions(), KEY, base_url, client)


def accepted(cost: float | None = 4.0) -> httpx.Response:
    body: dict[str, object] = {"id": "task-123", "polling_url": POLL}
    if cost is not None:
        body["cost"] = cost
    return httpx.Response(200, json=body)


async def test_submit_sends_documented_body(client: httpx.AsyncClient, mock: respx.MockRouter,
                                            image: InputImage, image2: InputImage) -> None:
    route = mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(return_value=accepted())
    req = UpstreamRequest(model="flux-kontext-pro", prompt="make it blue", operation="edit",
                          images=(image, image2), aspect_ratio="16:9", seed=42,
                          output_format="jpeg", safety_tolerance=9, prompt_upsampling=True)
    job = await make(client).submit(req)

    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.headers["x-key"] == KEY
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "prompt": "make it blue",
        "input_image": base64.b64encode(image.data).decode(),
        "input_image_2": base64.b64encode(image2.data).decode(),
        "aspect_ratio": "16:9",
        "seed": 42,
        "output_format": "jpeg",
        "safety_tolerance": 6,
        "prompt_upsampling": True,
    }
    assert job.id == "task-123"
    assert job.state is UpstreamState.PENDING
    assert job.poll_url == POLL
    assert job.cost == pytest.approx(0.04)


async def test_text_to_image_body_and_regional_base(client: httpx.AsyncClient,
                                                    mock: respx.MockRouter) -> None:
    route = mock.post("https://api.eu.bfl.ai/v1/flux-kontext-max").mock(
        return_value=accepted(cost=None))
    req = UpstreamRequest(model="flux-kontext-max", prompt="a cat", aspect_ratio="32:9")
    job = await make(client, "https://api.eu.bfl.ai/").submit(req)
    assert json.loads(route.calls.last.request.content) == {
        "prompt": "a cat", "aspect_ratio": "21:9", "output_format": "png",
        "prompt_upsampling": False}
    assert job.cost is None


async def test_polls_the_returned_url_exactly_and_downloads_from_delivery_host(
        client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(return_value=accepted())
    global_poll = mock.get(host="api.bfl.ai").mock(return_value=httpx.Response(
        200, json={"id": "task-123", "status": "Task not found", "result": None}))
    poll = mock.get(POLL).mock(side_effect=[
        httpx.Response(200, json={"id": "task-123", "status": "Pending", "result": None,
                                  "progress": 0.4}),
        httpx.Response(200, json={"id": "task-123", "status": "Ready", "progress": None,
                                  "result": {"sample": SAMPLE, "prompt": "a cat", "seed": 1}}),
    ])
    image_route = mock.get(SAMPLE).mock(return_value=httpx.Response(
        200, content=b"\xff\xd8jpeg-bytes", headers={"content-type": "image/jpeg"}))
    adapter = make(client)

    job = await adapter.submit(UpstreamRequest(model="flux-kontext-pro", prompt="a cat"))
    job = await adapter.poll(job)
    assert job.state is UpstreamState.PENDING
    assert job.progress == pytest.approx(0.4)
    job = await adapter.poll(job)
    assert job.state is UpstreamState.SUCCEEDED
    assert job.outputs == [UpstreamOutput(url=SAMPLE)]
    assert await adapter.download(job.outputs[0]) == b"\xff\xd8jpeg-bytes"

    assert poll.call_count == 2
    assert str(poll.calls.last.request.url) == POLL
    assert poll.calls.last.request.headers["x-key"] == KEY
    assert global_poll.call_count == 0
    assert str(image_route.calls.last.request.url) == SAMPLE
    assert "x-key" not in image_route.calls.last.request.headers  # no key to the CDN


async def test_poll_resumes_from_stored_handle(client: httpx.AsyncClient,
                                               mock: respx.MockRouter) -> None:
    route = mock.get(POLL).mock(return_value=httpx.Response(
        200, json={"id": "task-123", "status": "Pending", "result": None, "progress": None}))
    job = UpstreamJob(id="task-123", handle={"polling_url": POLL})
    job = await make(client).poll(job)
    assert route.call_count == 1
    assert job.state is UpstreamState.PENDING


@pytest.mark.parametrize(("status", "state", "code"), [
    ("Request Moderated", UpstreamState.MODERATED, "content_moderated"),
    ("Content Moderated", UpstreamState.MODERATED, "content_moderated"),
    ("Task not found", UpstreamState.NOT_FOUND, "not_found"),
    ("Error", UpstreamState.FAILED, "upstream_error"),
    ("Failed", UpstreamState.FAILED, "upstream_error"),
])
async def test_terminal_statuses(client: httpx.AsyncClient, mock: respx.MockRouter, status: str,
                                 state: UpstreamState, code: str) -> None:
    mock.get(POLL).mock(return_value=httpx.Response(
        200, json={"id": "task-123", "status": status, "result": None, "progress": None}))
    job = await make(client).poll(UpstreamJob(id="task-123", poll_url=POLL))
    assert job.state is state
    assert job.error_code == code
    assert job.error_message is not None and status in job.error_message
    assert job.outputs == []


@pytest.mark.parametrize("status", ["Queued", "Reasoning", "Generating", "Uploading",
                                    "Something New"])
async def test_working_and_unknown_statuses_keep_polling(
        client: httpx.AsyncClient, mock: respx.MockRouter, status: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Only known terminal words end a job: BFL's newer models report working states beyond
    the documented enum, and failing on them would release a job BFL then bills. An unknown
    word is logged once per job."""
    mock.get(POLL).mock(return_value=httpx.Response(
        200, json={"id": "task-123", "status": status, "result": None, "progress": 40}))
    adapter = make(client)
    job = UpstreamJob(id="task-123", poll_url=POLL)
    with caplog.at_level("WARNING", logger="adapters.bfl"):
        for _ in range(3):
            job = await adapter.poll(job)
            assert job.state is UpstreamState.PENDING
            assert job.error_code is None
    warned = [r for r in caplog.records if "not a documented one" in r.getMessage()]
    assert len(warned) == (0 if status == "Queued" else 1)


async def test_moderation_reasons_are_kept(client: httpx.AsyncClient,
                                          mock: respx.MockRouter) -> None:
    mock.get(POLL).mock(return_value=httpx.Response(200, json={
        "id": "task-123", "status": "Content Moderated", "progress": None,
        "result": None, "details": {"Moderation Reasons": ["Derivative Works Filter"]}}))
    job = await make(client).poll(UpstreamJob(id="task-123", poll_url=POLL))
    assert job.state is UpstreamState.MODERATED
    assert "Derivative Works Filter" in (job.error_message or "")


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_auth_and_credit_errors(client: httpx.AsyncClient, mock: respx.MockRouter,
                                      status: int) -> None:
    mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(return_value=httpx.Response(
        status, json={"detail": "Insufficient credits"}))
    with pytest.raises(UpstreamAuthError) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.status == status
    assert "Insufficient credits" in info.value.message


@pytest.mark.parametrize("status", [400, 422])
async def test_validation_errors_are_not_retryable(client: httpx.AsyncClient,
                                                   mock: respx.MockRouter, status: int) -> None:
    mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(return_value=httpx.Response(
        status, json={"detail": [{"loc": ["body", "aspect_ratio"],
                                  "msg": "Aspect ratio must be between 21:9 and 9:21",
                                  "type": "value_error"}]}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert not isinstance(info.value, UpstreamAuthError)
    assert info.value.retryable is False
    assert info.value.message == "body.aspect_ratio: Aspect ratio must be between 21:9 and 9:21"


async def test_429_is_retryable_with_retry_after(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter) -> None:
    mock.post("https://api.bfl.ai/v1/flux-kontext-max").mock(return_value=httpx.Response(
        429, json={"detail": "Task limit exceeded"}, headers={"Retry-After": "7"}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-max", prompt="x"))
    assert info.value.retryable is True
    assert info.value.retry_after == 7.0
    assert info.value.status == 429


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(client: httpx.AsyncClient, mock: respx.MockRouter,
                                           status: int) -> None:
    mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(
        return_value=httpx.Response(status, text="overloaded"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True
    assert info.value.status == status


async def test_connect_error_is_a_retryable_rejection(client: httpx.AsyncClient,
                                                      mock: respx.MockRouter) -> None:
    route = mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(
        side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True
    assert route.call_count == 1


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"),
                                   httpx.RemoteProtocolError("peer closed")])
async def test_timeout_after_send_is_ambiguous_and_sent_once(
        client: httpx.AsyncClient, mock: respx.MockRouter, error: Exception) -> None:
    route = mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(side_effect=error)
    with pytest.raises(UpstreamAmbiguous):
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert route.call_count == 1
    assert len(mock.calls) == 1


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_result_url(client: httpx.AsyncClient, mock: respx.MockRouter,
                                  status: int) -> None:
    mock.get(SAMPLE).mock(return_value=httpx.Response(status, text="expired"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).download(UpstreamOutput(url=SAMPLE))
    assert info.value.code == "result_expired"
    assert info.value.retryable is False


async def test_download_network_error_is_unavailable(client: httpx.AsyncClient,
                                                     mock: respx.MockRouter) -> None:
    mock.get(SAMPLE).mock(side_effect=httpx.ReadError("reset"))
    with pytest.raises(UpstreamUnavailable):
        await make(client).download(UpstreamOutput(url=SAMPLE))


@pytest.mark.parametrize("failure", [httpx.Response(503, text="busy"),
                                     httpx.ConnectError("down")])
async def test_poll_failures_are_unavailable(client: httpx.AsyncClient, mock: respx.MockRouter,
                                             failure: httpx.Response | Exception) -> None:
    if isinstance(failure, httpx.Response):
        mock.get(POLL).mock(return_value=failure)
    else:
        mock.get(POLL).mock(side_effect=failure)
    with pytest.raises(UpstreamUnavailable):
        await make(client).poll(UpstreamJob(id="task-123", poll_url=POLL))


async def test_cancel_is_a_no_op(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    await make(client).cancel(UpstreamJob(id="task-123", poll_url=POLL))
    assert len(mock.calls) == 0


async def test_blackholed_download_fails_at_the_deadline(client: httpx.AsyncClient,
                                                         mock: respx.MockRouter) -> None:
    import asyncio
    import time

    async def blackhole(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, content=b"late")

    mock.get(SAMPLE).mock(side_effect=blackhole)
    adapter = BflAdapter(BflOptions(download_timeout=0.2), KEY, None, client)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await adapter.download(UpstreamOutput(url=SAMPLE))
    assert 0.15 < time.monotonic() - started < 3.0  # well before the 5 s answer


async def test_submit_past_its_deadline_is_ambiguous(client: httpx.AsyncClient,
                                                     mock: respx.MockRouter) -> None:
    import asyncio

    seen: list[httpx.Request] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        seen.append(request)  # respx records a call only once it is answered
        await asyncio.sleep(5)
        return accepted()

    route = mock.post("https://api.bfl.ai/v1/flux-kontext-pro").mock(side_effect=hang)
    adapter = BflAdapter(BflOptions(submit_timeout=0.2), KEY, None, client)
    with pytest.raises(UpstreamAmbiguous):
        await adapter.submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert len(seen) == 1
    assert route.call_count == 0


@pytest.mark.parametrize("polling_url", [
    "https://evil.example/v1/get_result?id=task-123",
    "http://api.eu.bfl.ai/v1/get_result?id=task-123",  # the key in clear text
    "https://api.bfl.ai.evil.example/v1/get_result?id=task-123",
    "https://user@api.eu.bfl.ai/v1/get_result?id=task-123",
    "https://api.eu.bfl.ai:8443/v1/get_result?id=task-123",
    "http://127.0.0.1:9/v1/get_result?id=task-123",
])
async def test_polling_url_off_bfl_hosts_fails_uncontacted(
        client: httpx.AsyncClient, mock: respx.MockRouter, polling_url: str) -> None:
    """polling_url gets the key: only the channel's origin or https *.bfl.ai is polled."""
    job = await make(client).poll(UpstreamJob(id="task-123", poll_url=polling_url,
                                              handle={"polling_url": polling_url}))
    assert job.state is UpstreamState.FAILED
    assert job.error_code == "polling_url_not_allowed"
    assert len(mock.calls) == 0


async def test_polling_url_on_the_channel_origin_or_another_bfl_region(
        client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    pending = httpx.Response(200, json={"id": "t", "status": "Pending", "result": None})
    own = mock.get("https://reseller.example/bfl/v1/get_result").mock(return_value=pending)
    region = mock.get("https://gateway.bfl.ai/v1/get_result").mock(return_value=pending)
    reseller = make(client, "https://reseller.example/bfl")
    for url in ("https://reseller.example/bfl/v1/get_result?id=t",
                "https://gateway.bfl.ai/v1/get_result?id=t"):
        job = await reseller.poll(UpstreamJob(id="t", poll_url=url))
        assert job.state is UpstreamState.PENDING
    assert own.call_count == 1 and region.call_count == 1
