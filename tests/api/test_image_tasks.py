"""Async image tasks on the OpenAI routes: `Prefer: respond-async` or `"async": true` -> 202
with a task id -> `GET /v1/images/tasks/{id}` until it completes, through the real server, with
plain HTTP and with the openai SDK (`extra_headers` / `extra_body`)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImagesResponse

from tests.conftest import Gateway, jobs_of, ledger_of, png_bytes


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def poll(url: str, key: str, *, until: tuple[str, ...] = ("completed", "failed", "cancelled"),
         timeout: float = 60.0) -> dict[str, Any]:
    """The task once its status is one of `until` (polled, within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(url, headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert resp.status_code == 200, resp.text
        task: dict[str, Any] = resp.json()
        if task["status"] in until:
            return task
        assert time.monotonic() < deadline, f"task still {task['status']} after {timeout} s"
        time.sleep(0.1)


def test_prefer_respond_async_answers_202_at_once_then_the_images(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("async", balance=1_000_000)
    started = time.monotonic()
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", timeout=30,
                      headers={"authorization": f"Bearer {key}", "prefer": "respond-async"},
                      json={"model": "flux-kontext-pro", "response_format": "url",
                            "prompt": "a slow fox sandbox:latency=3", "aspect_ratio": "16:9"})
    assert resp.status_code == 202, resp.text
    assert time.monotonic() - started < 3  # did not wait for the 3 s job
    task = resp.json()
    assert task["id"].startswith("imgtask_") and task["object"] == "image.task"
    assert task["status"] in ("queued", "in_progress") and task["progress"] < 100
    assert resp.headers["location"] == task["polling_url"]
    assert task["polling_url"].startswith(f"{gateway.base_url}/v1/images/tasks/{task['id']}")
    assert "result" not in task
    balance, _, _ = ledger_of(gateway, key_id)
    assert balance == 1_000_000 - 40_000  # reserved, as a synchronous call would

    done = poll(task["polling_url"], key)
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["completed_at"] >= done["created_at"]
    result = ImagesResponse.model_validate(done["result"])  # what the SDK would have parsed
    item = result.data[0]
    assert item.b64_json is None and item.url  # the request's response_format
    image = httpx.get(item.url)
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    assert (done["result"]["data"][0]["width"], done["result"]["data"][0]["height"]) == (
        1392, 752)
    assert ledger_of(gateway, key_id)[0] == 1_000_000 - 40_000  # settled once
    [job] = jobs_of(gateway, key_id)
    assert job.status == "succeeded"


def test_openai_sdk_async_field_on_generations(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    raw = sdk.images.with_raw_response.generate(
        model="flux-kontext-pro", prompt="a lighthouse", response_format="b64_json",
        extra_body={"async": True})
    assert raw.http_response.status_code == 202
    task = raw.http_response.json()
    # polled with the same SDK client (its auth, base URL and headers)
    deadline = time.monotonic() + 60
    while True:
        state = sdk.get(f"/images/tasks/{task['id']}", cast_to=httpx.Response,
                        options={"params": {"response_format": "b64_json"}}).json()
        if state["status"] not in ("queued", "in_progress"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["status"] == "completed", state
    result = ImagesResponse.model_validate(state["result"])
    assert result.data[0].b64_json and result.data[0].url is None


def test_openai_sdk_edit_with_prefer_header(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    raw = sdk.images.with_raw_response.edit(
        model="flux-kontext-pro", prompt="invert it", image=("in.png", png_bytes(), "image/png"),
        response_format="url", extra_headers={"Prefer": "respond-async, wait=5"})
    assert raw.http_response.status_code == 202, raw.http_response.text
    task = raw.http_response.json()
    done = poll(task["polling_url"], api_key)
    assert done["status"] == "completed"
    url = ImagesResponse.model_validate(done["result"]).data[0].url
    assert url and httpx.get(url).status_code == 200


def test_multipart_async_field_on_edits(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits", timeout=30,
                      headers={"authorization": f"Bearer {api_key}"},
                      data={"model": "flux-kontext-pro", "prompt": "invert it", "async": "true",
                            "n": "2"},
                      files={"image": ("in.png", png_bytes(), "image/png")})
    assert resp.status_code == 202, resp.text
    done = poll(resp.json()["polling_url"], api_key)
    assert done["status"] == "completed" and len(done["result"]["data"]) == 2
    assert all(item["url"] and item["b64_json"] for item in done["result"]["data"])


def test_a_failed_task_carries_the_error_and_is_not_charged(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("fails", balance=1_000_000)
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", timeout=30,
                      headers={"authorization": f"Bearer {key}", "prefer": "respond-async"},
                      json={"model": "flux-kontext-pro", "prompt": "a fox sandbox:fail"})
    assert resp.status_code == 202, resp.text
    done = poll(resp.json()["polling_url"], key)
    assert done["status"] == "failed" and "result" not in done
    assert done["error"]["message"] and done["error"]["type"]
    assert ledger_of(gateway, key_id)[0] == 1_000_000  # released


def test_invalid_input_is_refused_before_any_task(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", timeout=30,
                      headers={"authorization": f"Bearer {api_key}", "prefer": "respond-async"},
                      json={"model": "flux-kontext-pro", "prompt": "x", "n": 9})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "n"
    bad = httpx.post(f"{gateway.base_url}/v1/images/generations", timeout=30,
                     headers={"authorization": f"Bearer {api_key}"},
                     json={"model": "flux-kontext-pro", "prompt": "x", "async": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "async"
    assert jobs_of(gateway) == []


@pytest.mark.parametrize("task_id", ["imgtask_0123456789abcdef", "job_x", "imgtask_" + "a" * 80])
def test_unknown_and_other_keys_tasks_are_404(gateway: Gateway, api_key: str,
                                              task_id: str) -> None:
    resp = httpx.get(f"{gateway.base_url}/v1/images/tasks/{task_id}",
                     headers={"authorization": f"Bearer {api_key}"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "task_not_found"


def test_another_keys_task_is_404_and_polls_need_a_key(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", timeout=30,
                      headers={"authorization": f"Bearer {api_key}", "prefer": "respond-async"},
                      json={"model": "flux-kontext-pro", "prompt": "mine"})
    url = resp.json()["polling_url"]
    _, other = gateway.create_key("other")
    assert httpx.get(url, headers={"authorization": f"Bearer {other}"}).status_code == 404
    assert httpx.get(url).status_code == 401


def test_idempotency_key_replays_the_same_task(gateway: Gateway, api_key: str) -> None:
    headers = {"authorization": f"Bearer {api_key}", "prefer": "respond-async",
               "idempotency-key": "task-1"}
    body = {"model": "flux-kontext-pro", "prompt": "once"}
    first = httpx.post(f"{gateway.base_url}/v1/images/generations", headers=headers, json=body)
    again = httpx.post(f"{gateway.base_url}/v1/images/generations", headers=headers, json=body)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(jobs_of(gateway)) == 1
