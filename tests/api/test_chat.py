"""POST /v1/chat/completions through the real server with the real openai SDK (strict), plus
raw SSE checks: framing, keep-alives, errors mid-stream, disconnects, CORS and /v1/models."""

from __future__ import annotations

import base64
import io
import re
import time
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from sqlalchemy import select

from billing.tables import ApiKeyRow, LedgerRow
from tests.conftest import Gateway, ImageServer, jobs_of, png_bytes, traced_while

MODEL = "flux-kontext-pro"
_MD_IMAGE = re.compile(r"^!\[image \(sandbox[^\]]*\]\((http://[^)]+/files/file_[^)]+)\)$")


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def aclient(gw: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                              _strict_response_validation=True)


def image_url_of(content: str) -> str:
    m = _MD_IMAGE.match(content)
    assert m, content
    return m.group(1)


def fetch(url: str) -> Image.Image:
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("image/")
    return Image.open(io.BytesIO(resp.content)).convert("RGB")


def center(image: Image.Image) -> tuple[int, int, int]:
    pixel: tuple[int, int, int] = image.getpixel((image.width // 2, image.height // 2))
    return pixel


def collect(chunks: Any) -> tuple[str, list[Any]]:
    """(the streamed content, every chunk) of an SDK stream."""
    seen = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in seen if c.choices)
    return text, seen


def raw_lines(gw: Gateway, key: str, body: dict[str, Any],
              ) -> tuple[httpx.Response, list[tuple[float, str]]]:
    """The response and its non-empty SSE lines with seconds since the request was sent."""
    start = time.monotonic()
    lines = []
    with httpx.stream("POST", f"{gw.base_url}/v1/chat/completions", json=body, timeout=120,
                      headers={"authorization": f"Bearer {key}"}) as resp:
        for line in resp.iter_lines():
            if line:
                lines.append((time.monotonic() - start, line))
    return resp, lines



def money_of(gw: Gateway, key_id: str) -> tuple[int, list[tuple[str, int]]]:
    async def go() -> tuple[int, list[tuple[str, int]]]:
        async with gw.services.sessions() as s:
            key = await s.get(ApiKeyRow, key_id)
            assert key is not None
            rows = (await s.execute(select(LedgerRow).where(LedgerRow.key_id == key_id)
                                    .order_by(LedgerRow.id))).scalars()
            return key.balance, [(r.kind, r.amount) for r in rows]
    result: tuple[int, list[tuple[str, int]]] = gw.call(go())
    return result


# -- generation ------------------------------------------------------------------------------
def test_non_streaming_generation(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a red fox in snow"}])
    assert result.object == "chat.completion" and isinstance(result.created, int)
    choice = result.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    url = image_url_of(choice.message.content or "")
    assert url.startswith(gateway.base_url + "/files/")
    assert choice.message.model_extra["images"] == [  # type: ignore[index]
        {"type": "image_url", "image_url": {"url": url}}]
    assert fetch(url).size == (1024, 1024)
    assert result.usage and result.usage.total_tokens == \
        result.usage.prompt_tokens + result.usage.completion_tokens


def test_streaming_generation_chunks(gateway: Gateway, api_key: str) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You draw."},
                  {"role": "user", "content": "a lighthouse at dusk"}])
    text, chunks = collect(stream)
    first, *middle, stop, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert {c.id for c in chunks} == {first.id} and {c.created for c in chunks} == {first.created}
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    reasons = [c.choices[0].finish_reason for c in chunks[:-1]]
    assert reasons == [None] * (len(middle) + 1) + ["stop"]
    assert stop.choices[0].delta.content is None
    url = image_url_of(text)
    assert middle[-1].choices[0].delta.model_extra["images"][0]["image_url"]["url"] == url
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 1 and usage.usage.total_tokens >= 2
    assert fetch(url).size == (1024, 1024)
    assert "data:" not in text


def test_raw_stream_framing(gateway: Gateway, api_key: str) -> None:
    resp, lines = raw_lines(gateway, api_key, {"model": MODEL, "stream": True,
                                               "messages": [{"role": "user", "content": "a cat"}]})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-accel-buffering"] == "no"
    data = [line for _, line in lines if not line.startswith(":")]
    assert all(line.startswith("data: ") for line in data)
    assert data[-1] == "data: [DONE]" and data.count("data: [DONE]") == 1
    assert '"usage":{' not in "".join(data)  # no usage chunk unless include_usage


