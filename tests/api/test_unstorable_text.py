"""Text PostgreSQL cannot store (a NUL character, a lone surrogate) is refused with each API
family's invalid-input error on SQLite and PostgreSQL alike, before any lookup, job, stored
file or charge (issue 17 item 2: asyncpg answered "invalid byte sequence 0x00" with a 500)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select

from gateway.storage.tables import FileRow
from tests.conftest import Gateway, jobs_of, ledger_of, png_bytes

ADMIN = "admin-token-for-nul-tests"
NUL = "a red fox\u0000 in snow"


@pytest.fixture
def gw(any_database: str, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(database_url=any_database, admin_token=ADMIN)


def file_count(gw: Gateway) -> int:
    async def go() -> int:
        async with gw.services.sessions() as s:
            return int((await s.execute(select(func.count()).select_from(FileRow)))
                       .scalar_one())
    result: int = gw.call(go())
    return result


def openai_refusal(resp: httpx.Response, param: str | None = "prompt") -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_text" and error["type"] == "invalid_request_error"
    assert error["param"] == param and "NUL" in error["message"]
    assert resp.headers["x-should-retry"] == "false"


def test_nul_prompts_are_refused_on_every_creating_route(gw: Gateway) -> None:
    key_id, key = gw.create_key("nul", balance=1_000_000)
    bearer = {"authorization": f"Bearer {key}"}
    base = gw.base_url

    openai_refusal(httpx.post(f"{base}/v1/images/generations", headers=bearer, timeout=30,
                              json={"model": "flux-kontext-pro", "prompt": NUL}))
    openai_refusal(httpx.post(f"{base}/v1/images/edits", headers=bearer, timeout=30,
                              data={"model": "flux-kontext-pro", "prompt": NUL},
                              files={"image": ("in.png", png_bytes(), "image/png")}))
    for stream in (False, True):
        openai_refusal(httpx.post(f"{base}/v1/chat/completions", headers=bearer, timeout=30,
                                  json={"model": "flux-kontext-pro", "stream": stream,
                                        "messages": [{"role": "user", "content": NUL}]}),
                       "messages.0.content")  # named where the client put it

    bfl = httpx.post(f"{base}/v1/flux-kontext-pro", headers={"x-key": key}, timeout=30,
                     json={"prompt": NUL, "input_image": None})
    assert bfl.status_code == 422, bfl.text  # BFL's HTTPValidationError shape
    [item] = bfl.json()["detail"]
    assert item["loc"] == ["body", "prompt"] and item["type"] == "invalid_text"

    rep = httpx.post(f"{base}/replicate/v1/models/black-forest-labs/flux-kontext-pro/"
                     "predictions", headers=bearer, timeout=30,
                     json={"input": {"prompt": NUL}})
    assert rep.status_code == 422, rep.text  # Replicate's RFC 7807 body for bad input
    body = rep.json()
    assert body["status"] == 422 and "NUL" in body["detail"] and "title" in body

    # a lone surrogate (valid JSON, not storable UTF-8) is refused the same way
    lone = httpx.post(f"{base}/v1/images/generations", timeout=30,
                      headers={**bearer, "content-type": "application/json"},
                      content=b'{"model": "flux-kontext-pro", "prompt": "a \\ud800 fox"}')
    assert lone.status_code == 400, lone.text
    assert lone.json()["error"]["code"] == "invalid_text"

    assert jobs_of(gw) == [] and file_count(gw) == 0
    assert ledger_of(gw, key_id)[2] == [("topup", 1_000_000)]


def test_nul_in_ids_and_filters_is_a_400_not_a_500(gw: Gateway) -> None:
    key = gw.create_key("nul", balance=1_000_000)[1]
    base = gw.base_url
    poll = httpx.get(f"{base}/v1/get_result", params={"id": "\x00"}, headers={"x-key": key},
                     timeout=30)
    assert poll.status_code == 422, poll.text
    assert poll.json()["detail"][0]["type"] == "invalid_text"

    prediction = httpx.get(f"{base}/replicate/v1/predictions/job%00x", timeout=30,
                           headers={"authorization": f"Bearer {key}"})
    assert prediction.status_code == 422, prediction.text
    assert "NUL" in prediction.json()["detail"]

    admin = {"authorization": f"Bearer {ADMIN}"}
    named = httpx.post(f"{base}/admin/keys", headers=admin, timeout=30,
                       json={"name": "reseller\u0000", "balance": "1"})
    openai_refusal(named, param="name")
    for path in ("/admin/jobs", "/admin/usage", "/admin/usage.csv"):
        openai_refusal(httpx.get(f"{base}{path}", params={"key_id": "\x00"}, headers=admin,
                                 timeout=30), param="key_id")
    openai_refusal(httpx.get(f"{base}/admin/keys/key%00", headers=admin, timeout=30),
                   param="key_id")
    assert [r["name"] for r in httpx.get(f"{base}/admin/keys", headers=admin, timeout=30)
            .json()["data"]] == ["nul"]


def test_a_bad_key_is_told_first(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=30,
                      headers={"authorization": "Bearer fk_live_nope"},
                      json={"model": "flux-kontext-pro", "prompt": NUL})
    assert resp.status_code == 401, resp.text


def test_replicate_upload_names_and_metadata(gw: Gateway) -> None:
    key = gw.create_key("nul", balance=1_000_000)[1]
    url = f"{gw.base_url}/replicate/v1/files"
    bearer = {"authorization": f"Bearer {key}"}
    # a raw NUL in the part's file name (httpx would percent-encode it, other clients do not)
    body = (b'--b\r\ncontent-disposition: form-data; name="content"; filename="a\x00.png"\r\n'
            b"content-type: image/png\r\n\r\n" + png_bytes() + b"\r\n--b--\r\n")
    named = httpx.post(url, content=body, timeout=30,
                       headers={**bearer, "content-type": "multipart/form-data; boundary=b"})
    assert named.status_code == 422, named.text
    assert "NUL" in named.json()["detail"]
    meta = httpx.post(url, headers=bearer, timeout=30,
                      files={"content": ("a.png", png_bytes(), "image/png"),
                             "metadata": (None, json.dumps({"note": "x\u0000"}))})
    assert meta.status_code == 422, meta.text
    assert "metadata.note" in meta.json()["detail"]
    assert file_count(gw) == 0


def test_the_openapi_document_says_free_text_holds_no_nul(gw: Gateway) -> None:
    """What the guard refuses, the schema marks invalid: free-text strings carry a NUL-free
    pattern (so contract tests do not take a refusal for a valid request refused)."""
    import re

    doc = httpx.get(f"{gw.base_url}/openapi.json", timeout=30).json()
    [poll_id] = [p for p in doc["paths"]["/v1/get_result"]["get"]["parameters"]
                 if p["name"] == "id"]
    assert re.fullmatch(poll_id["schema"]["pattern"], "abc")
    assert not re.fullmatch(poll_id["schema"]["pattern"], "a\x00c")
    text = json.dumps(doc)
    assert "^[^\\\\u0000]*$" in text  # as JSON writes the pattern
    generations = doc["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]
    ref = generations["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    prompt = doc["components"]["schemas"][ref]["properties"]["prompt"]["pattern"]
    assert re.fullmatch(prompt, "a fox") and not re.fullmatch(prompt, "  ")
    assert not re.fullmatch(prompt, "a\x00fox")
