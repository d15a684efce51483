"""The Responses API (POST /v1/responses, GET /v1/responses/{id}) through the real server with
the openai SDK (`client.responses.create`, `client.responses.stream`, `stream=True`; the
newest installed one and the oldest supported 1.x, both in strict mode) and raw HTTP for the
wire details (event framing, keep-alives, errors)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseCompletedEvent
from PIL import Image

from tests.api.test_sdk_versions import OLDEST, oldest_sdk  # noqa: F401 (a fixture)
from tests.conftest import Gateway, ImageServer, jobs_of, ledger_of, png_bytes, start_gateway

RED, INVERTED_RED = (200, 30, 30), (55, 225, 225)
PRICE = 40_000  # flux-kontext-pro, per image (billing defaults)
#: what OpenAI sends for a hosted image tool, in this order (the message carries the link)
EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
          "response.image_generation_call.in_progress",
          "response.image_generation_call.generating",
          "response.image_generation_call.completed", "response.output_item.done",
          "response.output_item.added", "response.content_part.added",
          "response.output_text.delta", "response.output_text.done",
          "response.content_part.done", "response.output_item.done", "response.completed"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for this module (each test makes its own keys): starts cost seconds."""
    started = start_gateway(tmp_path_factory.mktemp("responses") / "data")
    yield started
    started.stop()


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def centre(b64: str) -> tuple[int, ...]:
    image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    pixel: tuple[int, ...] = image.getpixel((image.width // 2, image.height // 2))
    return pixel


def edit_input(prompt: str, image: bytes) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "input_text", "text": prompt},
                                         {"type": "input_image", "image_url": data_url(image)}]}]


def test_create_with_the_image_tool_returns_the_image_and_charges_once(
        gateway: Gateway) -> None:
    key_id, key = gateway.create_key("resp", balance=1_000_000)
    response = client(gateway, key).responses.create(
        model="gpt-5", input="a red fox in snow",
        tools=[{"type": "image_generation", "size": "1536x1024", "output_format": "jpeg",
                "quality": "high"}])
    assert response.status == "completed" and response.model == "gpt-5"
    call, message = response.output
    assert call.type == "image_generation_call" and call.status == "completed"
    assert call.id.startswith("ig_") and response.id.startswith("resp_")
    assert call.result is not None
    image = Image.open(io.BytesIO(base64.b64decode(call.result)))
    assert image.format == "JPEG" and image.size == (1248, 832)  # 3:2, Kontext's bucket
    extra: dict[str, Any] = call.model_extra or {}
    assert httpx.get(extra["url"]).content == base64.b64decode(call.result)
    assert message.type == "message" and extra["url"] in response.output_text
    assert response.usage is not None and response.usage.output_tokens == 1
    assert [t.type for t in response.tools] == ["image_generation"]
    [job] = jobs_of(gateway, key_id)
    assert (job.surface, job.model, job.status) == ("openai.responses", "flux-kontext-pro",
                                                    "succeeded")
    balance, ledger_total, _ = ledger_of(gateway, key_id)
    assert balance == ledger_total == 1_000_000 - PRICE  # charged once
    again = client(gateway, key).responses.retrieve(response.id)
    assert again.output[0].type == "image_generation_call"
    assert again.output[0].result == call.result and again.model == "gpt-5"


