"""Chaining an open diffusion server (vLLM-Omni, SGLang) through the OpenAI-compatible
channel: the real gateway, the server stubbed at the transport with the answer shape
vLLM-Omni documents (serving/image_generation_api: `data[0].b64_json`)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from tests.conftest import Gateway, ledger_of

SERVER = "http://gpu-box.internal:8000"


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def omni() -> Iterator[respx.Route]:
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        route = mock.post(f"{SERVER}/v1/images/generations")

        def answer(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            width, height = (int(x) for x in body["size"].split("x"))
            return httpx.Response(200, json={"created": 1764633600, "data": [
                {"b64_json": base64.b64encode(png(width, height)).decode(),
                 "revised_prompt": None}]})
        route.mock(side_effect=answer)
        yield route


def test_vllm_omni_channel_generates_with_steps_guidance_and_seed(
        omni: respx.Route, gateway_factory: Callable[..., Gateway]) -> None:
    # the README's example channel, as written there
    channels: list[dict[str, Any]] = [{
        "name": "vllm-omni", "type": "openai", "base_url": SERVER,
        "models": {"flux-kontext-dev": "black-forest-labs/FLUX.1-Kontext-dev"},
        "options": {"kontext_fields": False, "diffusion_fields": True}}]
    gw = gateway_factory(channels=channels)
    key_id, key = gw.create_key(balance=1_000_000)
    resp = httpx.post(f"{gw.base_url}/v1/flux-kontext-dev", headers={"x-key": key}, json={
        "prompt": "a lighthouse", "seed": 9, "steps": 24, "guidance": 3.0,
        "aspect_ratio": "16:9"}, timeout=60)
    assert resp.status_code == 200, resp.text

    def result() -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{gw.base_url}/v1/get_result",
                                         params={"id": resp.json()["id"]},
                                         headers={"x-key": key}, timeout=30).json()
        return data
    deadline = time.monotonic() + 60
    while (body := result())["status"] == "Pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert body["status"] == "Ready", body
    sent = json.loads(omni.calls.last.request.content)
    assert sent["model"] == "black-forest-labs/FLUX.1-Kontext-dev"
    assert (sent["size"], sent["seed"]) == ("1392x752", 9)
    assert (sent["num_inference_steps"], sent["guidance_scale"]) == (24, 3.0)
    assert "aspect_ratio" not in sent and "authorization" not in omni.calls.last.request.headers
    image = httpx.get(body["result"]["sample"], timeout=30)
    with Image.open(io.BytesIO(image.content)) as im:
        assert im.size == (1392, 752)
    assert ledger_of(gw, key_id)[0] == 1_000_000 - 25_000
