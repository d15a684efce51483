"""What schemathesis with every check found (issue 17 item 7), one case each, through the real
app: what the OpenAPI document calls invalid is refused in the family's shape, what it calls
valid is accepted, and the document says so (tests/api/test_openapi_all_checks.py fuzzes the
whole document on PostgreSQL)."""

from __future__ import annotations

import httpx

from tests.conftest import Gateway, png_bytes


def test_usage_refuses_a_bound_that_is_not_a_date(gateway: Gateway, api_key: str) -> None:
    bearer = {"authorization": f"Bearer {api_key}"}
    for value in ("", "yesterday"):
        resp = httpx.get(f"{gateway.base_url}/v1/usage", params={"until": value},
                         headers=bearer, timeout=30)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "until"
    ok = httpx.get(f"{gateway.base_url}/v1/usage", params={"since": "1700000000.5"},
                   headers=bearer, timeout=30)
    assert ok.status_code == 200, ok.text
    schema = httpx.get(f"{gateway.base_url}/openapi.json").json()
    [until] = [p for p in schema["paths"]["/v1/usage"]["get"]["parameters"]
               if p["name"] == "until"]
    assert {"type": "string", "pattern": r"^\d{1,10}(\.\d*)?$"} in until["schema"]["anyOf"]


def test_bfl_numbers_and_flags_are_json_numbers_and_booleans(gateway: Gateway,
                                                              api_key: str) -> None:
    url = f"{gateway.base_url}/v1/flux-kontext-pro"
    for field, value in (("steps", False), ("steps", "20"), ("seed", True),
                         ("safety_tolerance", "2"), ("prompt_upsampling", "yes"),
                         ("guidance", False)):
        resp = httpx.post(url, headers={"x-key": api_key}, timeout=30,
                          json={"prompt": "a cat", field: value})
        assert resp.status_code == 422, (field, value, resp.text)
        assert resp.json()["detail"][0]["loc"] == ["body", field]
    ok = httpx.post(url, headers={"x-key": api_key}, timeout=30,
                    json={"prompt": "a cat", "steps": 20.0, "safety_tolerance": 6,
                          "guidance": 3, "prompt_upsampling": True})
    assert ok.status_code == 200, ok.text


def test_a_nul_model_name_is_invalid_text_not_an_echo(gateway: Gateway, api_key: str) -> None:
    bearer = {"authorization": f"Bearer {api_key}"}
    chat = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers=bearer, timeout=30,
                      json={"model": "flux\u0000", "messages": [{"role": "user",
                                                                  "content": "a cat"}]})
    edit = httpx.post(f"{gateway.base_url}/v1/images/edits", headers=bearer, timeout=30,
                      data={"model": "flux\u0000", "prompt": "a cat"},
                      files={"image": ("in.png", png_bytes(), "image/png")})
    for resp in (chat, edit):
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_text" and error["param"] == "model"
        assert "\u0000" not in error["message"]


def test_upload_ignores_other_text_parts_but_not_unstorable_ones(gateway: Gateway,
                                                                  api_key: str) -> None:
    url = f"{gateway.base_url}/replicate/v1/files"
    bearer = {"authorization": f"Bearer {api_key}"}
    image = {"content": ("in.png", png_bytes(), "image/png")}
    ok = httpx.post(url, headers=bearer, files=image, data={"filename": "in.png"}, timeout=30)
    assert ok.status_code == 201, ok.text
    bad = httpx.post(url, headers=bearer, files=image, data={"note": "a\u0000b"}, timeout=30)
    assert bad.status_code == 422 and "NUL" in bad.json()["detail"], bad.text


def test_the_document_states_image_formats_counts_and_storable_values(gateway: Gateway) -> None:
    doc = httpx.get(f"{gateway.base_url}/openapi.json").json()
    bfl = doc["paths"]["/v1/flux-kontext-pro"]["post"]["requestBody"]["content"]
    schema = bfl["application/json"]["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    image = schema["properties"]["input_image"]
    assert image["format"] == "image-reference" and "iVBORw0KGgo" in image["pattern"]
    assert schema["propertyNames"] and schema["additionalProperties"] == {
        "$ref": "#/components/schemas/StorableJsonValue"}
    edit = doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert edit["multipart/form-data"]["schema"]["properties"]["image"]["maxItems"] == 4
    assert edit["application/json"]["schema"]["anyOf"]  # image + images: 4 in all
    files = doc["paths"]["/replicate/v1/files"]["post"]["requestBody"]["content"]
    assert files["multipart/form-data"]["encoding"]["content"]["contentType"].startswith("image/")
