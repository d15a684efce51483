"""fal adapter against respx stubs shaped like fal's queue API."""

from __future__ import annotations

import base64
import json
from typing import Any

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
from adapters.fal import FalAdapter, FalOptions

KEY = "fal-key-id:secret"
Q = "https://queue.fal.run"
RID = "acf05732-7cb3-445b-9f39-fdaeccb1d730"
# fal's status/result URLs drop the endpoint's sub-path ("/kontext")
STATUS = f"{Q}/fal-ai/flux-pro/requests/{RID}/status"
RESULT = f"{Q}/fal-ai/flux-pro/requests/{RID}"
CANCEL = f"{Q}/fal-ai/flux-pro/requests/{RID}/cancel"
CDN = "https://v3.fal.media/files/rabbit/rmgBxhwGYb2d3pl3x9sKf_output.jpeg"


def make(client: httpx.AsyncClient, base_url: str | None = None, **opts: Any) -> FalAdapter:
    return FalAdapter(FalOptions(**opts), KEY, base_url, client)


def queued() -> httpx.Response:
    return httpx.Response(200, json={"status": "IN_QUEUE", "request_id": RID,
                                     "response_url": RESULT, "status_url": STATUS,
                                     "cancel_url": CANCEL, "queue_position": 0})


def result(nsfw: list[bool] | None = None, n: int = 1) -> httpx.Response:
    return httpx.Response(200, json={
        "images": [{"url": CDN, "width": 1392, "height": 752, "content_type": "image/jpeg"}] * n,
        "seed": 1234, "has_nsfw_concepts": nsfw if nsfw is not None else [False] * n,
        "prompt": "make it blue"})


def data_uri(image: InputImage) -> str:
    return f"data:image/png;base64,{base64.b64encode(image.data).decode()}"


async def test_edit_flow_uses_returned_urls(client: httpx.AsyncClient, mock: respx.MockRouter,
                                            image: InputImage) -> None:
    submit = mock.post(f"{Q}/fal-ai/flux-pro/kontext").mock(return_value=queued())
    wrong = mock.get(url__startswith=f"{Q}/fal-ai/flux-pro/kontext/requests/").mock(
        return_value=httpx.Response(404))
    status = mock.get(STATUS).mock(side_effect=[
        httpx.Response(202, json={"status": "IN_QUEUE", "queue_position": 2,
                                  "response_url": RESULT}),
        httpx.Response(202, json={"status": "IN_PROGRESS", "response_url": RESULT,
                                  "logs": None}),
        httpx.Response(200, json={"status": "COMPLETED", "response_url": RESULT,
                                  "logs": None, "metrics": {"inference_time": 4.2}}),
    ])
    res = mock.get(RESULT).mock(return_value=result())
    cdn = mock.get(CDN).mock(return_value=httpx.Response(200, content=b"jpeg"))
    adapter = make(client)
    req = UpstreamRequest(model="flux-kontext-pro", prompt="make it blue", operation="edit",
                          images=(image,), aspect_ratio="1392:752", seed=9,
                          output_format="jpeg", safety_tolerance=0, prompt_upsampling=True,
                          extra={"guidance": 3.0})
    job = await adapter.submit(req)

    sent = submit.calls.last.request
    assert sent.headers["authorization"] == f"Key {KEY}"
    assert json.loads(sent.content) == {
        "prompt": "make it blue", "image_url": data_uri(image), "aspect_ratio": "16:9",
        "seed": 9, "output_format": "jpeg", "safety_tolerance": "1", "enhance_prompt": True,
        "guidance_scale": 3.0, "num_images": 1}
    assert job.id == RID
    assert job.handle == {"status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}

    restored = UpstreamJob(id=job.id, handle=dict(job.handle))  # as after a restart
    for _ in range(2):
        restored = await adapter.poll(restored)
        assert restored.state is UpstreamState.PENDING
    restored = await adapter.poll(restored)
    assert restored.state is UpstreamState.SUCCEEDED
    assert restored.outputs == [UpstreamOutput(url=CDN, content_type="image/jpeg")]
    assert await adapter.download(restored.outputs[0]) == b"jpeg"
    assert status.call_count == 3 and res.call_count == 1 and cdn.call_count == 1
    assert res.calls.last.request.headers["authorization"] == f"Key {KEY}"
    assert "authorization" not in cdn.calls.last.request.headers
    assert wrong.call_count == 0


async def test_text_to_image_endpoint_and_string_safety(client: httpx.AsyncClient,
                                                        mock: respx.MockRouter) -> None:
    route = mock.post(f"{Q}/fal-ai/flux-pro/kontext/max/text-to-image").mock(
        return_value=queued())
    await make(client).submit(UpstreamRequest(model="flux-kontext-max", prompt="a cat",
                                              safety_tolerance=5, aspect_ratio="9:21"))
    assert json.loads(route.calls.last.request.content) == {
        "prompt": "a cat", "aspect_ratio": "9:21", "output_format": "png",
        "safety_tolerance": "5", "enhance_prompt": False, "num_images": 1}


async def test_multi_image_endpoint(client: httpx.AsyncClient, mock: respx.MockRouter,
                                    image: InputImage, image2: InputImage) -> None:
    route = mock.post(f"{Q}/fal-ai/flux-pro/kontext/multi").mock(return_value=queued())
    await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="combine",
                                              images=(image, image2)))
    body = json.loads(route.calls.last.request.content)
    assert body["image_urls"] == [data_uri(image), data_uri(image2)]
    assert "image_url" not in body