def test_flux_model_without_a_tool_is_an_image_request(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("no-tool")
    response = client(gateway, key).responses.create(
        model="flux-kontext-max", input=[{"role": "user", "content": "a lighthouse"}])
    [job] = jobs_of(gateway, key_id)
    assert job.model == "flux-kontext-max" and job.operation == "generate"
    assert response.output[0].type == "image_generation_call"
    assert response.output[0].status == "completed"


def test_stream_event_sequence_with_the_sdk_helper(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("stream", balance=1_000_000)
    with client(gateway, key).responses.stream(
            model="gpt-5", input="a fox",
            tools=[{"type": "image_generation", "partial_images": 2}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    expected = list(EVENTS)
    expected.insert(5, "response.image_generation_call.partial_image")  # one: see docs
    assert [e.type for e in events] == expected
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    partial = events[5]
    assert partial.type == "response.image_generation_call.partial_image"
    call = final.output[0]
    assert call.type == "image_generation_call" and partial.partial_image_b64 == call.result
    assert final.status == "completed" and final.output_text.startswith("![image")
    assert ledger_of(gateway, key_id)[0] == 1_000_000 - PRICE


def test_stream_true_events_and_keepalives_on_the_wire(gateway_factory: Any) -> None:
    gw = gateway_factory(chat={"keepalive": 0.3})
    _, key = gw.create_key("slow")
    with httpx.stream("POST", f"{gw.base_url}/v1/responses", timeout=60,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "stream": True,
                            "input": "slowly sandbox:latency=2",
                            "tools": [{"type": "image_generation"}]}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = list(resp.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names == EVENTS
    datas = [json.loads(line.removeprefix("data: ")) for line in lines
             if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names  # `event:` and the data's type agree
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    completed = lines.index("event: response.image_generation_call.completed")
    assert pings and max(pings) < completed, lines[:20]
    final = ResponseCompletedEvent.model_validate(datas[-1])
    assert final.response.output[0].type == "image_generation_call"


def test_sdk_create_stream_true(gateway: Gateway, api_key: str) -> None:
    events = list(client(gateway, api_key).responses.create(
        model="flux-kontext-pro", input="a fox", stream=True,
        tools=[{"type": "image_generation"}]))
    assert [e.type for e in events] == EVENTS


def test_multi_turn_edit_by_previous_response_id(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("turns")
    sdk = client(gateway, key)
    first = sdk.responses.create(model="flux-kontext-pro",
                                 input=edit_input("invert it", png_bytes((64, 64), RED)),
                                 tools=[{"type": "image_generation"}])
    call = first.output[0]
    assert call.type == "image_generation_call" and call.result is not None
    assert centre(call.result) == INVERTED_RED  # the sandbox inverts what it edits
    second = sdk.responses.create(model="flux-kontext-pro", input="invert it again",
                                  previous_response_id=first.id,
                                  tools=[{"type": "image_generation"}])
    again = second.output[0]
    assert again.type == "image_generation_call" and again.result is not None
    assert again.to_dict()["action"] == "edit"
    assert centre(again.result) == RED  # the previous image was the input
    assert second.previous_response_id == first.id
    # `action: generate` takes nothing from the history
    third = sdk.responses.create(model="flux-kontext-pro", input="a new picture",
                                 previous_response_id=second.id,
                                 tools=[{"type": "image_generation", "action": "generate"}])
    assert [j.operation for j in jobs_of(gateway, key_id)] == ["edit", "edit", "generate"]
    assert third.status == "completed"


def test_handed_back_image_item_and_file_id_and_url_inputs(
        gateway: Gateway, image_server: ImageServer) -> None:
    key_id, key = gateway.create_key("items")
    sdk = client(gateway, key)
    first = sdk.responses.create(model="flux-kontext-pro",
                                 input=edit_input("invert it", png_bytes((64, 64), RED)))
    call = first.output[0]
    history: list[Any] = [*edit_input("invert it", png_bytes((64, 64), RED)),
                          {"type": "item_reference", "id": call.id},
                          {"role": "user", "content": "invert it again"}]
    by_reference = sdk.responses.create(model="flux-kontext-pro", input=history)
    assert centre(by_reference.output[0].result or "") == RED
    # an item made elsewhere (OpenAI itself), handed back whole as the agents SDK does
    foreign = sdk.responses.create(model="flux-kontext-pro", input=[
        {"type": "image_generation_call", "id": "ig_made_by_openai", "status": "completed",
         "result": base64.b64encode(png_bytes((64, 64), RED)).decode()},
        {"role": "user", "content": "invert it"}])
    assert centre(foreign.output[0].result or "") == INVERTED_RED
    uploaded = httpx.post(f"{gateway.base_url}/replicate/v1/files",
                          headers={"authorization": f"Bearer {key}"},
                          files={"content": ("in.png", png_bytes((64, 64), RED))}).json()
    by_file = sdk.responses.create(model="flux-kontext-pro", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "invert it"},
        {"type": "input_image", "file_id": uploaded["id"]}]}])
    assert centre(by_file.output[0].result or "") == INVERTED_RED
    url = image_server.add("red.png", png_bytes((64, 64), RED))
    by_url = sdk.responses.create(model="flux-kontext-pro", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "invert it"}, {"type": "input_image", "image_url": url}]}])
    assert centre(by_url.output[0].result or "") == INVERTED_RED
    _, other = gateway.create_key("other")
    with pytest.raises(openai.NotFoundError) as refused:
        client(gateway, other).responses.create(model="flux-kontext-pro", input=[
            {"role": "user", "content": [{"type": "input_text", "text": "invert it"},
                                         {"type": "input_image", "file_id": uploaded["id"]}]}])
    assert refused.value.body["param"] == "input[0].content[1].file_id"  # type: ignore[index]
    assert len(jobs_of(gateway, key_id)) == 5


