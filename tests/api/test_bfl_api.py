"""The BFL-style async API through the real server, with plain httpx as BFL clients call it."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Gateway, ImageServer, ledger_of, png_bytes

TERMINAL = {"Ready", "Error", "Request Moderated", "Content Moderated", "Task not found"}


def create(gw: Gateway, key: str | None, body: dict[str, Any], *,
           model: str = "flux-kontext-pro", headers: dict[str, str] | None = None,
           ) -> httpx.Response:
    sent = {"accept": "application/json", **(headers or {})}
    if key is not None:
        sent["x-key"] = key
    return httpx.post(f"{gw.base_url}/v1/{model}", headers=sent, json=body, timeout=30)


def poll_until_done(polling_url: str, key: str, *, timeout: float = 20.0,
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """BFL's reference loop: GET polling_url every 0.5 s until a terminal status."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = httpx.get(polling_url, headers={"x-key": key, "accept": "application/json"})
        body = resp.json()
        seen.append(body)
        if body["status"] in TERMINAL:
            return body, seen
        assert resp.status_code == 200
        time.sleep(0.5)
    raise AssertionError(f"not done in {timeout} s: {seen[-1]}")


def download(url: str) -> Image.Image:
    resp = httpx.get(url)
    assert resp.status_code == 200, resp.text
    return Image.open(io.BytesIO(resp.content))



