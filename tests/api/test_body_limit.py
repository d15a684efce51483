"""Every request body is capped before it is read: a huge JSON body (a chat history full of
data URLs, or an attack) gets a 413 in the route family's own error shape, and no job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.api.edits import body_limit
from tests.conftest import Gateway, jobs_of

LIMITS = {"fetch_allow": ["127.0.0.1"], "max_image_bytes": 64 * 1024, "max_input_images": 2}


@pytest.fixture
def small(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(limits=LIMITS)


def cap(gw: Gateway) -> int:
    return body_limit(gw.settings.limits) + 1024 * 1024


def padded(gw: Gateway, path_body: dict[str, Any], extra: int) -> bytes:
    """A valid-looking JSON body `extra` bytes over the cap (the padding is a long prompt)."""
    body = dict(path_body)
    body["prompt"] = "x" * (cap(gw) + extra)
    import json
    return json.dumps(body).encode()


def chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


CHAT = {"model": "flux-kontext-pro", "stream": True,
        "messages": [{"role": "user", "content": "a fox"}]}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_chat_body_is_413_openai_style(small: Gateway, chunked: bool) -> None:
    key_id, key = small.create_key(balance=1_000_000)
    data = padded(small, CHAT, 10)
    body = {"messages": [{"role": "user", "content": "a fox"}], **CHAT}
    content: Any = chunks(data) if chunked else data
    resp = httpx.post(f"{small.base_url}/v1/chat/completions", content=content, timeout=30,
                      headers={"authorization": f"Bearer {key}",
                               "content-type": "application/json"})
    assert resp.status_code == 413, resp.text[:300]
    error = resp.json()["error"]  # chat reads its body itself, under the same cap as edits
    assert error["code"] == "payload_too_large", error
    assert f"larger than {body_limit(small.settings.limits)} bytes" in error["message"]
    assert "a chat request" in error["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert jobs_of(small, key_id) == []
    # a body within the cap is read and answered normally (here: a stream)
    ok = httpx.post(f"{small.base_url}/v1/chat/completions", json=body, timeout=30,
                    headers={"authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")


def test_oversized_bodies_on_the_native_surfaces(small: Gateway) -> None:
    _, key = small.create_key(balance=1_000_000)
    headers = {"authorization": f"Bearer {key}", "x-key": key,
               "content-type": "application/json"}
    gen = httpx.post(f"{small.base_url}/v1/images/generations", timeout=30, headers=headers,
                     content=padded(small, {"model": "flux-kontext-pro"}, 1))
    assert gen.status_code == 413 and gen.json()["error"]["code"] == "request_too_large"
    bfl = httpx.post(f"{small.base_url}/v1/flux-kontext-pro", timeout=30, headers=headers,
                     content=padded(small, {}, 1))
    assert bfl.status_code == 413 and "larger than" in bfl.json()["detail"]
    rep = httpx.post(f"{small.base_url}/replicate/v1/models/black-forest-labs/"
                     "flux-kontext-pro/predictions", timeout=30, headers=headers,
                     content=padded(small, {"input": {}}, 1))
    assert rep.status_code == 413
    assert rep.json()["status"] == 413 and "larger than" in rep.json()["detail"]
