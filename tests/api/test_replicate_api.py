"""The Replicate-compatible API at /replicate, driven by the real `replicate` Python client."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError

from tests.conftest import Gateway, ImageServer, png_bytes

PRO = "black-forest-labs/flux-kontext-pro"
DEV = "black-forest-labs/flux-kontext-dev"
RED = (200, 30, 30)
INVERTED = (55, 225, 225)


def client(gw: Gateway, key: str) -> replicate.Client:
    c = replicate.Client(api_token=key, base_url=f"{gw.base_url}/replicate")
    c.poll_interval = 0.1
    return c


def fetch(url: object) -> Image.Image:
    assert isinstance(url, str) and url.startswith("http://"), url  # http: a plain str
    resp = httpx.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("image/")
    return Image.open(io.BytesIO(resp.content))


def center(image: Image.Image) -> tuple[int, ...]:
    pixel = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return pixel


def raw(gw: Gateway, key: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{gw.base_url}/replicate{path}",
                         headers={"authorization": f"Bearer {key}",
                                  **kwargs.pop("headers", {})},  # type: ignore[dict-item]
                         timeout=30, **kwargs)  # type: ignore[arg-type]


def test_run_returns_output_of_the_ratio_bucket(gateway: Gateway, api_key: str) -> None:
    output = client(gateway, api_key).run(PRO, input={"prompt": "a red fox",
                                                       "aspect_ratio": "16:9",
                                                       "output_format": "jpg"})
    image = fetch(output)
    assert image.size == (1392, 752) and image.format == "JPEG"


def test_slow_job_answers_starting_then_run_polls(gateway: Gateway, api_key: str) -> None:
    body = {"input": {"prompt": "a fox sandbox:latency=2"}}
    created = raw(gateway, api_key, "POST", f"/v1/models/{PRO}/predictions", json=body,
                  headers={"prefer": "wait=1"})
    assert created.status_code == 201
    pred = created.json()
    assert pred["status"] == "starting" and pred["version"] == "hidden"
    assert pred["model"] == PRO and pred["output"] is None
    assert pred["urls"]["get"].endswith(f"/replicate/v1/predictions/{pred['id']}")
    # the real client: the short wait ends with `starting`, then it polls to the end
    output = client(gateway, api_key).run(PRO, input=body["input"], wait=1)
    assert fetch(output).size == (1024, 1024)


def test_create_and_wait_without_prefer(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    prediction = c.models.predictions.create(model=PRO, input={"prompt": "a lighthouse",
                                                              "seed": 7})
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.input is not None and prediction.input["seed"] == 7
    assert fetch(prediction.output).size == (1024, 1024)
    again = c.predictions.get(prediction.id)
    assert again.status == "succeeded"  # the same file; its signature may be renewed
    assert again.output.split("?")[0] == prediction.output.split("?")[0]
    assert again.metrics and again.metrics["image_count"] == 1


def test_file_input_is_uploaded_and_read_from_storage(gateway: Gateway, api_key: str,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes((96, 64), RED))
    c = client(gateway, api_key)
    with path.open("rb") as handle:  # the client's default: POST /v1/files, then urls.get
        output = c.run(PRO, input={"prompt": "make it night", "input_image": handle,
                                   "aspect_ratio": "match_input_image"})
    image = fetch(output)
    assert image.size == (1248, 832)  # 3:2, the input's ratio
    assert center(image) == INVERTED
    with path.open("rb") as handle:
        uploaded = c.files.create(handle, metadata={"a": 1})
    assert uploaded.urls["get"].startswith(f"{gateway.base_url}/files/")
    assert uploaded.content_type == "image/png" and uploaded.metadata == {"a": 1}
    got = c.files.get(uploaded.id)
    assert got.id == uploaded.id
    assert (got.name, got.metadata) == ("in.png", {"a": 1})  # kept, not only echoed
    # another key can use neither the File object nor an unsigned copy of its URL
    _, other = gateway.create_key("other")
    with pytest.raises(ReplicateError) as info:
        client(gateway, other).files.get(uploaded.id)
    assert info.value.status == 404
    unsigned = uploaded.urls["get"].split("?")[0]
    with pytest.raises(ReplicateError) as info:
        client(gateway, other).run(PRO, input={"prompt": "x", "input_image": unsigned})
    assert info.value.status == 422


def test_base64_file_encoding(gateway: Gateway, api_key: str, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes((64, 64), RED))
    with path.open("rb") as handle:
        output = client(gateway, api_key).run(PRO, input={"prompt": "night",
                                                           "input_image": handle},
                                              file_encoding_strategy="base64")
    assert center(fetch(output)) == INVERTED


def test_failed_and_moderated_jobs_raise_model_error(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    with pytest.raises(ModelError) as info:
        c.run(PRO, input={"prompt": "a fox sandbox:fail"})
    assert info.value.prediction.status == "failed"
    assert info.value.prediction.error
    with pytest.raises(ModelError) as info:
        c.run(PRO, input={"prompt": "a fox sandbox:moderate"})
    failed = info.value.prediction
    assert failed.status == "failed" and failed.output is None
    assert "safety" in (failed.error or "").lower() or "moderat" in (failed.error or "").lower()


def test_cancel_releases_and_hides_from_other_keys(gateway: Gateway) -> None:
    _, key = gateway.create_key("a", balance=10_000_000)
    _, other = gateway.create_key("b")
    c = client(gateway, key)
    prediction = c.models.predictions.create(model=PRO, input={"prompt": "sandbox:stuck"})
    prediction.cancel()
    assert prediction.status == "canceled"
    assert c.predictions.get(prediction.id).status == "canceled"
    row = gateway.call(gateway.services.jobs.get(prediction.id))
    assert row.status == "canceled" and row.charged == 0
    with pytest.raises(ReplicateError) as info:
        client(gateway, other).predictions.get(prediction.id)
    assert info.value.status == 404
    resp = raw(gateway, other, "POST", f"/v1/predictions/{prediction.id}/cancel")
    assert resp.status_code == 404


def test_errors_are_replicate_style(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    with pytest.raises(ReplicateError) as info:
        c.models.predictions.create(model="black-forest-labs/flux-schnell",
                                    input={"prompt": "x"})
    assert info.value.status == 404 and info.value.title == "Not found"
    resp = raw(gateway, api_key, "POST", "/v1/models/acme/flux-kontext-pro/predictions",
               json={"input": {"prompt": "x"}})
    assert resp.status_code == 404 and set(resp.json()) == {"title", "detail", "status"}
    for body in ({"input": {"aspect_ratio": "1:1"}}, {"input": {"prompt": "x", "seed": "a"}},
                 {"input": {"prompt": "x", "aspect_ratio": "50:1"}}, {"prompt": "x"},
                 {"input": {"prompt": "x", "guidance": 11}}):
        resp = raw(gateway, api_key, "POST", f"/v1/models/{DEV}/predictions", json=body)
        assert resp.status_code == 422, body
        assert resp.json()["detail"] and resp.json()["status"] == 422
    resp = raw(gateway, "fk_live_wrong", "GET", "/v1/predictions/job_x")
    assert resp.status_code == 401 and "detail" in resp.json()
    # `Token <key>` is accepted too; the model object is served
    resp = httpx.get(f"{gateway.base_url}/replicate/v1/models/{DEV}",
                     headers={"authorization": f"Token {api_key}"})
    assert resp.status_code == 200 and resp.json()["name"] == "flux-kontext-dev"
    # other surfaces keep the OpenAI envelope
    resp = httpx.get(f"{gateway.base_url}/v1/nowhere")
    assert "error" in resp.json()


def test_dev_fields_are_accepted(gateway: Gateway, api_key: str,
                                 image_server: ImageServer) -> None:
    url = image_server.add("in.png", png_bytes((64, 96), RED))
    prediction = client(gateway, api_key).models.predictions.create(model=DEV, input={
        "prompt": "make it night", "input_image": url, "go_fast": True, "guidance": 2.5,
        "num_inference_steps": 30, "output_quality": 80, "output_format": "jpg",
        "aspect_ratio": "match_input_image", "disable_safety_checker": False},
        wait=True)
    assert prediction.status == "succeeded", prediction.error
    assert prediction.input is not None
    assert prediction.input["num_inference_steps"] == 30 and prediction.input["go_fast"]
    image = fetch(prediction.output)
    assert image.size == (832, 1248) and image.format == "JPEG"
    assert center(image) == INVERTED


def test_idempotency_key_replays_the_create(gateway: Gateway, api_key: str) -> None:
    body = {"input": {"prompt": "a fox"}}
    headers = {"idempotency-key": "replicate-1", "prefer": "wait"}
    first = raw(gateway, api_key, "POST", f"/v1/models/{PRO}/predictions", json=body,
                headers=headers)
    again = raw(gateway, api_key, "POST", f"/v1/models/{PRO}/predictions", json=body,
                headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["status"] == "succeeded"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