def test_text_to_image_reference_client_loop(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    resp = create(gateway, key, {"prompt": "a red fox in snow", "aspect_ratio": "16:9",
                                 "seed": 42, "output_format": "jpeg"})
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created["id"].startswith("job_")
    assert created["polling_url"] == f"{gateway.base_url}/v1/get_result?id={created['id']}"
    assert created["cost"] == 4.0  # $0.04 in cents, like BFL's credits
    result, _ = poll_until_done(created["polling_url"], key)
    assert result["status"] == "Ready" and result["id"] == created["id"]
    assert result["progress"] == 1.0 and result["details"] is None
    sample = result["result"]["sample"]
    assert sample.startswith(gateway.base_url + "/files/")
    assert result["result"]["seed"] == 42 and result["result"]["prompt"] == "a red fox in snow"
    assert result["result"]["duration"] >= 0
    image = download(sample)
    assert image.format == "JPEG" and image.size == (1392, 752)
    # the money: reserved once, settled once
    balance, total, rows = ledger_of(gateway, key_id)
    assert balance == total == 1_000_000 - 40_000
    assert [kind for kind, _ in rows] == ["topup", "reserve", "settle"]
    # a second read changes nothing
    poll_until_done(created["polling_url"], key)
    assert ledger_of(gateway, key_id)[2] == rows


def test_edit_with_base64_input_image_bearer_auth(gateway: Gateway, api_key: str) -> None:
    raw = png_bytes((300, 600), (10, 20, 30))
    resp = create(gateway, None, {"prompt": "edit", "input_image": base64.b64encode(raw).decode()},
                  model="flux-kontext-max", headers={"authorization": f"Bearer {api_key}"})
    assert resp.status_code == 200, resp.text
    result, _ = poll_until_done(resp.json()["polling_url"], api_key)
    assert result["status"] == "Ready"
    image = download(result["result"]["sample"])
    assert image.size == (720, 1456)  # the 1:2 input's bucket
    assert image.format == "PNG"  # BFL's default output format
    assert image.convert("RGB").getpixel((image.width // 2, image.height // 2)) == (245, 235, 225)


def test_edit_with_url_input_image_and_second_reference(gateway: Gateway, api_key: str,
                                                        image_server: ImageServer) -> None:
    url = image_server.add("girl.png", png_bytes((800, 600), (200, 30, 30)))
    url2 = image_server.add("hat.png", png_bytes((64, 64), (0, 0, 255)))
    resp = create(gateway, api_key, {"prompt": "give her the hat", "input_image": url,
                                     "input_image_2": url2, "output_format": "webp"},
                  model="flux-kontext-dev")
    assert resp.status_code == 200, resp.text
    assert sorted(image_server.hits) == ["girl.png", "hat.png"]
    result, _ = poll_until_done(resp.json()["polling_url"], api_key)
    image = download(result["result"]["sample"])
    assert image.format == "WEBP" and image.size == (1184, 880)  # the 4:3 input's bucket


def test_pending_with_progress_then_ready(gateway: Gateway, api_key: str) -> None:
    resp = create(gateway, api_key, {"prompt": "slow sandbox:latency=1"})
    assert resp.status_code == 200
    first = httpx.get(resp.json()["polling_url"], headers={"x-key": api_key})
    assert first.status_code == 200
    assert first.json()["status"] == "Pending" and first.json()["result"] is None
    assert 0.0 <= first.json()["progress"] < 1.0
    result, seen = poll_until_done(resp.json()["polling_url"], api_key)
    assert result["status"] == "Ready"
    assert seen[0]["status"] == "Pending"


def test_moderated_is_not_charged(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    resp = create(gateway, key, {"prompt": "something sandbox:moderate"})
    assert resp.status_code == 200  # moderation is data on the task, as at BFL
    result, _ = poll_until_done(resp.json()["polling_url"], key)
    assert result["status"] in ("Request Moderated", "Content Moderated")
    assert result["status"] == "Request Moderated"  # the sandbox says which
    assert result["result"] is None and result["details"]["Moderation Reasons"]
    balance, total, rows = ledger_of(gateway, key_id)
    assert balance == total == 1_000_000
    assert [kind for kind, _ in rows] == ["topup", "reserve", "release"]


def test_upstream_failure_is_error_with_details(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    resp = create(gateway, key, {"prompt": "sandbox:fail please"})
    result, _ = poll_until_done(resp.json()["polling_url"], key)
    assert result["status"] == "Error" and result["result"] is None
    assert result["details"]["code"] == "upstream_error"
    assert "simulated failure" in result["details"]["message"]
    assert ledger_of(gateway, key_id)[0] == 1_000_000


def test_task_not_found_for_other_key_and_unknown_id(gateway: Gateway) -> None:
    _, owner = gateway.create_key("owner")
    _, other = gateway.create_key("other")
    created = create(gateway, owner, {"prompt": "mine"}).json()
    resp = httpx.get(created["polling_url"], headers={"x-key": other})
    assert resp.status_code == 404
    assert resp.json() == {"id": created["id"], "status": "Task not found", "result": None,
                           "progress": None, "details": None, "preview": None}
    resp = httpx.get(f"{gateway.base_url}/v1/get_result", params={"id": "nope"},
                     headers={"x-key": owner})
    assert resp.status_code == 404 and resp.json()["status"] == "Task not found"
    assert poll_until_done(created["polling_url"], owner)[0]["status"] == "Ready"


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x", "aspect_ratio": "30:1"}, "aspect_ratio"),
    ({"prompt": "x", "aspect_ratio": "wide"}, "aspect_ratio"),
    ({"prompt": "x", "safety_tolerance": 9}, "safety_tolerance"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "input_image": "not an image"}, "input_image"),
    ({"aspect_ratio": "1:1"}, "prompt"),
])
def test_invalid_input_is_422_with_fastapi_detail(gateway: Gateway, api_key: str,
                                                  body: dict[str, Any], field: str) -> None:
    resp = create(gateway, api_key, body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body"
    assert {"loc", "msg", "type"} <= set(detail[0])
    assert "error" not in resp.json()
    assert detail[0]["loc"][-1] == field


def test_missing_id_on_get_result_is_422(gateway: Gateway, api_key: str) -> None:
    resp = httpx.get(f"{gateway.base_url}/v1/get_result", headers={"x-key": api_key})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "id"]


def test_no_key_and_bad_key_are_403_not_authenticated(gateway: Gateway) -> None:
    for key in (None, "sk-not-a-key"):
        resp = create(gateway, key, {"prompt": "x"})
        assert resp.status_code == 403, resp.text
        assert resp.json()["detail"].startswith("Not authenticated")
        resp = httpx.get(f"{gateway.base_url}/v1/get_result", params={"id": "x"},
                         headers={"x-key": key} if key else {})
        assert resp.status_code == 403
    # the OpenAI surface keeps its envelope and 401
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", json={"prompt": "x"})
    assert resp.status_code == 401 and "error" in resp.json()


def test_insufficient_balance_is_402_and_creates_nothing(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=10_000)  # $0.01 < $0.04
    resp = create(gateway, key, {"prompt": "too expensive"})
    assert resp.status_code == 402, resp.text
    assert isinstance(resp.json()["detail"], str)
    assert ledger_of(gateway, key_id)[2] == [("topup", 10_000)]


def test_model_not_allowed_is_403(gateway: Gateway) -> None:
    _, key = gateway.create_key(models=["flux-kontext-pro"])
    resp = create(gateway, key, {"prompt": "x"}, model="flux-kontext-max")
    assert resp.status_code == 403 and "flux-kontext-max" in resp.json()["detail"]


def test_idempotency_key_creates_one_task(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    headers = {"idempotency-key": "bfl-once-1"}
    first = create(gateway, key, {"prompt": "once"}, headers=headers)
    second = create(gateway, key, {"prompt": "once"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers.get("idempotent-replayed") == "true"
    poll_until_done(first.json()["polling_url"], key)
    kinds = [kind for kind, _ in ledger_of(gateway, key_id)[2]]
    assert kinds == ["topup", "reserve", "settle"]


def test_concurrency_cap_is_429_with_detail(gateway: Gateway) -> None:
    _, key = gateway.create_key(max_concurrency=1)
    first = create(gateway, key, {"prompt": "slow sandbox:latency=1"})
    assert first.status_code == 200
    second = create(gateway, key, {"prompt": "another"})
    assert second.status_code == 429 and isinstance(second.json()["detail"], str)
    assert second.headers["retry-after"]
    poll_until_done(first.json()["polling_url"], key)


def test_rate_limit_headers_and_refused_webhook_url(gateway: Gateway) -> None:
    _, key = gateway.create_key(rpm=100)
    ok = create(gateway, key, {"prompt": "x"})
    assert ok.status_code == 200
    assert any(name.startswith("x-ratelimit-") for name in ok.headers)
    refused = create(gateway, key, {"prompt": "x", "webhook_url": "http://10.1.2.3/hook"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    poll_until_done(ok.json()["polling_url"], key)
