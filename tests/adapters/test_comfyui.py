"""ComfyUI adapter against respx stubs that follow ComfyUI server.py's wire format."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from adapters.base import (
    InputImage,
    UpstreamAmbiguous,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
)
from adapters.comfyui import ComfyUIAdapter, ComfyUIOptions
from adapters.registry import build_adapter

BASE = "http://127.0.0.1:8188"
PID = "0f6a3c1e-6d7b-4a4e-9b7e-2d3f1a2b3c4d"


def make(client: httpx.AsyncClient, secret: str | None = None, **options: Any) -> ComfyUIAdapter:
    return ComfyUIAdapter(ComfyUIOptions(**options), secret, None, client)


def queued() -> httpx.Response:
    return httpx.Response(200, json={"prompt_id": PID, "number": 3, "node_errors": {}})


def by_class(graph: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [n["inputs"] for n in graph.values() if n["class_type"] == class_type]


def history_done(node: str = "10") -> dict[str, Any]:
    return {PID: {
        "prompt": [3, PID, {}, {}, [node]],
        "outputs": {node: {"images": [
            {"filename": "fluxgate_00001_.png", "subfolder": "", "type": "output"}]},
            "99": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]}},
        "status": {"status_str": "success", "completed": True,
                   "messages": [["execution_start", {"prompt_id": PID}],
                                ["execution_success", {"prompt_id": PID}]]}}}


async def test_text_to_image_graph(client: httpx.AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post(f"{BASE}/prompt").mock(return_value=queued())
    req = UpstreamRequest(model="flux-kontext-dev", prompt="a red fox", width=1392, height=752,
                          seed=42, extra={"steps": 28})
    job = await make(client).submit(req)

    assert route.call_count == 1
    body = json.loads(route.calls.last.request.content)
    assert body["client_id"] == "fluxgate"
    graph = body["prompt"]
    assert by_class(graph, "CLIPTextEncode")[0]["text"] == "a red fox"
    assert by_class(graph, "EmptySD3LatentImage") == [
        {"width": 1392, "height": 752, "batch_size": 1}]
    sampler = by_class(graph, "KSampler")[0]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (42, 28, 1.0)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("euler", "simple")
    assert by_class(graph, "FluxGuidance")[0]["guidance"] == 2.5
    assert by_class(graph, "FluxGuidance")[0]["conditioning"] == ["4", 0]
    assert by_class(graph, "UNETLoader")[0]["unet_name"] == (
        "flux1-dev-kontext_fp8_scaled.safetensors")
    assert by_class(graph, "LoadImage") == []
    assert "authorization" not in route.calls.last.request.headers
    assert job.id == PID and job.state is UpstreamState.PENDING
    assert job.handle["history_path"] == f"/history/{PID}"


async def test_edit_uploads_then_references_names(client: httpx.AsyncClient,
                                                  mock: respx.MockRouter, image: InputImage,
                                                  image2: InputImage) -> None:
    names = iter(["in-1.png", "in-2 (1).png"])
    upload = mock.post(f"{BASE}/upload/image").mock(side_effect=lambda _req: httpx.Response(
        200, json={"name": next(names), "subfolder": "", "type": "input"}))
    route = mock.post(f"{BASE}/prompt").mock(return_value=queued())
    req = UpstreamRequest(model="flux-kontext-dev", prompt="make it blue", operation="edit",
                          images=(image, image2), extra={"guidance": 3.0})
    await make(client, guidance=2.0).submit(req)

    assert upload.call_count == 2
    sent = upload.calls[0].request
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert b'name="image"; filename="fluxgate-' in sent.content and image.data in sent.content
    assert b'name="type"\r\n\r\ninput' in sent.content
    assert b'name="overwrite"\r\n\r\ntrue' in sent.content
    graph = json.loads(route.calls.last.request.content)["prompt"]
    assert [n["image"] for n in by_class(graph, "LoadImage")] == ["in-1.png", "in-2 (1).png"]
    refs = by_class(graph, "ReferenceLatent")
    assert refs[0]["conditioning"] == ["4", 0] and refs[1]["conditioning"] == ["103", 0]
    assert by_class(graph, "FluxGuidance")[0] == {"conditioning": ["113", 0], "guidance": 3.0}
    # no explicit size: the first input's ratio (32x24 = 4:3) bucket
    assert by_class(graph, "EmptySD3LatentImage")[0]["width"] == 1184
    assert by_class(graph, "EmptySD3LatentImage")[0]["height"] == 880


async def test_pending_then_success_and_download(client: httpx.AsyncClient,
                                                 mock: respx.MockRouter) -> None:
    history = mock.get(f"{BASE}/history/{PID}").mock(side_effect=[
        httpx.Response(200, json={}), httpx.Response(200, json=history_done())])
    mock.get(f"{BASE}/queue").mock(return_value=httpx.Response(200, json={
        "queue_running": [[3, PID, {}, {}, ["10"]]], "queue_pending": []}))
    view = mock.get(f"{BASE}/view").mock(return_value=httpx.Response(200, content=b"PNGDATA"))
    adapter = make(client, secret="proxy-token")
    job = UpstreamJob(id=PID, handle={"history_path": f"/history/{PID}"})

    job = await adapter.poll(job)
    assert job.state is UpstreamState.PENDING
    job = await adapter.poll(job)
    assert history.call_count == 2
    assert job.state is UpstreamState.SUCCEEDED
    assert [o.url for o in job.outputs] == [
        f"{BASE}/view?filename=fluxgate_00001_.png&subfolder=&type=output"]
    assert await adapter.download(job.outputs[0]) == b"PNGDATA"
    got = view.calls.last.request
    assert got.url.params["filename"] == "fluxgate_00001_.png"
    assert got.url.params["type"] == "output"
    assert got.headers["authorization"] == "Bearer proxy-token"


async def test_download_elsewhere_carries_no_token(client: httpx.AsyncClient,
                                                   mock: respx.MockRouter) -> None:
    route = mock.get("https://cdn.example/x.png").mock(return_value=httpx.Response(200,
                                                                                   content=b"x"))
    await make(client, secret="proxy-token").download(UpstreamOutput(url="https://cdn.example/x.png"))
    assert "authorization" not in route.calls.last.request.headers


async def test_forgotten_prompt_is_not_found(client: httpx.AsyncClient,
                                             mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/history/{PID}").mock(return_value=httpx.Response(200, json={}))
    mock.get(f"{BASE}/queue").mock(return_value=httpx.Response(
        200, json={"queue_running": [], "queue_pending": []}))
    job = await make(client).poll(UpstreamJob(id=PID))
    assert job.state is UpstreamState.NOT_FOUND


async def test_error_status_fails_with_message(client: httpx.AsyncClient,
                                               mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/history/{PID}").mock(return_value=httpx.Response(200, json={PID: {
        "outputs": {},
        "status": {"status_str": "error", "completed": False, "messages": [
            ["execution_start", {"prompt_id": PID}],
            ["execution_error", {"prompt_id": PID, "node_id": "8", "node_type": "KSampler",
                                 "exception_type": "torch.OutOfMemoryError",
                                 "exception_message": "CUDA out of memory"}]]}}}))
    job = await make(client).poll(UpstreamJob(id=PID))
    assert job.state is UpstreamState.FAILED
    assert job.error_message == "KSampler (node 8): torch.OutOfMemoryError: CUDA out of memory"


@pytest.mark.parametrize("status_str", ["running", "Something New"])
async def test_unknown_status_keeps_polling(client: httpx.AsyncClient, mock: respx.MockRouter,
                                            status_str: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Only ComfyUI's terminal words (`success`, `error`) end a job: an entry with another
    word and no outputs yet keeps polling until the deadline (failing it could release a job
    the server then finishes), logged once per job and word; then success is read."""
    entry = {PID: {"outputs": {}, "status": {"status_str": status_str, "completed": False,
                                             "messages": [["execution_start",
                                                           {"prompt_id": PID}]]}}}
    route = mock.get(f"{BASE}/history/{PID}").mock(
        side_effect=[httpx.Response(200, json=entry)] * 3
        + [httpx.Response(200, json=history_done())])
    adapter = make(client)
    job = UpstreamJob(id=PID)
    with caplog.at_level("WARNING", logger="adapters.comfyui"):
        for _ in range(3):
            job = await adapter.poll(job)
            assert job.state is UpstreamState.PENDING and job.error_code is None
    warned = [r for r in caplog.records if "not a documented one" in r.getMessage()]
    assert len(warned) == 1 and status_str in warned[0].getMessage()
    job = await adapter.poll(job)
    assert job.state is UpstreamState.SUCCEEDED and route.call_count == 4


