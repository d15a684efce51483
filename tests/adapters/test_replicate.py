"""Replicate adapter against respx stubs shaped like Replicate's prediction objects."""

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
)
from adapters.replicate import ReplicateAdapter, ReplicateOptions

TOKEN = "r8_test"
API = "https://api.replicate.com/v1"
PRED = "gm3qorzdhgbfurvjtvhg6dckhu"
OUT = "https://replicate.delivery/xezq/Ab12/tmpk3l9.jpg"


def make(client: httpx.AsyncClient, base_url: str | None = None,
         **opts: Any) -> ReplicateAdapter:
    return ReplicateAdapter(ReplicateOptions(**opts), TOKEN, base_url, client)


def prediction(status: str, output: object = None, error: str | None = None,
               model: str = "black-forest-labs/flux-kontext-pro") -> dict[str, object]:
    return {
        "id": PRED, "model": model, "version": "hidden", "input": {}, "logs": "",
        "output": output, "data_removed": False, "error": error, "status": status,
        "created_at": "2025-07-01T10:00:00.000Z",
        "urls": {"cancel": f"{API}/predictions/{PRED}/cancel", "get": f"{API}/predictions/{PRED}",
                 "stream": f"https://stream.replicate.com/v1/files/{PRED}",
                 "web": f"https://replicate.com/p/{PRED}"},
    }


def data_url(image: InputImage) -> str:
    return f"data:image/png;base64,{base64.b64encode(image.data).decode()}"


async def test_sync_success_sends_documented_request(client: httpx.AsyncClient,
                                                     mock: respx.MockRouter,
                                                     image: InputImage) -> None:
    route = mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(201, json=prediction("succeeded", output=OUT)))
    req = UpstreamRequest(model="flux-kontext-pro", prompt="make it blue", operation="edit",
                          images=(image,), aspect_ratio="1392:752", seed=7,
                          output_format="jpeg", safety_tolerance=5, prompt_upsampling=True)
    job = await make(client).submit(req)

    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["prefer"] == "wait=60"
    assert json.loads(sent.content) == {"input": {
        "prompt": "make it blue", "input_image": data_url(image), "aspect_ratio": "16:9",
        "seed": 7, "output_format": "jpg", "safety_tolerance": 2, "prompt_upsampling": True}}
    assert job.id == PRED
    assert job.state is UpstreamState.SUCCEEDED
    assert job.outputs == [UpstreamOutput(url=OUT)]
    assert job.poll_url == f"{API}/predictions/{PRED}"


async def test_cold_start_falls_back_to_polling_urls_get(client: httpx.AsyncClient,
                                                         mock: respx.MockRouter) -> None:
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-max/predictions").mock(
        return_value=httpx.Response(201, json=prediction("starting")))
    poll = mock.get(f"{API}/predictions/{PRED}").mock(side_effect=[
        httpx.Response(200, json=prediction("processing")),
        httpx.Response(200, json=prediction("succeeded", output=[OUT])),
    ])
    image_route = mock.get(OUT).mock(return_value=httpx.Response(200, content=b"jpg"))
    adapter = make(client, wait=10)
    job = await adapter.submit(UpstreamRequest(model="flux-kontext-max", prompt="a cat"))
    assert job.state is UpstreamState.PENDING
    job = await adapter.poll(job)
    assert job.state is UpstreamState.PENDING
    job = await adapter.poll(job)
    assert job.state is UpstreamState.SUCCEEDED
    assert await adapter.download(job.outputs[0]) == b"jpg"
    assert poll.call_count == 2
    assert poll.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in image_route.calls.last.request.headers


async def test_text_to_image_defaults_and_base_with_v1(client: httpx.AsyncClient,
                                                       mock: respx.MockRouter) -> None:
    route = mock.post("https://proxy.example/v1/models/black-forest-labs/flux-kontext-pro/"
                      "predictions").mock(return_value=httpx.Response(
                          201, json=prediction("starting")))
    await make(client, "https://proxy.example/v1/", wait=0).submit(
        UpstreamRequest(model="flux-kontext-pro", prompt="a cat", safety_tolerance=5))
    sent = route.calls.last.request
    assert "prefer" not in sent.headers
    assert json.loads(sent.content) == {"input": {
        "prompt": "a cat", "aspect_ratio": "1:1", "output_format": "png",
        "safety_tolerance": 5, "prompt_upsampling": False}}


@pytest.mark.parametrize(("ratio", "expected"), [("3:7", "9:21"), ("7:3", "21:9"),
                                                 ("1248:832", "3:2"), ("880:1184", "3:4")])