def test_another_keys_response_id_is_a_404(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("owner")
    other_id, other = gateway.create_key("other")
    made = client(gateway, key).responses.create(model="flux-kontext-pro", input="a fox")
    with pytest.raises(openai.NotFoundError):
        client(gateway, other).responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as refused:
        client(gateway, other).responses.create(model="flux-kontext-pro", input="make it night",
                                                previous_response_id=made.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert refused.value.body["code"] == "response_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):  # nor its image item
        client(gateway, other).responses.create(model="flux-kontext-pro", input=[
            {"type": "item_reference", "id": made.output[0].id},
            {"role": "user", "content": "make it night"}])
    with pytest.raises(openai.NotFoundError):
        client(gateway, key).responses.retrieve("resp_0000000000000000")
    assert jobs_of(gateway, other_id) == [] and len(jobs_of(gateway, key_id)) == 1


#: (body, status, param named by the error)
BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"model": "flux-kontext-pro", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}, 400,
     "input[0]"),
    ({"model": "flux-kontext-pro", "input": [{"role": "assistant", "content": "hi"}]}, 400,
     "input"),
    ({"model": "flux-kontext-pro", "input": "a fox",
      "tools": [{"type": "image_generation", "partial_images": 9}]}, 400,
     "tools[0].partial_images"),
    ({"model": "flux-kontext-pro", "input": "a fox",
      "tools": [{"type": "image_generation", "action": "edit"}]}, 400, "tools[0].action"),
    ({"model": "flux-kontext-pro", "input": "a fox",
      "tools": [{"type": "image_generation", "action": "paint"}]}, 400, "tools[0].action"),
    ({"model": "flux-kontext-pro", "input": "a fox", "stream": "yes"}, 400, "stream"),
    ({"model": "gpt-5", "input": "a fox"}, 404, "model"),
    ({"model": "gpt-5", "input": "a fox",
      "tools": [{"type": "image_generation", "model": "sdxl"}]}, 404, "tools[0].model"),
    ({"model": "flux-kontext-pro", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "edit"},
        {"type": "input_image", "image_url": "http://10.0.0.1/a.png"}]}]}, 400,
     "input[0].content[1].image_url"),
    ({"model": "flux-kontext-pro", "input": "a fox", "previous_response_id": "resp_nope"},
     404, "previous_response_id"),
    ({"input": "a fox", "model": "flux-kontext-pro", "tools": "image_generation"}, 400,
     "tools"),
]