async def test_node_errors_400_is_not_retryable(client: httpx.AsyncClient,
                                                mock: respx.MockRouter) -> None:
    mock.post(f"{BASE}/prompt").mock(return_value=httpx.Response(400, json={
        "error": {"type": "prompt_outputs_failed_validation",
                  "message": "Prompt outputs failed validation", "details": "",
                  "extra_info": {}},
        "node_errors": {"1": {"errors": [{
            "type": "value_not_in_list", "message": "Value not in list",
            "details": "unet_name: 'flux1-dev-kontext_fp8_scaled.safetensors' not in []",
            "extra_info": {}}], "dependent_outputs": ["10"], "class_type": "UNETLoader"}}}))
    with pytest.raises(UpstreamRejected) as err:
        await make(client).submit(UpstreamRequest(model="flux-kontext-dev", prompt="x"))
    assert err.value.retryable is False and err.value.status == 400
    assert "Prompt outputs failed validation" in err.value.message
    assert "node 1 (UNETLoader): Value not in list: unet_name" in err.value.message


async def test_connection_refused_is_retryable(client: httpx.AsyncClient,
                                               mock: respx.MockRouter) -> None:
    mock.post(f"{BASE}/prompt").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamRejected) as err:
        await make(client).submit(UpstreamRequest(model="flux-kontext-dev", prompt="x"))
    assert err.value.retryable is True