def test_kontext_extras_apply_and_sampling_fields_are_ignored(gateway: Gateway,
                                                              api_key: str) -> None:
    c = client(gateway, api_key)
    kwargs: dict[str, Any] = {
        "model": MODEL, "messages": [{"role": "user", "content": "a blue bird"}],
        "temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "max_tokens": 50, "user": "u1",
        "extra_body": {"aspect_ratio": "16:9", "seed": 42, "output_format": "jpeg",
                       "safety_tolerance": 2, "prompt_upsampling": False}}
    first = c.chat.completions.create(**kwargs)
    second = c.chat.completions.create(**kwargs)
    a = httpx.get(image_url_of(first.choices[0].message.content or ""))
    b = httpx.get(image_url_of(second.choices[0].message.content or ""))
    assert a.content == b.content
    image = Image.open(io.BytesIO(a.content))
    assert image.size == (1392, 752) and image.format == "JPEG"


def test_lobechat_image_model_id_reads_message_images(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=60,
                      headers={"authorization": f"Bearer {api_key}"},
                      json={"model": f"{MODEL}:image",
                            "messages": [{"role": "user", "content": "a fox"}]})
    assert resp.status_code == 200, resp.text
    message = resp.json()["choices"][0]["message"]
    assert fetch(message["images"][0]["image_url"]["url"]).size == (1024, 1024)


async def test_async_client_streaming_and_not(gateway: Gateway, api_key: str) -> None:
    async with aclient(gateway, api_key) as c:
        stream = await c.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "async fox"}])
        parts = [chunk async for chunk in stream]
        whole = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "async fox"}])
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert parts[-1].choices[0].finish_reason == "stop"
    assert fetch(image_url_of(text)).size == (1024, 1024)
    assert fetch(image_url_of(whole.choices[0].message.content or "")).size == (1024, 1024)


# -- edits -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["start", "middle"])
def test_edit_from_url_in_text(gateway: Gateway, api_key: str, image_server: ImageServer,
                               where: str) -> None:
    url = image_server.add("girl.png", png_bytes((800, 600), (200, 30, 30)))
    text = f"{url} make her wear sunglasses" if where == "start" else \
        f"Please take {url} and make her wear sunglasses"
    stream = client(gateway, api_key).chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": text}])
    content, _ = collect(stream)
    assert image_server.hits == ["girl.png"]
    image = fetch(image_url_of(content))
    assert image.size == (1184, 880)  # the 4:3 input's bucket
    assert center(image) == (55, 225, 225)  # the sandbox inverts the first input
    [job] = [j for j in jobs_of(gateway) if j.operation == "edit"]
    assert job.prompt in ("make her wear sunglasses", "Please take and make her wear sunglasses")
    assert job.surface == "openai.chat"


async def test_edit_from_image_url_data_part(gateway: Gateway, api_key: str) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(
        png_bytes((300, 600), (10, 20, 30))).decode()
    messages: Any = [{"role": "user", "content": [
        {"type": "text", "text": "make it night"},
        {"type": "image_url", "image_url": {"url": data_url}}]}]
    sync_result = client(gateway, api_key).chat.completions.create(model=MODEL,
                                                                   messages=messages)
    async with aclient(gateway, api_key) as c:
        stream = await c.chat.completions.create(model=MODEL, messages=messages, stream=True)
        text = "".join([p.choices[0].delta.content or "" async for p in stream if p.choices])
    for content in (sync_result.choices[0].message.content or "", text):
        image = fetch(image_url_of(content))
        assert image.size == (720, 1456) and center(image) == (245, 235, 225)


def test_edit_from_lobechat_files_info(gateway: Gateway, api_key: str,
                                      image_server: ImageServer) -> None:
    url = image_server.add("s3/obj", png_bytes((600, 600), (0, 0, 255)))
    text = ("make it a watercolour\n\n<!-- SYSTEM CONTEXT (NOT PART OF USER QUERY) -->\n"
            "<context.instruction>following part contains context information</context."
            "instruction>\n<files_info>\n<images>\n<images_docstring>here are user upload "
            f"images you can refer to</images_docstring>\n<image name=\"a.png\" url=\"{url}\">"
            "</image>\n</images>\n\n</files_info>\n<!-- END SYSTEM CONTEXT -->")
    result = client(gateway, api_key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}])
    assert center(fetch(image_url_of(result.choices[0].message.content or ""))) == (255, 255, 0)
    [job] = jobs_of(gateway)
    assert job.prompt == "make it a watercolour"


