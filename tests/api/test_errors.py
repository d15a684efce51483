"""Every failure a client can cause or meet is an OpenAI error envelope with the right status."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from billing import keys as key_service
from tests.conftest import Gateway


def post(gw: Gateway, key: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gw.base_url}/v1/images/generations", json=body, headers=headers,
                      timeout=60)


def assert_envelope(resp: httpx.Response, status: int, *, code: str | None = None,
                    param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


BODY = {"model": "flux-kontext-pro", "prompt": "a fox"}


def test_no_key(gateway: Gateway) -> None:
    assert_envelope(post(gateway, None, BODY), 401, code="missing_api_key")


def test_wrong_key(gateway: Gateway) -> None:
    assert_envelope(post(gateway, "sk-not-a-real-key", BODY), 401, code="invalid_api_key")
    well_formed_unknown = key_service.generate("live")
    assert_envelope(post(gateway, well_formed_unknown, BODY), 401, code="invalid_api_key")


def test_revoked_key(gateway: Gateway) -> None:
    key_id, key = gateway.create_key("to-revoke")
    assert post(gateway, key, BODY).status_code == 200

    async def revoke() -> None:
        async with gateway.services.sessions.begin() as session:
            await key_service.revoke(session, key_id)

    gateway.call(revoke())
    assert_envelope(post(gateway, key, BODY), 401, code="invalid_api_key")


def test_x_api_key_header_works(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations", json=BODY,
                      headers={"x-api-key": api_key}, timeout=60)
    assert resp.status_code == 200


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"model": "dall-e-9", "prompt": "x"}, 404, "model", "model_not_found"),
    ({**BODY, "n": 9}, 400, "n", "invalid_n"),
    ({**BODY, "size": "banana"}, 400, "size", "invalid_size"),
    ({**BODY, "aspect_ratio": "30:1"}, 400, "aspect_ratio", "invalid_aspect_ratio"),
    ({**BODY, "output_format": "bmp"}, 400, "output_format", "invalid_output_format"),
    ({**BODY, "safety_tolerance": 9}, 400, "safety_tolerance", "invalid_safety_tolerance"),
    ({**BODY, "response_format": "xml"}, 400, "response_format", "invalid_response_format"),
    ({"model": "flux-kontext-pro"}, 400, "prompt", None),
])
def test_bad_parameters(gateway: Gateway, api_key: str, body: dict[str, Any], status: int,
                        param: str, code: str | None) -> None:
    resp = post(gateway, api_key, body)
    assert_envelope(resp, status, param=param, code=code)
    assert resp.headers["x-should-retry"] == "false"


def test_unreachable_input_url(gateway: Gateway, api_key: str) -> None:
    resp = post(gateway, api_key, {**BODY, "prompt": "http://127.0.0.1:9/nothing.png edit it"})
    err = assert_envelope(resp, 400)
    assert "127.0.0.1:9" in err["message"]
    assert err["param"].startswith("prompt")


def test_sandbox_failure_is_5xx_with_the_jobs_error(gateway: Gateway, api_key: str) -> None:
    resp = post(gateway, api_key, {**BODY, "prompt": "a fox sandbox:fail"})
    err = assert_envelope(resp, 502, code="upstream_error")
    assert "simulated failure" in err["message"]
    assert resp.headers["x-should-retry"] == "false"


def test_moderated_prompt_is_content_policy_violation(gateway: Gateway, api_key: str) -> None:
    resp = post(gateway, api_key, {**BODY, "prompt": "something sandbox:moderate"})
    assert_envelope(resp, 400, code="content_policy_violation")


def test_sdk_raises_with_the_message(gateway: Gateway, api_key: str) -> None:
    c = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.images.generate(model="flux-kontext-pro", prompt="x", size="banana")  # type: ignore[arg-type]
    assert "banana" in info.value.message
    with pytest.raises(openai.NotFoundError):
        c.images.generate(model="no-such-model", prompt="x")


def test_stuck_job_times_out(gateway_factory: Any) -> None:
    gw = gateway_factory(jobs={"deadline": 1.5, "poll_initial": 0.1})
    _, key = gw.create_key()
    resp = post(gw, key, {**BODY, "prompt": "a fox sandbox:stuck"})
    assert_envelope(resp, 504, code="timeout")


def test_unknown_route_is_an_envelope(gateway: Gateway) -> None:
    resp = httpx.get(f"{gateway.base_url}/v1/nothing-here")
    assert_envelope(resp, 404)


def test_several_input_urls_are_fetched_at_once_and_a_bad_one_is_named(
        gateway: Gateway, api_key: str, image_server: Any) -> None:
    from tests.conftest import png_bytes

    good = image_server.add("a.png", png_bytes())
    resp = post(gateway, api_key, {**BODY, "input_image": good,
                                   "input_image_2": "http://127.0.0.1:9/missing.png"})
    err = assert_envelope(resp, 400)
    assert err["param"] == "input_image_2"


MALFORMED = b'{"model": "flux-kontext-pro", "prompt": "a fox",,}'


def raw_post(gw: Gateway, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.post(f"{gw.base_url}{path}", content=body, timeout=30,
                      headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-not-a-real-key"}])
def test_the_key_is_checked_before_the_body_is_parsed(gateway: Gateway,
                                                     headers: dict[str, str]) -> None:
    resp = raw_post(gateway, "/v1/images/generations", headers, MALFORMED)
    assert_envelope(resp, 401)
    invalid = raw_post(gateway, "/v1/images/generations", headers, b'{"model": 1}')
    assert_envelope(invalid, 401)  # a body that parses but is invalid: the key first too
    bfl = raw_post(gateway, "/v1/flux-kontext-pro", {"x-key": "nope", **headers}, MALFORMED)
    assert bfl.status_code == 403 and "Not authenticated" in str(bfl.json()["detail"])
    rep = raw_post(gateway, "/replicate/v1/models/black-forest-labs/flux-kontext-pro/"
                   "predictions", headers, MALFORMED)
    assert rep.status_code == 401 and rep.json()["title"] == "Unauthenticated"


def test_a_json_syntax_error_names_no_param(gateway: Gateway, api_key: str) -> None:
    resp = raw_post(gateway, "/v1/images/generations",
                    {"authorization": f"Bearer {api_key}"}, MALFORMED)
    err = assert_envelope(resp, 400, code="invalid_json")
    assert err["param"] is None and "not valid JSON" in err["message"]
    bfl = raw_post(gateway, "/v1/flux-kontext-pro", {"x-key": api_key}, MALFORMED)
    assert bfl.status_code == 422
    assert [e["loc"] for e in bfl.json()["detail"]] == [["body"]]