async def test_base_url_override(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post("https://fal-proxy.internal/fal-ai/flux-pro/kontext/text-to-image").mock(
        return_value=queued())
    await make(client, "https://fal-proxy.internal/").submit(
        UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert route.call_count == 1


async def test_nsfw_flag_is_moderated(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "COMPLETED"}))
    mock.get(RESULT).mock(return_value=result(nsfw=[True]))
    job = await make(client).poll(UpstreamJob(id=RID, handle={
        "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))
    assert job.state is UpstreamState.MODERATED
    assert job.outputs == []
    assert job.error_code == "content_moderated"


async def test_only_flagged_images_are_dropped(client: httpx.AsyncClient,
                                               mock: respx.MockRouter) -> None:
    mock.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "COMPLETED"}))
    mock.get(RESULT).mock(return_value=result(nsfw=[True, False], n=2))
    job = await make(client).poll(UpstreamJob(id=RID, handle={
        "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))
    assert job.state is UpstreamState.SUCCEEDED
    assert len(job.outputs) == 1


@pytest.mark.parametrize(("body", "state"), [
    ({"status": "COMPLETED", "error": "Internal server error", "error_type": "internal_error"},
     UpstreamState.FAILED),
    ({"status": "COMPLETED", "error": "Content policy violation: NSFW content detected",
      "error_type": "content_policy_violation"}, UpstreamState.MODERATED),
])
async def test_completed_with_error(client: httpx.AsyncClient, mock: respx.MockRouter,
                                    body: dict[str, Any], state: UpstreamState) -> None:
    mock.get(STATUS).mock(return_value=httpx.Response(200, json=body))
    res = mock.get(RESULT).mock(return_value=result())
    job = await make(client).poll(UpstreamJob(id=RID, handle={
        "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))
    assert job.state is state
    assert job.error_message == body["error"]
    assert res.call_count == 0


async def test_result_422_is_a_failed_job(client: httpx.AsyncClient,
                                          mock: respx.MockRouter) -> None:
    mock.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "COMPLETED"}))
    mock.get(RESULT).mock(return_value=httpx.Response(422, json={"detail": [
        {"loc": ["body", "image_url"], "msg": "Could not download the image",
         "type": "image_load_error"}]}))
    job = await make(client).poll(UpstreamJob(id=RID, handle={
        "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))
    assert job.state is UpstreamState.FAILED
    assert job.error_message == "body.image_url: Could not download the image"


async def test_unknown_request_is_not_found(client: httpx.AsyncClient,
                                            mock: respx.MockRouter) -> None:
    mock.get(STATUS).mock(return_value=httpx.Response(404, json={"detail": "Request not found"}))
    job = await make(client).poll(UpstreamJob(id=RID, handle={
        "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))
    assert job.state is UpstreamState.NOT_FOUND


async def test_status_outage_is_unavailable(client: httpx.AsyncClient,
                                            mock: respx.MockRouter) -> None:
    mock.get(STATUS).mock(side_effect=httpx.ConnectTimeout("down"))
    with pytest.raises(UpstreamUnavailable):
        await make(client).poll(UpstreamJob(id=RID, handle={
            "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))


async def test_429_is_retryable_with_retry_after(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter) -> None:
    mock.post(f"{Q}/fal-ai/flux-pro/kontext/text-to-image").mock(return_value=httpx.Response(
        429, headers={"Retry-After": "3", "x-fal-error-type": "rate_limited"},
        json={"detail": "Too many requests"}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True and info.value.retry_after == 3.0


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_auth_errors(client: httpx.AsyncClient, mock: respx.MockRouter,
                           status: int) -> None:
    mock.post(f"{Q}/fal-ai/flux-pro/kontext/text-to-image").mock(return_value=httpx.Response(
        status, json={"detail": "User is locked. Reason: Exhausted balance."}))
    with pytest.raises(UpstreamAuthError) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert "Exhausted balance" in info.value.message


async def test_422_on_submit_is_not_retryable(client: httpx.AsyncClient,
                                              mock: respx.MockRouter) -> None:
    mock.post(f"{Q}/fal-ai/flux-pro/kontext/text-to-image").mock(return_value=httpx.Response(
        422, json={"detail": [{"loc": ["body", "aspect_ratio"], "msg": "unexpected value",
                               "type": "value_error"}]}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is False


async def test_500_on_submit_is_retryable(client: httpx.AsyncClient,
                                          mock: respx.MockRouter) -> None:
    mock.post(f"{Q}/fal-ai/flux-pro/kontext/text-to-image").mock(
        return_value=httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True


async def test_read_timeout_on_submit_is_ambiguous_and_sent_once(
        client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post(f"{Q}/fal-ai/flux-pro/kontext/text-to-image").mock(
        side_effect=httpx.ReadTimeout("no answer"))
    with pytest.raises(UpstreamAmbiguous):
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert route.call_count == 1 and len(mock.calls) == 1


async def test_cancel_puts_cancel_url(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.put(CANCEL).mock(return_value=httpx.Response(
        202, json={"status": "CANCELLATION_REQUESTED"}))
    await make(client).cancel(UpstreamJob(id=RID, handle={
        "status_url": STATUS, "response_url": RESULT, "cancel_url": CANCEL}))
    assert route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == f"Key {KEY}"


async def test_expired_cdn_url(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.get(CDN).mock(return_value=httpx.Response(404, text="Not Found"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).download(UpstreamOutput(url=CDN))
    assert info.value.code == "result_expired"


async def test_object_ttl_header(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post(f"{Q}/fal-ai/flux-pro/kontext/text-to-image").mock(return_value=queued())
    await make(client, object_ttl=3600).submit(
        UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert json.loads(route.calls.last.request.headers["x-fal-object-lifecycle-preference"]) \
        == {"expiration_duration_seconds": 3600}


async def test_an_unknown_status_without_error_keeps_polling(client: httpx.AsyncClient,
                                                             mock: respx.MockRouter) -> None:
    """Only COMPLETED (or an error) ends a fal job: a status word fal may add is still
    working, so a job fal then finishes and bills is not released."""
    mock.get(STATUS).mock(side_effect=[
        httpx.Response(202, json={"status": "IN_PREPARATION", "response_url": RESULT}),
        httpx.Response(200, json={"status": "COMPLETED", "response_url": RESULT}),
    ])
    mock.get(RESULT).mock(return_value=result())
    adapter = make(client)
    job = UpstreamJob(id=RID, handle={"status_url": STATUS, "response_url": RESULT,
                                      "cancel_url": CANCEL})
    job = await adapter.poll(job)
    assert job.state is UpstreamState.PENDING and job.error_code is None
    job = await adapter.poll(job)
    assert job.state is UpstreamState.SUCCEEDED


@pytest.mark.parametrize("field", ["status_url", "response_url"])
async def test_queue_urls_on_another_host_get_no_key(client: httpx.AsyncClient,
                                                     mock: respx.MockRouter, field: str) -> None:
    """status/response/cancel URLs carry the key: on another host the job fails, uncontacted."""
    handle: dict[str, str | int | float | bool | None] = {
        "status_url": STATUS, "response_url": RESULT,
        "cancel_url": "https://evil.example/cancel"}
    handle[field] = "http://127.0.0.1:9/fal-ai/flux-pro/requests/x"
    adapter = make(client)
    job = UpstreamJob(id=RID, poll_url=str(handle["status_url"]), handle=handle)
    await adapter.cancel(job)
    job = await adapter.poll(job)
    assert job.state is UpstreamState.FAILED
    assert job.error_code == "polling_url_not_allowed"
    assert len(mock.calls) == 0