async def test_read_timeout_after_prompt_is_ambiguous(client: httpx.AsyncClient,
                                                      mock: respx.MockRouter) -> None:
    route = mock.post(f"{BASE}/prompt").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamAmbiguous):
        await make(client).submit(UpstreamRequest(model="flux-kontext-dev", prompt="x"))
    assert route.call_count == 1


async def test_cancel_deletes_then_interrupts(client: httpx.AsyncClient,
                                              mock: respx.MockRouter) -> None:
    delete = mock.post(f"{BASE}/queue").mock(return_value=httpx.Response(200))
    mock.get(f"{BASE}/queue").mock(return_value=httpx.Response(200, json={
        "queue_running": [[3, PID, {}, {}, ["10"]]], "queue_pending": []}))
    interrupt = mock.post(f"{BASE}/interrupt").mock(return_value=httpx.Response(200))
    await make(client).cancel(UpstreamJob(id=PID))
    assert json.loads(delete.calls.last.request.content) == {"delete": [PID]}
    assert json.loads(interrupt.calls.last.request.content) == {"prompt_id": PID}


async def test_cancel_does_not_interrupt_another_job(client: httpx.AsyncClient,
                                                     mock: respx.MockRouter) -> None:
    mock.post(f"{BASE}/queue").mock(return_value=httpx.Response(200))
    mock.get(f"{BASE}/queue").mock(return_value=httpx.Response(200, json={
        "queue_running": [[4, "someone-else", {}, {}, ["10"]]], "queue_pending": []}))
    interrupt = mock.post(f"{BASE}/interrupt").mock(return_value=httpx.Response(200))
    await make(client).cancel(UpstreamJob(id=PID))
    assert interrupt.call_count == 0


async def test_custom_workflow_placeholders(client: httpx.AsyncClient, mock: respx.MockRouter,
                                            tmp_path: Path, image: InputImage) -> None:
    workflow = {
        "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "steps": "{{steps}}"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, {{prompt}}"}},
        "7": {"class_type": "EmptyLatentImage",
              "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1}},
        "12": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
        "30": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mine"}},
    }
    path = tmp_path / "kontext_api.json"
    path.write_text(json.dumps(workflow))
    mock.post(f"{BASE}/upload/image").mock(return_value=httpx.Response(
        200, json={"name": "up.png", "subfolder": "", "type": "input"}))
    route = mock.post(f"{BASE}/prompt").mock(return_value=queued())
    adapter = build_adapter("comfyui", {"workflow_file": str(path), "output_node": "30"}, None,
                            None, client)
    assert adapter.capabilities.max_input_images == 1
    assert adapter.capabilities.output_formats == ("png",)
    await adapter.submit(UpstreamRequest(model="flux-kontext-dev", prompt="a cat",
                                         operation="edit", images=(image,), seed=7,
                                         aspect_ratio="1:1"))
    graph = json.loads(route.calls.last.request.content)["prompt"]
    assert graph["3"]["inputs"] == {"seed": 7, "steps": 20}
    assert graph["6"]["inputs"]["text"] == "masterpiece, a cat"
    assert graph["7"]["inputs"] == {"width": 1024, "height": 1024, "batch_size": 1}
    assert graph["12"]["inputs"]["image"] == "up.png"

    with pytest.raises(UpstreamRejected) as err:  # the workflow needs its input image
        await adapter.submit(UpstreamRequest(model="flux-kontext-dev", prompt="a cat"))
    assert err.value.retryable is True