async def test_aspect_ratio_snaps_to_enum(client: httpx.AsyncClient, mock: respx.MockRouter,
                                         image: InputImage, ratio: str, expected: str) -> None:
    route = mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(201, json=prediction("starting")))
    await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x",
                                              images=(image,), aspect_ratio=ratio))
    assert json.loads(route.calls.last.request.content)["input"]["aspect_ratio"] == expected


async def test_match_input_image_without_ratio(client: httpx.AsyncClient,
                                              mock: respx.MockRouter, image: InputImage) -> None:
    route = mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(201, json=prediction("starting")))
    await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x",
                                              images=(image,)))
    assert json.loads(route.calls.last.request.content)["input"]["aspect_ratio"] == \
        "match_input_image"


async def test_two_images_use_the_multi_image_app(client: httpx.AsyncClient,
                                                  mock: respx.MockRouter, image: InputImage,
                                                  image2: InputImage) -> None:
    route = mock.post(f"{API}/models/flux-kontext-apps/multi-image-kontext-max/predictions"
                      ).mock(return_value=httpx.Response(201, json=prediction("starting")))
    await make(client).submit(UpstreamRequest(
        model="flux-kontext-max", prompt="put them together", images=(image, image2),
        safety_tolerance=6, output_format="png"))
    assert json.loads(route.calls.last.request.content) == {"input": {
        "prompt": "put them together", "input_image_1": data_url(image),
        "input_image_2": data_url(image2), "aspect_ratio": "match_input_image",
        "output_format": "png", "safety_tolerance": 2}}


async def test_three_images_are_refused_for_another_channel(
        client: httpx.AsyncClient, mock: respx.MockRouter, image: InputImage,
        image2: InputImage) -> None:
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x",
                                                  images=(image, image2, image)))
    assert info.value.retryable is True
    assert info.value.code == "unsupported_request"
    assert len(mock.calls) == 0


async def test_dev_takes_extras_and_webp(client: httpx.AsyncClient, mock: respx.MockRouter,
                                         image: InputImage) -> None:
    route = mock.post(f"{API}/models/black-forest-labs/flux-kontext-dev/predictions").mock(
        return_value=httpx.Response(201, json=prediction("starting")))
    await make(client).submit(UpstreamRequest(
        model="flux-kontext-dev", prompt="x", images=(image,), output_format="webp",
        safety_tolerance=3, extra={"guidance": 2.5, "steps": 28, "go_fast": False,
                                   "output_quality": 90, "unknown": 1}))
    assert json.loads(route.calls.last.request.content) == {"input": {
        "prompt": "x", "input_image": data_url(image), "aspect_ratio": "match_input_image",
        "output_format": "webp", "guidance": 2.5, "num_inference_steps": 28, "go_fast": False,
        "output_quality": 90}}


@pytest.mark.parametrize(("status", "error", "state"), [
    ("failed", "CUDA out of memory", UpstreamState.FAILED),
    ("failed", "Prediction failed: Input image flagged as sensitive. (E005)",
     UpstreamState.MODERATED),
    ("failed", "NSFW content detected", UpstreamState.MODERATED),
    ("canceled", None, UpstreamState.CANCELED),
    ("aborted", None, UpstreamState.CANCELED),
])
async def test_terminal_statuses(client: httpx.AsyncClient, mock: respx.MockRouter, status: str,
                                 error: str | None, state: UpstreamState) -> None:
    mock.get(f"{API}/predictions/{PRED}").mock(
        return_value=httpx.Response(200, json=prediction(status, error=error)))
    job = await make(client).poll(UpstreamJob(id=PRED))
    assert job.state is state
    assert job.outputs == []
    if error:
        assert job.error_message == error


