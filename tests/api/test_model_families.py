"""FLUX.2 and FLUX 3 Image beside Kontext, through the real app, for every upstream.

One gateway per upstream (BFL, Replicate, fal, each stubbed at the transport with respx after
its documented wire format; and the built-in sandbox). For each family: the exact upstream
body of a text-to-image and of an edit with the family's maximum references; the price
reserved and settled for 1 MP and 4 MP outputs with and without inputs; and the real clients
(openai SDK, replicate client, BFL-style submit + poll) getting results.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import replicate
import respx
from PIL import Image

from gateway.families import flux3_size
from tests.conftest import Gateway, jobs_of, ledger_of, start_gateway

KEY_ENV = "FAMILIES_UPSTREAM_KEY"
BFL, REPLICATE, FAL = "https://api.bfl.test", "https://api.replicate.test", "https://queue.fal.test"
CHANNELS: dict[str, list[dict[str, Any]]] = {
    "bfl": [{"name": "bfl", "type": "bfl", "base_url": BFL, "api_key_env": KEY_ENV,
             "result_hosts": ["*.bfl.test"]}],
    "replicate": [{"name": "rep", "type": "replicate", "base_url": REPLICATE,
                   "api_key_env": KEY_ENV, "result_hosts": ["*.replicate.test"],
                   "options": {"wait": 0}}],
    "fal": [{"name": "fal", "type": "fal", "base_url": FAL, "api_key_env": KEY_ENV,
             "result_hosts": ["*.fal.test"]}],
    "sandbox": [],
}
UPSTREAMS = tuple(CHANNELS)
WORKING = ("Queued", "Reasoning", "Generating", "Uploading")
#: the OpenAI images requests of the test: (model, max references)
FAMILIES = {"flux-2-pro": 8, "flux-3-image": 10}


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


#: distinct 256x256 references (FLUX 3 takes none smaller)
REFS = [png((256, 256), (20 * i, 255 - 20 * i, 90)) for i in range(10)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{b64(data)}"


class Upstreams:
    """The three stubbed upstreams: record each create body and answer with a result of the
    asked size (or `result_size` when a test sets it)."""

    def __init__(self, mock: respx.MockRouter) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # (path, body)
        self.result_size: tuple[int, int] | None = None
        self._ids = itertools.count()
        self._sizes: dict[str, tuple[int, int]] = {}
        self._paths: dict[str, str] = {}
        self._polls: dict[str, int] = {}
        mock.route(host="127.0.0.1").pass_through()
        mock.post(url__startswith=f"{BFL}/v1/").mock(side_effect=self._bfl_create)
        mock.get(f"{BFL}/v1/get_result").mock(side_effect=self._bfl_poll)
        mock.post(url__startswith=f"{REPLICATE}/v1/models/").mock(side_effect=self._replicate)
        mock.get(url__regex=r"https://queue\.fal\.test/.*/requests/[^/]+/status").mock(
            side_effect=lambda r: httpx.Response(200, json={"status": "COMPLETED"}))
        mock.get(url__regex=r"https://queue\.fal\.test/.*/requests/[^/]+$").mock(
            side_effect=self._fal_result)
        mock.post(url__startswith=f"{FAL}/").mock(side_effect=self._fal_create)
        for host in ("delivery.bfl.test", "delivery.replicate.test", "v3.fal.test"):
            mock.get(url__startswith=f"https://{host}/").mock(side_effect=self._download)

    def last(self) -> tuple[str, dict[str, Any]]:
        assert self.bodies, "no upstream was called"
        return self.bodies[-1]

    def _size(self, body: dict[str, Any]) -> tuple[int, int]:
        if self.result_size:
            return self.result_size
        if "resolution" in body:  # FLUX 3 (our references are square: auto is 1:1)
            ratio = body.get("aspect_ratio")
            return flux3_size(None if ratio == "auto" else ratio, body["resolution"])
        size = body.get("image_size") or body
        return size["width"], size["height"]

    def _new(self, path: str, body: dict[str, Any]) -> str:
        task = f"t{next(self._ids)}"
        self.bodies.append((path, body))
        self._sizes[task] = self._size(body)
        self._paths[task] = path
        return task

    def _download(self, request: httpx.Request) -> httpx.Response:
        task = request.url.path.strip("/").removesuffix(".png")
        return httpx.Response(200, content=png(self._sizes[task], (10, 120, 200)),
                              headers={"content-type": "image/png"})

    def _bfl_create(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["x-key"] == "upstream-secret"
        task = self._new(request.url.path, _json(request))
        return httpx.Response(200, json={"id": task, "cost": 1.23, "input_mp": 0, "output_mp": 1,
                                         "polling_url": f"{BFL}/v1/get_result?id={task}"})

    def _bfl_poll(self, request: httpx.Request) -> httpx.Response:
        task = request.url.params["id"]
        polls = self._polls[task] = self._polls.get(task, 0) + 1
        if self._paths[task] == "/v1/flux-3-image" and polls <= len(WORKING):
            # FLUX 3's working words (third-party clients; not in BFL's docs) keep it polling
            return httpx.Response(200, json={"id": task, "status": WORKING[polls - 1],
                                             "result": None, "progress": 0.2 * polls})
        return httpx.Response(200, json={"id": task, "status": "Ready", "result": {
            "sample": f"https://delivery.bfl.test/{task}.png"}})

    def _replicate(self, request: httpx.Request) -> httpx.Response:
        body = _json(request)
        task = self._new(request.url.path, body["input"])
        return httpx.Response(201, json={
            "id": task, "status": "succeeded",
            "output": f"https://delivery.replicate.test/{task}.png",
            "urls": {"get": f"{REPLICATE}/v1/predictions/{task}"}})

    def _fal_create(self, request: httpx.Request) -> httpx.Response:
        task = self._new(request.url.path, _json(request))
        base = f"{FAL}{request.url.path}/requests/{task}"
        return httpx.Response(200, json={"request_id": task, "status_url": f"{base}/status",
                                         "response_url": base, "cancel_url": f"{base}/cancel"})

    def _fal_result(self, request: httpx.Request) -> httpx.Response:
        task = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"images": [
            {"url": f"https://v3.fal.test/{task}.png"}], "has_nsfw_concepts": [False]})


def _json(request: httpx.Request) -> dict[str, Any]:
    import json

    data = json.loads(request.content)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    os.environ[KEY_ENV] = "upstream-secret"
    with respx.mock(assert_all_called=False) as mock:
        yield Upstreams(mock)


@pytest.fixture(scope="module")
def gateways(upstreams: Upstreams) -> Iterator[dict[str, Gateway]]:
    """One gateway per upstream, started when first asked for."""
    started: dict[str, Gateway] = {}
    root = Path(tempfile.mkdtemp(prefix="families-"))

    class Lazy(dict[str, Gateway]):
        def __missing__(self, name: str) -> Gateway:
            gw = start_gateway(root / name, channels=CHANNELS[name],
                               jobs={"poll_initial": 0.02, "poll_max": 0.1})
            started[name] = gw
            self[name] = gw
            return gw

    yield Lazy()
    for gw in started.values():
        gw.stop()


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{gw.base_url}/v1", timeout=60, max_retries=0)


def only_job(gw: Gateway, key_id: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        jobs = jobs_of(gw, key_id)
        if jobs and jobs[-1].status in ("succeeded", "failed"):
            return jobs[-1]
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)


# -- exact upstream bodies through the OpenAI surface -------------------------------------------
def expected_body(upstream: str, model: str, refs: int) -> tuple[str, dict[str, Any]]:
    """The documented request each upstream gets (see the adapters' docstrings): a
    text-to-image asked as `size=1536x1024, seed=7, output_format=jpeg`, or an edit with
    `refs` references (OpenAI's default png, no size: the references' 1:1 ratio)."""
    images = REFS[:refs]
    flux3 = model == "flux-3-image"
    fmt = "jpeg" if not refs else "png"
    if upstream == "bfl":
        if flux3:
            body: dict[str, Any] = {"prompt": "a fox", "aspect_ratio": "auto" if refs else "3:2",
                                    "resolution": "1k", "grounding": False}
            if refs:
                body["images"] = [b64(i) for i in images]
        else:
            body = {"prompt": "a fox", "seed": 7, "output_format": fmt,
                    "width": 1024 if refs else 1536, "height": 1024}
            body.update({("input_image" if i == 0 else f"input_image_{i + 1}"): b64(image)
                         for i, image in enumerate(images)})
        return f"/v1/{model}", body
    if upstream == "replicate":
        rep_fmt = "jpg" if fmt == "jpeg" else fmt
        if flux3:
            body = {"prompt": "a fox", "aspect_ratio": "auto" if refs else "3:2",
                    "resolution": "1k", "grounding": False, "output_format": rep_fmt}
            if refs:
                body["images"] = [data_url(i) for i in images]
        else:
            body = {"prompt": "a fox", "seed": 7, "output_format": rep_fmt,
                    "aspect_ratio": "custom", "width": 1024 if refs else 1536, "height": 1024}
            if refs:
                body["input_images"] = [data_url(i) for i in images]
        return f"/v1/models/black-forest-labs/{model}/predictions", body
    assert upstream == "fal"
    if flux3:
        body = {"prompt": "a fox", "aspect_ratio": "auto" if refs else "3:2",
                "resolution": "1k", "grounding": False}
        path = "/blackforestlabs/flux-3/" + ("edit-image" if refs else "text-to-image")
    else:
        body = {"prompt": "a fox", "seed": 7, "output_format": fmt,
                "image_size": {"width": 1024 if refs else 1536, "height": 1024}}
        path = "/fal-ai/flux-2-pro" + ("/edit" if refs else "")
    if refs:
        body["image_urls"] = [data_url(i) for i in images]
    return path, body


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_text_to_image_sends_the_documented_body(gateways: dict[str, Gateway],
                                                 upstreams: Upstreams, upstream: str,
                                                 model: str) -> None:
    """OpenAI `size` becomes FLUX.2's width/height or FLUX 3's ratio + resolution class; FLUX 3
    gets no seed (noted on the job), grounding false; the openai SDK gets the image."""
    gw = gateways[upstream]
    key_id, key = gw.create_key(f"t2i-{model}", balance=10_000_000)
    answer = sdk(gw, key).images.generate(model=model, prompt="a fox", size="1536x1024",
                                          response_format="url",
                                          extra_body={"seed": 7, "output_format": "jpeg"})
    item = answer.data[0]
    want = (1536, 1024) if model == "flux-2-pro" else flux3_size("3:2", "1k")
    assert (item.width, item.height) == want  # type: ignore[attr-defined]
    got = httpx.get(str(item.url), timeout=30)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).format == "JPEG"
    job = only_job(gw, key_id)
    if model == "flux-3-image":
        assert any(n.startswith("seed: FLUX 3 Image takes no seed") for n in job.spec["notes"])
    if upstream == "sandbox":
        assert job.channel == "sandbox"
        return
    assert upstreams.last() == expected_body(upstream, model, 0)


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_edit_with_the_most_references_sends_them_all(gateways: dict[str, Gateway],
                                                      upstreams: Upstreams, upstream: str,
                                                      model: str) -> None:
    """`image[]` with the family's maximum (FLUX.2: 8, FLUX 3: 10) reaches the upstream as
    that many references, none stitched, in order, byte for byte."""
    gw = gateways[upstream]
    key_id, key = gw.create_key(f"edit-{model}", balance=10_000_000)
    refs = FAMILIES[model]
    answer = sdk(gw, key).images.edit(
        model=model, prompt="a fox", response_format="url",
        image=[(f"r{i}.png", REFS[i], "image/png") for i in range(refs)],
        extra_body={"seed": 7})
    item = answer.data[0]
    assert (item.width, item.height) == (1024, 1024)  # type: ignore[attr-defined]
    job = only_job(gw, key_id)
    assert job.status == "succeeded"
    assert not [n for n in job.spec["notes"] if "stitched" in n]
    assert len(job.spec["input_file_ids"]) == refs
    if upstream != "sandbox":
        assert upstreams.last() == expected_body(upstream, model, refs)


def test_klein_takes_four_references(gateways: dict[str, Gateway],
                                     upstreams: Upstreams) -> None:
    """FLUX.2 [klein] takes 4 references (the model narrows its family): 4 go as they are;
    a fifth is refused before anything is made or charged."""
    gw = gateways["bfl"]
    key_id, key = gw.create_key("klein", balance=10_000_000)
    client = sdk(gw, key)
    client.images.edit(model="flux-2-klein-4b", prompt="a fox", response_format="url",
                       image=[(f"r{i}.png", REFS[i], "image/png") for i in range(4)])
    path, body = upstreams.last()
    assert path == "/v1/flux-2-klein-4b"
    assert [body.get(f) for f in ("input_image", "input_image_2", "input_image_3",
                                  "input_image_4")] == [b64(r) for r in REFS[:4]]
    with pytest.raises(openai.BadRequestError, match="at most 4"):
        client.images.edit(model="flux-2-klein-4b", prompt="a fox", response_format="url",
                           image=[(f"r{i}.png", REFS[i], "image/png") for i in range(5)])
    assert len(jobs_of(gw, key_id)) == 1


# -- prices: reserved (worst case of the request) and settled (real output) --------------------
MP1, MP4 = (1024, 1024), (2048, 2048)
INPUT_1MP = png(MP1, (200, 30, 30))


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize(("size", "inputs", "price"), [
    (MP1, 0, 30_000),  # 3 c the first MP
    (MP1, 1, 45_000),  # 1 MP out + 1 MP in: 3 + 1.5 ("edit from $0.045")
    (MP4, 0, 75_000),  # 3 + 3 x 1.5
    (MP4, 1, 90_000),  # 5 MP: 3 + 4 x 1.5
])
def test_flux2_price_per_megapixel_inputs_counted(gateways: dict[str, Gateway], upstream: str,
                                                  size: Any, inputs: int, price: int) -> None:
    """BFL-style FLUX.2 [pro]: the create answer carries `cost` (credits), `input_mp` and
    `output_mp`; the reservation is that price, settled on the real output; BFL's reported
    cost is recorded beside it; a client polls get_result to the result."""
    gw = gateways[upstream]
    key_id, key = gw.create_key(f"price-{size}-{inputs}", balance=1_000_000)
    body: dict[str, Any] = {"prompt": "a fox", "width": size[0], "height": size[1]}
    if inputs:
        body["input_image"] = b64(INPUT_1MP)
    created = httpx.post(f"{gw.base_url}/v1/flux-2-pro", json=body, headers={"x-key": key},
                         timeout=60)
    assert created.status_code == 200, created.text
    answer = created.json()
    assert answer["cost"] == price / 10_000
    assert answer["input_mp"] == float(inputs) and answer["output_mp"] == size[0] * size[1] / 2**20
    result = poll_ready(gw, key, answer["polling_url"])
    sample = httpx.get(result["result"]["sample"], timeout=30)
    assert Image.open(io.BytesIO(sample.content)).size == size
    balance, total, rows = ledger_of(gw, key_id)
    assert rows[1] == ("reserve", -price) and rows[2] == ("settle", 0)
    assert balance == total == 1_000_000 - price
    job = only_job(gw, key_id)
    assert job.charged == price
    if upstream == "bfl":
        assert job.upstream_cost == 12_300  # BFL's reported cost: 1.23 credits


def test_flux2_is_settled_on_the_real_output(gateways: dict[str, Gateway],
                                             upstreams: Upstreams) -> None:
    """A 4 MP request that comes back at 1 MP is charged the 1 MP price; the rest of the
    reservation comes back."""
    gw = gateways["bfl"]
    key_id, key = gw.create_key("smaller", balance=1_000_000)
    upstreams.result_size = MP1
    try:
        created = httpx.post(f"{gw.base_url}/v1/flux-2-pro", headers={"x-key": key},
                             json={"prompt": "a fox", "width": 2048, "height": 2048}, timeout=60)
        poll_ready(gw, key, created.json()["polling_url"])
    finally:
        upstreams.result_size = None
    _, _, rows = ledger_of(gw, key_id)
    assert rows[1:] == [("reserve", -75_000), ("settle", 45_000)]
    assert only_job(gw, key_id).charged == 30_000


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize(("resolution", "inputs", "price"), [
    ("1k", 0, 48_000), ("1k", 1, 48_000), ("2k", 0, 144_000), ("2k", 1, 144_000)])
def test_flux3_price_per_resolution_class(gateways: dict[str, Gateway], upstream: str,
                                          resolution: str, inputs: int, price: int) -> None:
    """FLUX 3 Image is priced per resolution class (1k ~ 1 MP, 2k ~ 4 MP), inputs or not;
    unknown fields and a seed are dropped and noted, never sent (BFL answers 422)."""
    gw = gateways[upstream]
    key_id, key = gw.create_key(f"f3-{resolution}-{inputs}", balance=1_000_000)
    body: dict[str, Any] = {"prompt": "a fox", "resolution": resolution, "seed": 3,
                            "width": 1024}
    if inputs:
        body["images"] = [b64(INPUT_1MP)]
    created = httpx.post(f"{gw.base_url}/v1/flux-3-image", json=body, headers={"x-key": key},
                         timeout=60)
    assert created.status_code == 200, created.text
    assert created.json()["cost"] == price / 10_000
    result = poll_ready(gw, key, created.json()["polling_url"])
    assert result["result"]["seed"] is None
    _, _, rows = ledger_of(gw, key_id)
    assert rows[1:] == [("reserve", -price), ("settle", 0)]
    notes = only_job(gw, key_id).spec["notes"]
    assert any(n.startswith("width: not a field") for n in notes)
    assert any(n.startswith("seed: FLUX 3 Image takes no seed") for n in notes)


def poll_ready(gw: Gateway, key: str, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        got = httpx.get(url, headers={"x-key": key}, timeout=30).json()
        if got["status"] not in ("Pending",):
            assert got["status"] == "Ready", got
            return dict(got)
        assert time.monotonic() < deadline, "not Ready in time"
        time.sleep(0.1)


# -- strict fields ---------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/images/generations", {"model": "flux-3-image", "safety_tolerance": 5},
     "safety_tolerance"),
    ("/v1/images/generations", {"model": "flux-2-flex", "steps": 80}, "steps"),
    ("/v1/images/generations", {"model": "flux-3-image", "resolution": "8k"}, "resolution"),
    ("/v1/images/generations", {"model": "flux-2-pro", "width": 4096, "height": 2048}, "width"),
])
def test_out_of_range_is_a_400_naming_the_field(gateways: dict[str, Gateway], path: str,
                                                body: dict[str, Any], param: str) -> None:
    gw = gateways["sandbox"]
    key_id, key = gw.create_key("strict", balance=1_000_000)
    resp = httpx.post(f"{gw.base_url}{path}", json={"prompt": "a fox", **body},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert jobs_of(gw, key_id) == []


def test_grounding_is_off_unless_the_request_or_key_enables_it(
        gateways: dict[str, Gateway], upstreams: Upstreams) -> None:
    gw = gateways["bfl"]
    _, key = gw.create_key("no-grounding", balance=1_000_000)
    _, grounded = gw.create_key("grounding", balance=1_000_000, meta={"grounding": True})
    for api_key, extra, want in ((key, {}, False), (key, {"grounding": True}, True),
                                 (grounded, {}, True), (grounded, {"grounding": False}, False)):
        created = httpx.post(f"{gw.base_url}/v1/flux-3-image", headers={"x-key": api_key},
                             json={"prompt": "a fox", **extra}, timeout=60)
        assert created.status_code == 200, created.text
        assert upstreams.last()[1]["grounding"] is want


# -- the Replicate-compatible API with Replicate's names and schemas ---------------------------
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize(("name", "inputs", "size"), [
    ("flux-2-pro", {"aspect_ratio": "custom", "width": 1536, "height": 1024,
                    "output_format": "png"}, (1536, 1024)),
    ("flux-3-image", {"aspect_ratio": "16:9", "resolution": "1k", "output_format": "png"},
     flux3_size("16:9", "1k")),
])
def test_replicate_client_runs_the_new_models(gateways: dict[str, Gateway], upstream: str,
                                              name: str, inputs: dict[str, Any],
                                              size: tuple[int, int]) -> None:
    gw = gateways[upstream]
    _, key = gw.create_key(f"rep-{name}", balance=10_000_000)
    client = replicate.Client(api_token=key, base_url=f"{gw.base_url}/replicate")
    client.poll_interval = 0.1
    output = client.run(f"black-forest-labs/{name}", input={"prompt": "a fox", **inputs})
    got = httpx.get(str(output), timeout=30)
    image = Image.open(io.BytesIO(got.content))
    assert image.size == size and image.format == "PNG"


# -- the model list ----------------------------------------------------------------------------
def test_models_list_every_family_with_capabilities(gateways: dict[str, Gateway]) -> None:
    gw = gateways["sandbox"]
    _, key = gw.create_key("models")
    cards = {m.id: m for m in sdk(gw, key).models.list().data}
    for model, family, refs in (("flux-kontext-pro", "kontext", 4), ("flux-2-pro", "flux2", 8),
                                ("flux-2-klein-4b", "flux2", 4), ("flux-3-image", "flux3", 10)):
        caps = cards[model].capabilities  # type: ignore[attr-defined]
        assert caps["family"] == family and caps["max_input_images"] == refs
    assert cards["flux-3-image"].capabilities["seed"] is False  # type: ignore[attr-defined]
    assert cards["flux-2-flex"].capabilities["fields"]["steps"] == {  # type: ignore[attr-defined]
        "type": "int", "minimum": 1, "maximum": 50}


# -- OpenAI size -> each family's size control, chat, and the operator's catalogue -------------
@pytest.mark.parametrize(("model", "fields", "size"), [
    ("flux-2-pro", {"size": "1024x1024"}, (1024, 1024)),
    ("flux-2-pro", {"size": "1000x700"}, (1008, 704)),  # rounded to multiples of 16
    ("flux-2-pro", {"size": "16:9"}, (1360, 768)),  # about 1 MP at the ratio
    ("flux-2-pro", {"size": "auto"}, (1024, 1024)),
    ("flux-3-image", {"size": "1024x1536"}, flux3_size("2:3", "1k")),
    ("flux-3-image", {"size": "auto", "quality": "hd"}, (2048, 2048)),
    ("flux-3-image", {"size": "16:9", "resolution": "768sq"}, (768, 768)),
    ("flux-kontext-pro", {"size": "1536x1024"}, (1248, 832)),  # Kontext: unchanged
])
def test_openai_size_maps_to_each_family(gateways: dict[str, Gateway], model: str,
                                         fields: dict[str, Any], size: tuple[int, int]) -> None:
    gw = gateways["sandbox"]
    _, key = gw.create_key("sizes", balance=10_000_000)
    resp = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "prompt": "a fox", "response_format": "url",
                            **fields})
    assert resp.status_code == 200, resp.text
    item = resp.json()["data"][0]
    assert (item["width"], item["height"]) == size


@pytest.mark.parametrize("model", FAMILIES)
def test_chat_serves_the_new_families_with_references(gateways: dict[str, Gateway],
                                                      model: str) -> None:
    """Chat images become references (a FLUX 3 chat with 3 images sends all 3)."""
    gw = gateways["sandbox"]
    key_id, key = gw.create_key(f"chat-{model}", balance=10_000_000)
    content: list[dict[str, Any]] = [{"type": "text", "text": "put them together"}]
    content += [{"type": "image_url", "image_url": {"url": data_url(REFS[i])}}
                for i in range(3)]
    reply = sdk(gw, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}])  # type: ignore[misc]
    assert "](http" in (reply.choices[0].message.content or "")
    job = only_job(gw, key_id)
    assert job.status == "succeeded" and len(job.spec["input_file_ids"]) == 3
    assert job.spec["family"] == ("flux2" if model == "flux-2-pro" else "flux3")


def test_operator_adds_a_model_in_config(gateway_factory: Any) -> None:
    """A model BFL ships next month is a catalogue entry: served, listed, and priced."""
    gw = gateway_factory(
        catalogue={"flux-2-next": {"family": "flux2", "description": "FLUX.2 [next]",
                                   "price": {"first_mp": 0.02, "further_mp": 0.01}}},
        sandbox={"models": ["flux-kontext-pro", "flux-2-next"]})
    key_id, key = gw.create_key("next", balance=1_000_000)
    client = sdk(gw, key)
    assert "flux-2-next" in [m.id for m in client.models.list().data]
    answer = client.images.generate(model="flux-2-next", prompt="a fox", size="1536x1024",
                                    response_format="url", extra_body={"width": 2048,
                                                                      "height": 2048})
    assert (answer.data[0].width, answer.data[0].height) == (2048, 2048)  # type: ignore[attr-defined]
    _, _, rows = ledger_of(gw, key_id)
    assert rows[1:] == [("reserve", -50_000), ("settle", 0)]  # 2 c + 3 x 1 c
