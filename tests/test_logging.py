"""Logs never carry API keys or base64 image data, and carry the request id."""

from __future__ import annotations

import base64
import logging

import httpx
import pytest

from tests.conftest import Gateway, png_bytes


def test_no_keys_or_base64_in_logs(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, key = gateway.create_key()
    blob = base64.b64encode(png_bytes((256, 256), (1, 2, 3))).decode()
    for prompt in ("edit sandbox:fail", "edit sandbox:moderate", "edit it"):
        resp = httpx.post(f"{gateway.base_url}/v1/images/generations",
                          headers={"authorization": f"Bearer {key}", "x-request-id": "req-abc"},
                          json={"model": "flux-kontext-pro", "prompt": prompt,
                                "input_image": blob}, timeout=60)
        assert resp.headers["x-request-id"] == "req-abc"
        assert resp.status_code in (200, 400, 502)
        if resp.status_code == 200:
            answer = resp.json()["data"][0]["b64_json"]
    assert caplog.records, "the gateway logged nothing at DEBUG"
    text = caplog.text
    assert key not in text and key[8:] not in text
    assert blob[:64] not in text and answer[:64] not in text
