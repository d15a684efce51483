"""Smaller input rules of issue 17 item 7: a prompt length limit per API family, booleans that
are JSON booleans, animated inputs said in the job's notes, and a key revoked mid-job."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import respx
from PIL import Image

from tests.conftest import Gateway, jobs_of, ledger_of, png_bytes
from tests.jobs.test_failover import channels
from tests.jobs.test_leases import PRICE, SlowBfl, until

ADMIN = "admin-token-for-input-rules"
REPLICATE = "/replicate/v1/models/black-forest-labs/flux-kontext-pro/predictions"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# prompt length ---------------------------------------------------------------------------------

def test_prompt_length_limit_per_family(gateway_factory: Callable[..., Gateway]) -> None:
    """Each family refuses a prompt one character over its limit, in its own error shape,
    before any job or charge; a prompt at the limit is made."""
    gw = gateway_factory(limits={"max_prompt_chars": {"openai": 50, "bfl": 40,
                                                      "replicate": 30}})
    key_id, key = gw.create_key("long", balance=1_000_000)
    base = gw.base_url

    def images(n: int) -> httpx.Response:
        return httpx.post(f"{base}/v1/images/generations", headers=bearer(key), timeout=60,
                          json={"model": "flux-kontext-pro", "prompt": "p" * n})

    refused = images(51)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "string_above_max_length" and error["param"] == "prompt"
    assert "maximum length 50" in error["message"] and "p" * 51 not in refused.text
    chat = httpx.post(f"{base}/v1/chat/completions", headers=bearer(key), timeout=60,
                      json={"model": "flux-kontext-pro",
                            "messages": [{"role": "user", "content": "c" * 51}]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "string_above_max_length"
    bfl = httpx.post(f"{base}/v1/flux-kontext-pro", headers={"x-key": key}, timeout=60,
                     json={"prompt": "b" * 41})
    assert bfl.status_code == 422, bfl.text
    assert bfl.json()["detail"][0]["loc"] == ["body", "prompt"]
    rep = httpx.post(f"{base}{REPLICATE}", headers=bearer(key), timeout=60,
                     json={"input": {"prompt": "r" * 31}})
    assert rep.status_code == 422 and "maximum length 30" in rep.json()["detail"]
    assert jobs_of(gw) == [] and ledger_of(gw, key_id)[2] == [("topup", 1_000_000)]

    assert images(50).status_code == 200
    assert httpx.post(f"{base}/v1/flux-kontext-pro", headers={"x-key": key}, timeout=60,
                      json={"prompt": "b" * 40}).status_code == 200


def test_default_limit_is_openais_32000_characters(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", headers=bearer(api_key),
                      timeout=60, json={"model": "flux-kontext-pro", "prompt": "é" * 32_001})
    assert resp.status_code == 400, resp.text[:300]
    assert "maximum length 32000" in resp.json()["error"]["message"]
    assert jobs_of(gateway) == []


# booleans ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_stream_must_be_a_boolean(gateway: Gateway, api_key: str, value: Any) -> None:
    chat = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers=bearer(api_key),
                      timeout=60, json={"model": "flux-kontext-pro", "stream": value,
                                        "messages": [{"role": "user", "content": "a fox"}]})
    assert chat.status_code == 400, chat.text
    assert chat.json()["error"]["param"] == "stream"
    assert chat.headers["content-type"].startswith("application/json")
    usage = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers=bearer(api_key),
                       timeout=60, json={"model": "flux-kontext-pro", "stream": True,
                                         "stream_options": {"include_usage": value},
                                         "messages": [{"role": "user", "content": "a fox"}]})
    assert usage.status_code == 400, usage.text
    rep = httpx.post(f"{gateway.base_url}{REPLICATE}", headers=bearer(api_key), timeout=60,
                     json={"input": {"prompt": "a fox"}, "stream": value})
    assert rep.status_code == 422, rep.text
    assert jobs_of(gateway) == []


@pytest.mark.parametrize("value", ["yes", 1, "1", "on"])
def test_image_stream_must_be_true_or_false(gateway: Gateway, api_key: str,
                                            value: Any) -> None:
    """Generations (JSON) and edits (multipart, where `true`/`false` arrive as text)."""
    gen = httpx.post(f"{gateway.base_url}/v1/images/generations", headers=bearer(api_key),
                     timeout=60, json={"model": "flux-kontext-pro", "prompt": "a fox",
                                       "stream": value})
    assert gen.status_code == 400, gen.text
    assert gen.json()["error"]["param"] == "stream"
    edit = httpx.post(f"{gateway.base_url}/v1/images/edits", headers=bearer(api_key),
                      timeout=60, data={"model": "flux-kontext-pro", "prompt": "a fox",
                                        "stream": str(value)},
                      files={"image": ("in.png", png_bytes(), "image/png")})
    assert edit.status_code == 400, edit.text
    assert edit.json()["error"]["param"] == "stream"
    assert jobs_of(gateway) == []


# animated inputs -----------------------------------------------------------------------------

def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_animated_inputs_are_used_as_their_first_frame_and_noted(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(admin_token=ADMIN)
    key = gw.create_key("anim", balance=1_000_000)[1]
    made = httpx.post(f"{gw.base_url}{REPLICATE}", timeout=60,
                      headers={**bearer(key), "prefer": "wait"},
                      json={"input": {"prompt": "a fox",
                                      "input_image": data_url(animated("GIF"), "image/gif")}})
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "succeeded"
    assert ("input_image: an animated GIF image; only its first frame was used"
            in made.json()["logs"].splitlines())
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    client.images.edit(model="flux-kontext-pro", prompt="a fox",
                       image=("a.webp", animated("WEBP"), "image/webp"))
    client.images.edit(model="flux-kontext-pro", prompt="a fox", image=("s.png", png_bytes()))
    listed = httpx.get(f"{gw.base_url}/admin/jobs", headers=bearer(ADMIN), timeout=30).json()
    notes = [job["notes"] for job in listed["data"]]  # newest first
    assert notes[0] == []
    assert "image: an animated WEBP image; only its first frame was used" in notes[1]


# a key revoked mid-job -------------------------------------------------------------------------

@pytest.fixture
def slow_bfl(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowBfl]:
    monkeypatch.setenv("A_KEY", "key-a")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        yield SlowBfl(mock)


def test_key_revoked_mid_job_is_charged_and_its_result_stays_readable_by_url(
        gateway_factory: Callable[..., Gateway], slow_bfl: SlowBfl) -> None:
    """The job was accepted while the key was good: it finishes and is charged; the answer
    still carries the result, whose signed URL serves it without the key. The key itself is
    refused from then on."""
    gw = gateway_factory(admin_token=ADMIN, channels=channels()[:1],
                         jobs={"poll_initial": 0.02, "poll_max": 0.1})
    key_id, key = gw.create_key("soon-revoked", balance=1_000_000)
    slow_bfl.accept.set()
    answer: dict[str, Any] = {}

    def generate() -> None:
        answer["resp"] = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                                    headers=bearer(key),
                                    json={"model": "flux-kontext-pro", "prompt": "a fox",
                                          "response_format": "url"})

    thread = threading.Thread(target=generate)
    thread.start()
    until(lambda: any(j.upstream_id for j in jobs_of(gw, key_id)), "the job was submitted")
    revoked = httpx.post(f"{gw.base_url}/admin/keys/{key_id}/revoke", headers=bearer(ADMIN),
                         timeout=30)
    assert revoked.status_code == 200, revoked.text
    slow_bfl.ready.set()
    thread.join(60)
    resp = answer["resp"]
    assert resp.status_code == 200, resp.text
    url = resp.json()["data"][0]["url"]
    image = httpx.get(url, timeout=30)  # no key: the signed URL is the capability
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    [job] = jobs_of(gw, key_id)
    assert job.status == "succeeded" and job.charged == PRICE
    balance, total, _ = ledger_of(gw, key_id)
    assert balance == total == 1_000_000 - PRICE
    refused = until(lambda: (r := httpx.get(f"{gw.base_url}/v1/models", headers=bearer(key),
                                            timeout=30)).status_code in (401, 403) and r,
                    "the revoked key is refused", timeout=15)
    assert refused.json()["error"]["code"] in ("invalid_api_key", "key_revoked",
                                               "permission_denied")


# methods -------------------------------------------------------------------------------------

def test_an_undeclared_method_is_a_405_naming_the_allowed_ones(gateway: Gateway) -> None:
    """RFC 9110: a 405 lists the methods the resource takes (schemathesis' TRACE probe)."""
    for path, family_key in (("/v1/images/generations", "error"), ("/v1/models", "error"),
                             (REPLICATE, "title")):
        resp = httpx.request("TRACE", f"{gateway.base_url}{path}", timeout=30)
        assert resp.status_code == 405, (path, resp.text)
        assert resp.headers["allow"], path
        assert family_key in resp.json()
    assert "POST" in httpx.request("TRACE", f"{gateway.base_url}/v1/images/generations",
                                   timeout=30).headers["allow"]
