"""A tiny FLUX.2 [klein] pipeline behind `fluxgate worker` (a real process on the CPU), driven
by the real `local_worker` adapter: FLUX.2 sizes, references, determinism, batching, the job
API's refusals and its health answer."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from adapters.base import InputImage, UpstreamJob, UpstreamRequest, UpstreamState
from adapters.local_worker import LocalWorkerAdapter, LocalWorkerOptions
from tests.worker.conftest import SECRET, WorkerProcess, auth, wait_until

# one pytest-xdist process runs every worker test: the tiny pipelines are built once
pytestmark = pytest.mark.xdist_group("worker")


@pytest.fixture(scope="module")
def klein(worker_factory: Callable[..., list[WorkerProcess]], tiny_models: Path
          ) -> WorkerProcess:
    return worker_factory(tiny_models / "klein", "--max-batch", "2")[0]


def adapter(worker: WorkerProcess, client: httpx.AsyncClient) -> LocalWorkerAdapter:
    options = LocalWorkerOptions(workers=[worker.url], models=("flux-2-klein-4b",),
                                 max_input_images=4, health_ttl=0)
    return LocalWorkerAdapter(options, SECRET, None, client)


async def done(ad: LocalWorkerAdapter, job: UpstreamJob) -> UpstreamJob:
    async with asyncio.timeout(120):
        while not job.state.terminal:
            await asyncio.sleep(0.05)
            job = await ad.poll(job)
    return job


def picture(color: tuple[int, int, int], size: tuple[int, int]) -> InputImage:
    im = Image.new("RGB", size, color)
    im.paste((20, 220, 90), (0, 0, size[0] // 2, size[1] // 3))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return InputImage(buf.getvalue(), "image/png", *size)


def request(**kw: object) -> UpstreamRequest:
    base: dict[str, object] = {"model": "flux-2-klein-4b", "prompt": "a blue sea", "seed": 5,
                               "width": 150, "height": 100, "extra": {"steps": 2}}
    base.update(kw)
    return UpstreamRequest(**base)  # type: ignore[arg-type]


async def test_flux2_sizes_references_and_determinism(klein: WorkerProcess) -> None:
    async with httpx.AsyncClient() as client:
        ad = adapter(klein, client)
        first = await done(ad, await ad.submit(request()))
        again = await done(ad, await ad.submit(request()))
        edit = await done(ad, await ad.submit(request(
            prompt="put the sea in it", operation="edit",
            images=(picture((200, 30, 30), (128, 96)), picture((30, 30, 200), (96, 128))))))
    for job in (first, again, edit):
        assert job.state is UpstreamState.SUCCEEDED, job.error_message
    a, b, e = (j.outputs[0].data for j in (first, again, edit))
    assert a == b and a != e  # same seed, same bytes; two references change the image
    assert a is not None
    with Image.open(io.BytesIO(a)) as im:
        assert im.size == (144, 96)  # FLUX.2: floored to multiples of 16 (150x100 asked)
    health = klein.health()
    assert health["family"] == "flux2-klein" and health["pipeline"] == "Flux2KleinPipeline"
    assert health["model"] == "flux-2-klein-4b" and health["device"] == "cpu"
    memory = health["memory"]
    assert isinstance(memory, dict) and memory["rss_bytes"] > 0


async def test_compatible_jobs_share_one_pipeline_call(klein: WorkerProcess) -> None:
    async with httpx.AsyncClient() as client:
        ad = adapter(klein, client)
        alone = await done(ad, await ad.submit(request(seed=11)))
        blocker = await ad.submit(request(prompt="long", extra={"steps": 50_000}))
        wait_until(lambda: klein.job(blocker.id)["status"] == "running", 60, "the blocker")
        pair = [await ad.submit(request(seed=11)), await ad.submit(request(seed=12))]
        await ad.cancel(blocker)  # the two queued jobs are taken together
        pair = [await done(ad, job) for job in pair]
    views = [klein.job(job.id) for job in pair]
    assert [v["batch_size"] for v in views] == [2, 2]
    assert [job.state for job in pair] == [UpstreamState.SUCCEEDED] * 2
    # batched, the same seed draws the same noise: the image matches the one made alone up to
    # float rounding (a batch sums in another order), and the other seed's image differs
    same, other = (_mean_difference(alone.outputs[0].data, p.outputs[0].data) for p in pair)
    assert same < 1.0 < other, (same, other)
    assert klein.job(blocker.id)["status"] == "canceled"


def _mean_difference(a: bytes | None, b: bytes | None) -> float:
    assert a is not None and b is not None
    with Image.open(io.BytesIO(a)) as x, Image.open(io.BytesIO(b)) as y:
        diff = ImageChops.difference(x.convert("RGB"), y.convert("RGB"))
        return sum(ImageStat.Stat(diff).mean) / 3


def test_job_api_refusals(klein: WorkerProcess) -> None:
    url = f"{klein.url}/v1/jobs"
    assert httpx.get(f"{klein.url}/health").status_code == 401
    wrong = httpx.post(url, json={"prompt": "x"}, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    cases = [({"prompt": ""}, 400, "invalid_request"),
             ({"prompt": "x", "images": ["not base64!"]}, 400, "invalid_image"),
             ({"prompt": "x", "images": [base64.b64encode(b"GIF89a...").decode()]}, 400,
              "invalid_image"),
             ({"prompt": "x", "steps": 10**6}, 400, "invalid_request"),
             ({"prompt": "x", "images": ["aGk="] * 5}, 400, "invalid_request")]
    for body, status, code in cases:
        resp = httpx.post(url, json=body, headers=auth())
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["code"] == code
    small = picture((1, 2, 3), (32, 32)).data  # FLUX.2 refuses references under 64 px
    resp = httpx.post(url, json={"prompt": "x", "images": [base64.b64encode(small).decode()]},
                      headers=auth())
    assert resp.status_code == 400 and "64 px" in resp.json()["error"]["message"]
    assert httpx.get(f"{url}/nope", headers=auth()).status_code == 404
