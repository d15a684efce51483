"""OpenAI image streaming (`stream: true`) on generations and edits, through the real server
with the openai SDK's own streaming (`client.images.generate(..., stream=True)`), the oldest
supported SDK in strict mode, and the raw event stream (keep-alives while the upstream works)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImageEditCompletedEvent, ImageGenCompletedEvent
from PIL import Image

from tests.api.test_sdk_versions import oldest_sdk  # noqa: F401 (a fixture)
from tests.conftest import Gateway, jobs_of, ledger_of, png_bytes

RED, INVERTED_RED = (200, 30, 30), (55, 225, 225)


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def test_sdk_stream_of_a_generation(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("stream", balance=1_000_000)
    stream = client(gateway, key).images.generate(
        model="flux-kontext-pro", prompt="a red fox in snow", stream=True, partial_images=2,
        extra_body={"aspect_ratio": "16:9"})
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.completed"]
    [done] = events
    assert isinstance(done, ImageGenCompletedEvent)
    image = Image.open(io.BytesIO(base64.b64decode(done.b64_json)))
    assert image.format == "PNG" and image.size == (1392, 752)
    extra: dict[str, Any] = done.model_extra or {}
    assert (extra["width"], extra["height"]) == (1392, 752) and done.size == "auto"
    assert done.output_format == "png" and done.usage.output_tokens == 1
    assert done.usage.input_tokens_details.text_tokens >= 1
    assert httpx.get(extra["url"]).content == base64.b64decode(done.b64_json)
    assert ledger_of(gateway, key_id)[0] == 1_000_000 - 40_000  # charged once, as usual
    [job] = jobs_of(gateway, key_id)
    assert job.status == "succeeded"


def test_sdk_stream_of_an_edit_with_n2(gateway: Gateway, api_key: str) -> None:
    stream = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", prompt="invert it", n=2, stream=True,
        image=("in.png", png_bytes((64, 64), RED), "image/png"))
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.completed"] * 2
    for event in events:
        assert isinstance(event, ImageEditCompletedEvent)
        image = Image.open(io.BytesIO(base64.b64decode(event.b64_json))).convert("RGB")
        assert image.getpixel((image.width // 2, image.height // 2)) == INVERTED_RED
        assert event.size == "1024x1024"  # one of OpenAI's sizes: named as such


def test_keepalives_while_the_upstream_works(gateway_factory: Any) -> None:
    gw = gateway_factory(chat={"keepalive": 0.3})
    _, key = gw.create_key("slow")
    lines: list[str] = []
    with httpx.stream("POST", f"{gw.base_url}/v1/images/generations", timeout=60,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "stream": True,
                            "prompt": "slowly sandbox:latency=2"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = list(resp.iter_lines())
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    event = lines.index("event: image_generation.completed")
    assert pings and max(pings) < event, lines[:20]
    data = json.loads(lines[event + 1].removeprefix("data: "))
    assert data["type"] == "image_generation.completed" and data["b64_json"]


def test_a_job_failing_mid_stream_raises_in_the_sdk(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("fails", balance=1_000_000)
    stream = client(gateway, key).images.generate(
        model="flux-kontext-pro", prompt="a fox sandbox:fail", stream=True)
    with pytest.raises(openai.APIError):
        list(stream)
    assert ledger_of(gateway, key_id)[0] == 1_000_000  # released


def test_errors_before_the_stream_are_plain_json(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    with pytest.raises(openai.NotFoundError):
        sdk.images.generate(model="no-such-model", prompt="x", stream=True)
    bad = httpx.post(f"{gateway.base_url}/v1/images/generations",
                     headers={"authorization": f"Bearer {api_key}"},
                     json={"model": "flux-kontext-pro", "prompt": "x", "stream": True,
                           "partial_images": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "partial_images"
    both = httpx.post(f"{gateway.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {api_key}", "prefer": "respond-async"},
                      json={"model": "flux-kontext-pro", "prompt": "x", "stream": True})
    assert both.status_code == 400 and both.json()["error"]["param"] == "stream"
    assert jobs_of(gateway) == []


OLD_SDK_SCRIPT = """
import base64, json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0,
                       _strict_response_validation=True)
events = list(client.images.generate(model="flux-kontext-pro", prompt="a fox", stream=True,
                                     extra_body={"aspect_ratio": "16:9"}))
print(json.dumps({"version": openai.__version__, "types": [e.type for e in events],
                  "size": events[0].size, "bytes": len(base64.b64decode(events[0].b64_json))}))
"""


def test_oldest_sdk_in_strict_mode_parses_the_stream(gateway: Gateway, api_key: str,
                                                     oldest_sdk: Path) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(oldest_sdk)}
    done = subprocess.run([sys.executable, "-c", OLD_SDK_SCRIPT, f"{gateway.base_url}/v1",
                           api_key], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["version"] != openai.__version__
    assert out["types"] == ["image_generation.completed"] and out["size"] == "auto"
    assert out["bytes"] > 1000