async def test_poll_404_is_not_found(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.get(f"{API}/predictions/{PRED}").mock(return_value=httpx.Response(
        404, json={"title": "Not found", "detail": "Prediction not found", "status": 404}))
    job = await make(client).poll(UpstreamJob(id=PRED))
    assert job.state is UpstreamState.NOT_FOUND


@pytest.mark.parametrize(("headers", "expected"), [({}, 30.0), ({"Retry-After": "12"}, 12.0)])
async def test_429_is_retryable_with_retry_after(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter,
                                                 headers: dict[str, str], expected: float) -> None:
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(429, headers=headers, json={
            "detail": "Request was throttled. Your rate limit resets in ~30s."}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True
    assert info.value.retry_after == expected
    assert "throttled" in info.value.message


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_auth_errors(client: httpx.AsyncClient, mock: respx.MockRouter,
                           status: int) -> None:
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(status, json={
            "title": "Insufficient credit", "status": status,
            "detail": "You have insufficient credit to run this model."}))
    with pytest.raises(UpstreamAuthError) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert "insufficient credit" in info.value.message


async def test_422_is_not_retryable(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(422, json={
            "title": "Input validation failed", "status": 422,
            "detail": "- input.seed: Invalid type. Expected: integer, given: string"}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is False
    assert "input.seed" in info.value.message


async def test_server_error_is_retryable(client: httpx.AsyncClient,
                                         mock: respx.MockRouter) -> None:
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(503, text="Service Unavailable"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True


async def test_read_timeout_on_create_is_ambiguous_and_sent_once(
        client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        side_effect=httpx.ReadTimeout("waited"))
    with pytest.raises(UpstreamAmbiguous):
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert route.call_count == 1
    assert len(mock.calls) == 1


async def test_cancel_posts_urls_cancel(client: httpx.AsyncClient,
                                        mock: respx.MockRouter) -> None:
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(201, json=prediction("processing")))
    cancel = mock.post(f"{API}/predictions/{PRED}/cancel").mock(
        return_value=httpx.Response(200, json=prediction("canceled")))
    adapter = make(client)
    job = await adapter.submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    await adapter.cancel(job)
    assert cancel.call_count == 1
    assert cancel.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"


async def test_expired_output_url(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.get(OUT).mock(return_value=httpx.Response(404))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).download(UpstreamOutput(url=OUT))
    assert info.value.code == "result_expired"


async def test_an_unknown_status_without_error_keeps_polling(client: httpx.AsyncClient,
                                                             mock: respx.MockRouter) -> None:
    """Only Replicate's terminal words end a job: a status it may add (no error) is still
    working, so a job Replicate then finishes and bills is not released."""
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-max/predictions").mock(
        return_value=httpx.Response(201, json=prediction("starting")))
    mock.get(f"{API}/predictions/{PRED}").mock(side_effect=[
        httpx.Response(200, json=prediction("queued")),
        httpx.Response(200, json=prediction("succeeded", output=[OUT])),
    ])
    adapter = make(client, wait=10)
    job = await adapter.submit(UpstreamRequest(model="flux-kontext-max", prompt="a cat"))
    job = await adapter.poll(job)
    assert job.state is UpstreamState.PENDING and job.error_code is None
    job = await adapter.poll(job)
    assert job.state is UpstreamState.SUCCEEDED


async def test_urls_on_another_host_get_no_token(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter) -> None:
    """urls.get/urls.cancel carry the token: on another host the job fails, uncontacted."""
    body = prediction("starting")
    body["urls"] = {"get": "https://evil.example/v1/predictions/p",
                    "cancel": "http://127.0.0.1:9/v1/predictions/p/cancel"}
    mock.post(f"{API}/models/black-forest-labs/flux-kontext-pro/predictions").mock(
        return_value=httpx.Response(201, json=body))
    adapter = make(client, wait=0)
    job = await adapter.submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    await adapter.cancel(job)
    job = await adapter.poll(job)
    assert job.state is UpstreamState.FAILED
    assert job.error_code == "polling_url_not_allowed"
    assert len(mock.calls) == 1  # the create only


@pytest.mark.parametrize(("model", "fmt", "quality", "expected"), [
    ("flux-kontext-dev", "jpeg", 55, {"output_format": "jpg", "output_quality": 55}),
    ("flux-kontext-dev", "png", 55, {"output_format": "png"}),  # not for png (dev's schema)
    ("flux-kontext-pro", "jpeg", 55, {"output_format": "jpg"}),  # pro has no output_quality
    ("flux-kontext-pro", "webp", None, {"output_format": "png"}),  # pro: {jpg, png}
])
async def test_quality_goes_where_the_model_schema_takes_it(
        client: httpx.AsyncClient, mock: respx.MockRouter, image: InputImage, model: str,
        fmt: Any, quality: int | None, expected: dict[str, Any]) -> None:
    route = mock.post(f"{API}/models/black-forest-labs/{model}/predictions").mock(
        return_value=httpx.Response(201, json=prediction("starting")))
    await make(client).submit(UpstreamRequest(model=model, prompt="x", images=(image,),
                                              output_format=fmt, quality=quality))
    sent = json.loads(route.calls.last.request.content)["input"]
    assert {k: v for k, v in sent.items() if k.startswith("output_")} == expected