def test_bad_input_is_refused_before_any_job(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("bad", balance=1_000_000)
    for body, status, param in BAD:
        resp = httpx.post(f"{gateway.base_url}/v1/responses", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"})
        assert resp.status_code == status, (body, resp.text)
        error = resp.json()["error"]
        assert error["param"] == param and error["message"] and error["type"], (body, error)
        assert resp.headers["x-should-retry"] == "false"
    no_key = httpx.post(f"{gateway.base_url}/v1/responses", content=b"{not json", timeout=30)
    assert no_key.status_code == 401  # the key first, whatever the body
    not_json = httpx.post(f"{gateway.base_url}/v1/responses", content=b"{not json",
                          timeout=30, headers={"authorization": f"Bearer {key}"})
    assert not_json.status_code == 400 and not_json.json()["error"]["param"] is None
    assert jobs_of(gateway, key_id) == [] and ledger_of(gateway, key_id)[0] == 1_000_000


def test_failed_job_is_an_error_status_or_response_failed_and_not_charged(
        gateway: Gateway) -> None:
    key_id, key = gateway.create_key("fail", balance=1_000_000)
    sdk = client(gateway, key)
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.responses.create(model="flux-kontext-pro", input="a fox sandbox:fail")
    assert failed.value.status_code == 502
    events = list(sdk.responses.create(model="flux-kontext-pro", input="a fox sandbox:fail",
                                       stream=True))
    assert [e.type for e in events][-2:] == ["response.output_item.done", "response.failed"]
    last = events[-1]
    assert last.type == "response.failed" and last.response.error is not None
    assert last.response.error.code == "server_error"
    moderated = list(sdk.responses.create(model="flux-kontext-pro", stream=True,
                                          input="a fox sandbox:moderate"))[-1]
    assert moderated.type == "response.failed" and moderated.response.error is not None
    assert moderated.response.error.code == "image_content_policy_violation"
    assert [j.status for j in jobs_of(gateway, key_id)] == ["failed"] * 3
    balance, total, _ = ledger_of(gateway, key_id)
    assert balance == total == 1_000_000  # released, never charged
    [row, *_] = jobs_of(gateway, key_id)
    response_id = "resp_" + (row.batch_id or "").removeprefix("batch_")
    read = sdk.responses.retrieve(response_id)
    assert read.status == "failed" and read.error is not None


def test_idempotency_key_replays_without_a_second_charge(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("idem", balance=1_000_000)
    body = {"model": "flux-kontext-pro", "input": "a fox"}
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "same-1"}
    first = httpx.post(f"{gateway.base_url}/v1/responses", json=body, headers=headers,
                       timeout=60)
    again = httpx.post(f"{gateway.base_url}/v1/responses", json=body, headers=headers,
                       timeout=60)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(jobs_of(gateway, key_id)) == 1
    assert ledger_of(gateway, key_id)[0] == 1_000_000 - PRICE


def test_background_answers_at_once_and_get_polls(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("background")
    sdk = client(gateway, key)
    queued = sdk.responses.create(model="flux-kontext-pro", input="a fox sandbox:latency=1",
                                  background=True)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    done = sdk.responses.retrieve(queued.id)
    for _ in range(600):  # generous: a busy machine
        if done.status == "completed":
            break
        gateway.call(gateway.services.jobs.wait([jobs_of(gateway, key_id)[0].id],
                                                      within=0.1))
        done = sdk.responses.retrieve(queued.id)
    assert done.status == "completed" and done.output[0].type == "image_generation_call"


OLD_SCRIPT = """
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0,
                       _strict_response_validation=True)
made = client.responses.create(model="gpt-5", input="a fox",
                               tools=[{"type": "image_generation", "size": "1024x1024"}])
with client.responses.stream(model="gpt-5", input="make it night", previous_response_id=made.id,
                             tools=[{"type": "image_generation"}]) as stream:
    types = [event.type for event in stream]
    final = stream.get_final_response()
print(json.dumps({"version": openai.__version__, "status": made.status,
                  "result": len(made.output[0].result), "text": made.output_text,
                  "types": types, "final": final.status,
                  "edited": final.output[0].model_extra.get("action")}))
"""


def test_oldest_supported_sdk_in_strict_mode(gateway: Gateway, api_key: str,
                                             oldest_sdk: Path) -> None:  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(oldest_sdk)}
    done = subprocess.run([sys.executable, "-c", OLD_SCRIPT, f"{gateway.base_url}/v1", api_key],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["version"] == OLDEST
    assert result["status"] == "completed" and result["result"] > 1000
    assert result["text"].startswith("![image")
    assert result["types"] == EVENTS and result["final"] == "completed"
    assert result["edited"] == "edit"


def test_tool_mask_limits_the_edit(gateway: Gateway, api_key: str) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # white (edited) on the left, black (kept) on the right
    out = io.BytesIO()
    mask.save(out, format="PNG")
    response = client(gateway, api_key).responses.create(
        model="flux-kontext-pro", input=edit_input("invert it", png_bytes((64, 64), RED)),
        tools=[{"type": "image_generation",
                "input_image_mask": {"image_url": data_url(out.getvalue())}}])
    result = response.output[0]
    assert result.type == "image_generation_call" and result.result is not None
    image = Image.open(io.BytesIO(base64.b64decode(result.result))).convert("RGB")
    assert image.size == (64, 64)  # a masked edit keeps the input's size
    assert image.getpixel((8, 32)) == INVERTED_RED and image.getpixel((56, 32)) == RED
