"""OpenAI-compatible adapter against respx stubs shaped like OpenAI's images API."""

from __future__ import annotations

import base64
import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest
import respx

from adapters.base import (
    InputImage,
    UpstreamAmbiguous,
    UpstreamAuthError,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
)
from adapters.openai_compatible import OpenAICompatibleAdapter, OpenAICompatibleOptions, api_root

KEY = "sk-reseller"
ROOT = "https://reseller.example/v1"
BFL_URL = "https://delivery-us1.bfl.ai/results/1/sample.png?sig=x"


def make(client: httpx.AsyncClient, base_url: str = "https://reseller.example",
         **opts: Any) -> OpenAICompatibleAdapter:
    return OpenAICompatibleAdapter(OpenAICompatibleOptions(**opts), KEY, base_url, client)


def images_answer(**item: str) -> httpx.Response:
    return httpx.Response(200, json={"created": 1719000000, "data": [item]})


def multipart(request: httpx.Request) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename, bytes) of each part of a multipart request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + request.content)
    parts = []
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append((str(part.get_param("name", header="content-disposition")),
                      part.get_filename(), payload))
    return parts


@pytest.mark.parametrize("base", ["https://reseller.example", "https://reseller.example/",
                                  "https://reseller.example/v1", "https://reseller.example/v1/"])
def test_api_root_with_or_without_v1(base: str) -> None:
    assert api_root(base) == ROOT


async def test_generation_sends_json_and_decodes_b64(client: httpx.AsyncClient,
                                                     mock: respx.MockRouter) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    route = mock.post(f"{ROOT}/images/generations").mock(
        return_value=images_answer(b64_json=base64.b64encode(png).decode()))
    req = UpstreamRequest(model="bfl/flux-kontext-pro", prompt="a cat", aspect_ratio="16:9",
                          width=1392, height=752, seed=3, safety_tolerance=2,
                          prompt_upsampling=True)
    job = await make(client, "https://reseller.example/v1").submit(req)

    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == {
        "model": "bfl/flux-kontext-pro", "prompt": "a cat", "n": 1,
        "response_format": "b64_json", "size": "1392x752", "aspect_ratio": "16:9", "seed": 3,
        "output_format": "png", "safety_tolerance": 2, "prompt_upsampling": True}
    assert job.state is UpstreamState.SUCCEEDED
    assert job.outputs == [UpstreamOutput(data=png, content_type="image/png")]
    adapter = make(client)
    assert await adapter.poll(job) is job
    assert await adapter.download(job.outputs[0]) == png


async def test_edit_sends_multipart_and_downloads_url(client: httpx.AsyncClient,
                                                      mock: respx.MockRouter, image: InputImage,
                                                      image2: InputImage) -> None:
    route = mock.post(f"{ROOT}/images/edits").mock(return_value=images_answer(url=BFL_URL))
    cdn = mock.get(BFL_URL).mock(return_value=httpx.Response(200, content=b"png-bytes"))
    adapter = make(client, response_format="url", send_size=False)
    job = await adapter.submit(UpstreamRequest(
        model="flux-kontext-max", prompt="swap", operation="edit", images=(image, image2),
        output_format="jpeg"))

    parts = multipart(route.calls.last.request)
    fields = {name: value.decode() for name, filename, value in parts if filename is None}
    files = [(name, filename, value) for name, filename, value in parts if filename]
    assert fields == {"model": "flux-kontext-max", "prompt": "swap", "n": "1",
                      "response_format": "url", "output_format": "jpeg"}
    assert files == [("image[]", "image_0.png", image.data),
                     ("image[]", "image_1.png", image2.data)]
    assert job.state is UpstreamState.SUCCEEDED
    assert job.outputs[0].url == BFL_URL
    assert await adapter.download(job.outputs[0]) == b"png-bytes"
    assert "authorization" not in cdn.calls.last.request.headers


@pytest.mark.parametrize("code", ["content_policy_violation", "moderation_blocked"])
async def test_content_policy_is_a_moderated_job(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter, code: str) -> None:
    mock.post(f"{ROOT}/images/generations").mock(return_value=httpx.Response(400, json={
        "error": {"message": "Your request was rejected by the safety system.",
                  "type": "invalid_request_error", "param": None, "code": code}}))
    job = await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert job.state is UpstreamState.MODERATED
    assert job.error_message == "Your request was rejected by the safety system."
    assert job.outputs == []


async def test_error_envelope_message(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.post(f"{ROOT}/images/generations").mock(return_value=httpx.Response(400, json={
        "error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size",
                  "code": "invalid_value"}}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.message == "Invalid size"
    assert info.value.retryable is False


async def test_429_is_retryable_with_retry_after(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter) -> None:
    mock.post(f"{ROOT}/images/generations").mock(return_value=httpx.Response(
        429, headers={"retry-after": "20"}, json={"error": {
            "message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True and info.value.retry_after == 20.0


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_auth_errors(client: httpx.AsyncClient, mock: respx.MockRouter,
                           status: int) -> None:
    mock.post(f"{ROOT}/images/generations").mock(return_value=httpx.Response(status, json={
        "error": {"message": "Insufficient quota", "type": "insufficient_quota",
                  "code": "insufficient_quota"}}))
    with pytest.raises(UpstreamAuthError):
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))


async def test_5xx_is_retryable(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.post(f"{ROOT}/images/generations").mock(return_value=httpx.Response(502))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert info.value.retryable is True


async def test_read_timeout_is_ambiguous_and_sent_once(client: httpx.AsyncClient,
                                                       mock: respx.MockRouter) -> None:
    route = mock.post(f"{ROOT}/images/generations").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamAmbiguous):
        await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert route.call_count == 1 and len(mock.calls) == 1


async def test_empty_data_is_a_failed_job(client: httpx.AsyncClient,
                                          mock: respx.MockRouter) -> None:
    mock.post(f"{ROOT}/images/generations").mock(
        return_value=httpx.Response(200, json={"created": 1, "data": []}))
    job = await make(client).submit(UpstreamRequest(model="flux-kontext-pro", prompt="x"))
    assert job.state is UpstreamState.FAILED


async def test_expired_url(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    mock.get(BFL_URL).mock(return_value=httpx.Response(403, text="AuthenticationFailed"))
    with pytest.raises(UpstreamRejected) as info:
        await make(client).download(UpstreamOutput(url=BFL_URL))
    assert info.value.code == "result_expired"


def test_base_url_is_required(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleAdapter(OpenAICompatibleOptions(), KEY, None, client)


@pytest.mark.parametrize(("fmt", "quality", "expected"), [
    ("webp", 70, {"output_format": "webp", "output_compression": 70}),
    ("jpeg", 0, {"output_format": "jpeg", "output_compression": 0}),
    ("png", 70, {"output_format": "png"}),  # OpenAI: output_compression is for jpeg/webp only
    ("webp", None, {"output_format": "webp"}),
])
async def test_output_format_and_compression_as_openai_names_them(
        client: httpx.AsyncClient, mock: respx.MockRouter, fmt: Any, quality: int | None,
        expected: dict[str, Any]) -> None:
    route = mock.post(f"{ROOT}/images/generations").mock(
        return_value=images_answer(b64_json=base64.b64encode(b"RIFF....WEBP").decode()))
    adapter = make(client, send_size=False)
    assert adapter.capabilities.output_formats == ("png", "jpeg", "webp")
    await adapter.submit(UpstreamRequest(model="m", prompt="x", output_format=fmt,
                                         quality=quality))
    sent = json.loads(route.calls.last.request.content)
    assert {k: v for k, v in sent.items() if k.startswith("output_")} == expected