def _three_turns(ask: Any, url: str) -> list[str]:
    """Run a three-turn conversation with `ask(messages) -> content`; the answers."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"{url} make it blue"}]
    answers = []
    for follow_up in ("now brighter", "now make it night", None):
        answer = ask(messages)
        answers.append(answer)
        messages.append({"role": "assistant", "content": answer})
        if follow_up:
            messages.append({"role": "user", "content": follow_up})
    return answers


def test_three_turn_conversation_edits_the_previous_answer(gateway: Gateway, api_key: str,
                                                           image_server: ImageServer) -> None:
    url = image_server.add("girl.png", png_bytes((800, 600), (200, 30, 30)))
    c = client(gateway, api_key)

    def ask(messages: Any) -> str:
        stream = c.chat.completions.create(model=MODEL, messages=messages, stream=True)
        return collect(stream)[0]

    answers = _three_turns(ask, url)
    images = [fetch(image_url_of(a)) for a in answers]
    assert [center(i) for i in images] == [(55, 225, 225), (200, 30, 30), (55, 225, 225)]
    assert {i.size for i in images} == {(1184, 880)}
    assert image_server.hits == ["girl.png"]  # later turns edit the gateway's own answers
    jobs = sorted(jobs_of(gateway), key=lambda j: j.created_at)
    assert [j.prompt for j in jobs] == ["make it blue", "now brighter", "now make it night"]
    assert [j.operation for j in jobs] == ["edit"] * 3


async def test_three_turn_conversation_async(gateway: Gateway, api_key: str,
                                             image_server: ImageServer) -> None:
    url = image_server.add("girl.png", png_bytes((800, 600), (200, 30, 30)))
    answers: list[str] = []
    messages: list[Any] = [{"role": "user", "content": f"{url} make it blue"}]
    async with aclient(gateway, api_key) as c:
        for follow_up in ("now brighter", "now make it night", None):
            result = await c.chat.completions.create(model=MODEL, messages=messages)
            answers.append(result.choices[0].message.content or "")
            messages.append({"role": "assistant", "content": answers[-1]})
            if follow_up:
                messages.append({"role": "user", "content": follow_up})
    assert [center(fetch(image_url_of(a))) for a in answers] == \
        [(55, 225, 225), (200, 30, 30), (55, 225, 225)]


def test_own_file_url_is_read_from_storage_for_its_key_only(gateway: Gateway) -> None:
    _, key = gateway.create_key("a")
    _, other = gateway.create_key("b")
    first = client(gateway, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a green square"}])
    signed = image_url_of(first.choices[0].message.content or "")
    unsigned = signed.split("?")[0]
    assert httpx.get(unsigned).status_code == 403  # over HTTP it would not load
    edit = client(gateway, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"{unsigned} now at night"}])
    assert fetch(image_url_of(edit.choices[0].message.content or "")).size == (1024, 1024)
    # another key may use a signed URL (it is public anyway), not a bare file id
    client(gateway, other).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"{signed} now at night"}])
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway, other).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"{unsigned} now at night"}])
    assert info.value.code == "invalid_image_url"


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_errors_before_the_stream_are_json(gateway: Gateway, stream: bool) -> None:
    _, key = gateway.create_key("ok")
    _, poor = gateway.create_key("poor", balance=0)
    _, max_only = gateway.create_key("max", models=["flux-kontext-max"])
    text = [{"role": "user", "content": "a fox"}]
    cases: list[tuple[str, str, Any, type[openai.APIStatusError], int]] = [
        ("fk_live_wrong", MODEL, text, openai.AuthenticationError, 401),
        (key, "no-such-model", text, openai.NotFoundError, 404),
        (key, MODEL, [{"role": "user", "content": "https://h.example/x.png"}],
         openai.BadRequestError, 400),
        (poor, MODEL, text, openai.APIStatusError, 402),
        (max_only, MODEL, text, openai.PermissionDeniedError, 403),
    ]
    for api_key, model, messages, error, status in cases:
        with pytest.raises(error) as info:
            client(gateway, api_key).chat.completions.create(model=model, messages=messages,
                                                             stream=stream)
        assert info.value.status_code == status
        assert info.value.response.headers["content-type"] == "application/json"
        assert isinstance(info.value.body, dict) and info.value.body["message"]


@pytest.mark.parametrize(("word", "code"), [("sandbox:fail", "upstream_error"),
                                            ("sandbox:moderate", "content_policy_violation")])
def test_failure_after_the_stream_started(gateway: Gateway, api_key: str, word: str,
                                          code: str) -> None:
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"a fox {word}"}]}
    resp, lines = raw_lines(gateway, api_key, body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    data = [line for _, line in lines if line.startswith("data: ")]
    assert '"role":"assistant"' in data[0]
    assert data[-2].startswith('data: {"error": ') and f'"code": "{code}"' in data[-2]
    assert data[-1] == "data: [DONE]"
    stream = client(gateway, api_key).chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": f"a fox {word}"}])
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk)
    assert got and got[0].choices[0].delta.role == "assistant"
    assert isinstance(info.value.body, dict) and info.value.body["code"] == code


def test_non_streaming_failure_is_an_error_status(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(gateway, api_key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x sandbox:fail"}])
    assert info.value.status_code == 502


# -- keep-alives, progress, disconnects ------------------------------------------------------
@pytest.mark.slow
def test_slow_job_keepalives_with_default_interval(gateway: Gateway, api_key: str) -> None:
    assert gateway.settings.chat.keepalive <= 10  # the default, not shortened for this test
    body = {"model": MODEL, "stream": True,
            "messages": [{"role": "user", "content": "a slow fox sandbox:latency=25"}]}
    resp, lines = raw_lines(gateway, api_key, body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    times = [t for t, _ in lines]
    assert times[0] < 1.0, times[0]  # headers and the role chunk at once
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert max(gaps) <= 10.0, gaps
    assert times[-1] >= 25
    assert sum(1 for _, line in lines if line == ": ping") >= 2
    assert lines[-1][1] == "data: [DONE]"
    assert any("![image (sandbox" in line for _, line in lines)


def test_progress_lines_and_short_keepalive(gateway_factory: Any) -> None:
    gw = gateway_factory(chat={"keepalive": 0.2, "progress": True})
    _, key = gw.create_key()
    stream = client(gw, key).chat.completions.create(
        model=MODEL, stream=True,
        messages=[{"role": "user", "content": "a fox sandbox:latency=1"}])
    text, _ = collect(stream)
    assert text.startswith("Generating the image…")
    image_url_of(text.rsplit("\n\n", 1)[-1])
    _, lines = raw_lines(gw, key, {"model": MODEL, "stream": True, "messages": [
        {"role": "user", "content": "a fox sandbox:latency=1"}]})
    assert sum(1 for _, line in lines if line == ": ping") >= 3


def test_disconnect_mid_stream_keeps_the_job_and_bills_once(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    body = {"model": MODEL, "stream": True,
            "messages": [{"role": "user", "content": "a fox sandbox:latency=2"}]}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30) as resp:
        first = next(resp.iter_lines())
        assert '"role":"assistant"' in first
    # the client is gone; the job goes on
    deadline = time.monotonic() + 30
    while True:
        [job] = jobs_of(gateway, key_id)
        if job.status in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job.status == "succeeded" and job.surface == "openai.chat"
    assert job.charged == job.price == 40_000
    _, data = gateway.call(gateway.services.files.read(job.outputs[0]["file_id"]))
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)
    time.sleep(0.5)
    balance, rows = money_of(gateway, key_id)
    assert rows == [("topup", 1_000_000), ("reserve", -40_000), ("settle", 0)]
    assert balance == 960_000
    report = httpx.get(f"{gateway.base_url}/v1/usage",
                       headers={"authorization": f"Bearer {key}"}).json()
    assert report["totals"]["jobs"] == report["totals"]["succeeded"] == 1
    assert report["totals"]["spend"] == 40_000 and report["balance"] == 960_000


def test_jobs_in_flight_cap_refuses_before_the_stream(gateway: Gateway) -> None:
    _, key = gateway.create_key(max_concurrency=1)
    body = {"model": MODEL, "stream": True,
            "messages": [{"role": "user", "content": "a fox sandbox:latency=2"}]}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30) as first:
        assert first.status_code == 200
        second = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body,
                            headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert second.status_code == 429
        assert second.headers["content-type"] == "application/json"
        assert [line for line in first.iter_lines() if line][-1] == "data: [DONE]"


def test_idempotency_key_replays_a_non_streamed_answer(gateway: Gateway) -> None:
    key_id, key = gateway.create_key(balance=1_000_000)
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "chat-1"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}]}
    first = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers,
                       timeout=30)
    again = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers,
                       timeout=30)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert len(jobs_of(gateway, key_id)) == 1


# -- models and CORS -------------------------------------------------------------------------
def test_models_lists_what_the_key_may_use(gateway: Gateway, api_key: str) -> None:
    ids = [m.id for m in client(gateway, api_key).models.list()]
    assert ids[:3] == ["flux-kontext-pro", "flux-kontext-max", "flux-kontext-dev"]
    assert "gpt-image-1" in ids[3:]  # the default aliases follow
    _, limited = gateway.create_key("limited", models=["flux-kontext-max"])
    models = list(client(gateway, limited).models.list())
    assert [m.id for m in models] == ["flux-kontext-max", "gpt-image-1.5"]
    assert models[0].object == "model" and isinstance(models[0].created, int)


PREFLIGHT_HEADERS = ("authorization, content-type, x-api-key, x-stainless-os, "
                     "x-stainless-retry-count, x-stainless-timeout, http-referer, x-title")


def preflight(gw: Gateway, origin: str) -> httpx.Response:
    return httpx.options(f"{gw.base_url}/v1/chat/completions", headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": PREFLIGHT_HEADERS})


def test_cors_preflight_for_browser_shells(gateway: Gateway) -> None:
    resp = preflight(gateway, "https://app.nextchat.dev")
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] in ("*", "https://app.nextchat.dev")
    allowed = resp.headers["access-control-allow-headers"].lower()
    for header in PREFLIGHT_HEADERS.split(", "):
        assert header in allowed
    assert "POST" in resp.headers["access-control-allow-methods"]


def test_cors_private_network_preflight_is_answered(gateway_factory: Any) -> None:
    gw = gateway_factory(cors_origins=["https://chat.example"])
    headers = {"origin": "https://chat.example", "access-control-request-method": "POST",
               "access-control-request-headers": "authorization, content-type",
               "access-control-request-private-network": "true"}
    resp = httpx.options(f"{gw.base_url}/v1/chat/completions", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-private-network"] == "true"
    assert resp.headers["access-control-allow-origin"] == "https://chat.example"
    other = httpx.options(f"{gw.base_url}/v1/chat/completions",
                          headers={**headers, "origin": "https://evil.example"})
    assert other.status_code == 400  # an origin not allowed still is not
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_cors_origins_are_configurable(gateway_factory: Any) -> None:
    gw = gateway_factory(cors_origins=["https://chat.example"])
    ok = preflight(gw, "https://chat.example")
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://chat.example"
    refused = preflight(gw, "https://elsewhere.example")
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_a_20_mb_data_url_is_not_held_while_the_stream_runs(gateway: Gateway,
                                                             api_key: str) -> None:
    """Chat shells send pictures as data URLs. While a streamed answer waits for its job, the
    request's bytes and parsed JSON must be gone: only the job's own copy of the input stays
    (before, FastAPI kept the raw body and the parsed JSON until the stream ended: ~3.7x)."""
    import random

    rnd = random.Random(5)
    image = Image.frombytes("RGB", (2600, 2600), rnd.randbytes(2600 * 2600 * 3))
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=0)
    size = buf.tell() / 1e6
    assert 19 < size < 21
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    part = '{"type": "image_url", "image_url": {"url": "' + url + '"}}'
    content = ('{"model": "' + MODEL + '", "stream": true, "messages": [{"role": "user", '
               '"content": [{"type": "text", "text": "make it blue sandbox:latency=5"}, '
               + part + ']}]}').encode()
    del part
    del url, buf, image
    out: dict[str, str] = {}

    def post() -> None:
        with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", content=content,
                          timeout=120, headers={"authorization": f"Bearer {api_key}",
                                                "content-type": "application/json"}) as resp:
            out["text"] = resp.read().decode()

    held, _ = traced_while(post, gateway)  # the job (5 s) is upstream, the stream waits
    assert out["text"].rstrip().endswith("data: [DONE]") and "![" in out["text"]
    assert held < 1.5 * size, (held, size)