def test_unknown_option_and_bad_workflow_are_refused(client: httpx.AsyncClient,
                                                     tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extra"):
        build_adapter("comfyui", {"stepz": 3}, None, None, client)
    bad = tmp_path / "ui.json"
    bad.write_text(json.dumps({"nodes": [], "links": []}))  # a UI-format save, not API format
    with pytest.raises(ValueError, match="Save \\(API\\)"):
        build_adapter("comfyui", {"workflow_file": str(bad)}, None, None, client)


def job_answer(status: str, **extra: Any) -> httpx.Response:
    """ComfyUI >= 0.36 `GET /api/jobs/{id}` (comfy_execution/jobs.py: normalize_*_item)."""
    return httpx.Response(200, json={"id": PID, "status": status, "priority": 3, **extra})


async def test_client_chosen_prompt_id_and_jobs_api(client: httpx.AsyncClient,
                                                    mock: respx.MockRouter) -> None:
    sent: dict[str, Any] = {}

    def accept(request: httpx.Request) -> httpx.Response:
        sent.update(json.loads(request.content))
        return httpx.Response(200, json={"prompt_id": sent["prompt_id"], "number": 1,
                                         "node_errors": {}})
    mock.post(f"{BASE}/prompt").mock(side_effect=accept)
    adapter = make(client)
    job = await adapter.submit(UpstreamRequest(model="flux-kontext-dev", prompt="a fox"))
    assert job.id == sent["prompt_id"] and str(uuid.UUID(job.id)) == job.id  # lowercase uuid
    done = dict(history_done()[PID])
    jobs = mock.get(f"{BASE}/api/jobs/{job.id}").mock(side_effect=[
        job_answer("pending"), job_answer("in_progress"),
        job_answer("completed", outputs=done["outputs"], execution_status=done["status"])])
    history = mock.get(url__startswith=f"{BASE}/history")
    states = [(await adapter.poll(job)).state for _ in range(3)]
    assert states == [UpstreamState.PENDING, UpstreamState.PENDING, UpstreamState.SUCCEEDED]
    assert jobs.call_count == 3 and history.call_count == 0  # no /history, no /queue
    assert [o.url for o in job.outputs] == [
        f"{BASE}/view?filename=fluxgate_00001_.png&subfolder=&type=output"]


async def test_jobs_api_failure_unknown_and_cancel(client: httpx.AsyncClient,
                                                   mock: respx.MockRouter) -> None:
    adapter = make(client)
    handle = {"history_path": f"/history/{PID}", "jobs_path": f"/jobs/{PID}"}
    error = {"node_id": "8", "node_type": "KSampler", "exception_type": "RuntimeError",
             "exception_message": "boom"}
    mock.get(f"{BASE}/api/jobs/{PID}").mock(side_effect=[
        job_answer("failed", outputs={}, execution_error=error,
                   execution_status={"status_str": "error", "messages": []}),
        httpx.Response(404, json={"error": "Job not found"})])
    failed = await adapter.poll(UpstreamJob(id=PID, handle=dict(handle)))
    assert failed.state is UpstreamState.FAILED
    assert failed.error_message == "KSampler (node 8): RuntimeError: boom"
    gone = await adapter.poll(UpstreamJob(id=PID, handle=dict(handle)))
    assert gone.state is UpstreamState.NOT_FOUND
    cancel = mock.post(f"{BASE}/api/jobs/{PID}/cancel").mock(return_value=httpx.Response(200))
    interrupt = mock.post(f"{BASE}/interrupt")
    await adapter.cancel(UpstreamJob(id=PID, handle=dict(handle)))
    assert cancel.call_count == 1 and interrupt.call_count == 0


async def test_older_server_falls_back_to_history(client: httpx.AsyncClient,
                                                  mock: respx.MockRouter) -> None:
    # aiohttp's own 404 for a route the server does not have: plain text, not JSON
    jobs = mock.get(f"{BASE}/api/jobs/{PID}").mock(
        return_value=httpx.Response(404, text="404: Not Found"))
    mock.get(f"{BASE}/history/{PID}").mock(return_value=httpx.Response(200, json=history_done()))
    mock.post(f"{BASE}/prompt").mock(return_value=queued())
    adapter = make(client)
    job = await adapter.submit(UpstreamRequest(model="flux-kontext-dev", prompt="a fox"))
    job = await adapter.poll(job)
    assert job.state is UpstreamState.SUCCEEDED
    later = await adapter.submit(UpstreamRequest(model="flux-kontext-dev", prompt="again"))
    assert later.handle["jobs_path"] is None  # known now: later jobs go straight to /history
    assert jobs.call_count == 1
