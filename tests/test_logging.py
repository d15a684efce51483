"""Logs never carry API keys or base64 image data, and carry the request id; JSON lines
(`log_format: json`) with request, job and channel ids, prompts only with `log_prompts`."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import logcontext
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


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines (as `log_format: json` does) into a buffer."""
    buffer = io.StringIO()
    handler = logcontext.handler("json", buffer)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines_of(buffer: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]  # JSON, all
    for record in records:
        assert set(logcontext.JSON_FIELDS) <= set(record), record
    return records


def wait_for_line(buffer: io.StringIO, logger: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found = [r for r in lines_of(buffer) if r["logger"] == logger]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"fewer than {count} {logger} lines"
        time.sleep(0.05)


def test_json_lines_carry_ids_and_no_secrets_or_prompts(
        gateway_factory: Any, json_lines: io.StringIO) -> None:
    gw = gateway_factory()
    key_id, key = gw.create_key()
    for prompt, rid in (("a secret fox", "req-json-1"), ("a secret cat sandbox:fail",
                                                         "req-json-2")):
        httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                   headers={"authorization": f"Bearer {key}", "x-request-id": rid},
                   json={"model": "flux-kontext-pro", "prompt": prompt})
    access = wait_for_line(json_lines, "gateway.access", 2)
    jobs = wait_for_line(json_lines, "gateway.jobs.finished", 2)
    first = next(r for r in access if r["request_id"] == "req-json-1")
    assert first["method"] == "POST" and first["route"] == "/v1/images/generations"
    assert first["status"] == 200 and first["key_id"] == key_id and first["duration_ms"] > 0
    assert next(r for r in access if r["request_id"] == "req-json-2")["status"] == 502
    done = {r["status"]: r for r in jobs}
    assert done["succeeded"]["request_id"] == "req-json-1"  # the job inherits the request's
    assert done["succeeded"]["job_id"].startswith("job_")
    assert done["succeeded"]["channel"] == "sandbox" and done["succeeded"]["charged"] > 0
    assert done["failed"]["error_code"] == "upstream_error"
    text = json_lines.getvalue()
    assert "secret" not in text  # no prompt unless log_prompts
    assert key not in text and key[8:] not in text


def test_prompts_are_logged_only_when_enabled(gateway_factory: Any,
                                              json_lines: io.StringIO) -> None:
    gw = gateway_factory(log_prompts=True)
    _, key = gw.create_key()
    long_prompt = "a fox " + "x" * 500
    httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
               headers={"authorization": f"Bearer {key}"},
               json={"model": "flux-kontext-pro", "prompt": long_prompt})
    [job] = wait_for_line(json_lines, "gateway.jobs.finished")
    assert job["prompt"] == long_prompt[:logcontext.PROMPT_CHARS]
