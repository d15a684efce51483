"""A request's `webhook_secret`, with or without the `whsec_` prefix, verifies with the official
`standardwebhooks` libraries (Python and JavaScript) given the same string; a string they
cannot verify with is refused at submit (issue 17 item 5)."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from gateway.jobs.tables import JobRow
from tests.conftest import Gateway
from tests.node_clients import npm_install, run_node
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_end_to_end import FAST, generate

RAW = secrets.token_bytes(32)
B64 = base64.b64encode(RAW).decode()
FORMS = {
    "whsec_": "whsec_" + B64,
    "bare base64": B64,
    "bare, unpadded": base64.b64encode(RAW[:31]).decode().rstrip("="),
    "hex (is base64 too)": secrets.token_hex(24),
}

VERIFY_JS = """
import { Webhook } from "standardwebhooks";
const [secret, body, headers] = process.argv.slice(2);
const payload = new Webhook(secret).verify(body, JSON.parse(headers));
console.log(JSON.stringify({ id: payload.id }));
"""


@pytest.fixture(scope="module")
def js_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return npm_install(tmp_path_factory.mktemp("swh"), "standardwebhooks@1.1.1")


def jobs_count(gw: Gateway) -> int:
    async def go() -> int:
        async with gw.services.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(JobRow)))
                       .scalar_one())
    result: int = gw.call(go())
    return result


def test_every_accepted_form_verifies_with_the_python_library_given_the_same_string(
        gateway_factory: Any, receiver: Receiver) -> None:
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh")[1]
    for i, secret in enumerate(FORMS.values()):
        resp = generate(gw, key, webhook_url=receiver.url, webhook_secret=secret)
        assert resp.status_code == 200, (secret, resp.text)
        got = receiver.wait_for(i + 1)[i]
        assert Webhook(secret).verify(got.body, got.headers)["status"] == "succeeded"


def test_both_forms_verify_with_the_javascript_library(
        gateway_factory: Any, receiver: Receiver, js_verifier: Path) -> None:
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh")[1]
    for i, secret in enumerate(FORMS.values()):
        assert generate(gw, key, webhook_url=receiver.url,
                        webhook_secret=secret).status_code == 200
        got = receiver.wait_for(i + 1)[i]
        verified = run_node(js_verifier, VERIFY_JS, secret, got.body.decode(),
                            json.dumps(got.headers))
        assert verified["id"] == json.loads(got.body)["id"]


@pytest.mark.parametrize("secret", ["reseller-secret-42", "my secret", "url_safe-b64_x",
                                    "abcde", "c2hvcnQ="])
def test_a_secret_no_verifier_can_use_is_a_400_before_any_job(
        gateway_factory: Any, receiver: Receiver, secret: str) -> None:
    """Not base64 (the Python verifier would drop characters, the JavaScript one throws), or
    shorter than 8 bytes: refused with a message that says what to send, on the OpenAI and
    the BFL-style routes."""
    gw = gateway_factory(**FAST)
    key = gw.create_key("wh", balance=1_000_000)[1]
    resp = generate(gw, key, webhook_url=receiver.url, webhook_secret=secret)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_webhook_secret" and error["param"] == "webhook_secret"
    assert "whsec_" in error["message"] or "8 bytes" in error["message"]
    bfl = httpx.post(f"{gw.base_url}/v1/flux-kontext-pro", headers={"x-key": key}, timeout=30,
                     json={"prompt": "a fox", "webhook_url": receiver.url,
                           "webhook_secret": secret})
    assert bfl.status_code == 422, bfl.text  # BFL's validation shape
    assert bfl.json()["detail"][0]["loc"] == ["body", "webhook_secret"]
    assert jobs_count(gw) == 0 and receiver.requests == []


def test_a_bad_secret_is_refused_even_without_a_url_and_the_schema_says_which(
        gateway_factory: Any) -> None:
    import re

    gw = gateway_factory(**FAST)
    key = gw.create_key("wh", balance=1_000_000)[1]
    resp = generate(gw, key, webhook_secret="reseller-secret-42")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "webhook_secret"
    assert jobs_count(gw) == 0
    doc = httpx.get(f"{gw.base_url}/openapi.json", timeout=30).json()
    pattern = doc["components"]["schemas"]["ImageGenerationRequest"]["properties"][
        "webhook_secret"]["pattern"]
    for secret in FORMS.values():
        assert re.fullmatch(pattern, secret), secret
    for bad in ("reseller-secret-42", "my secret", "abcde", "whsec_!!"):
        assert not re.fullmatch(pattern, bad), bad
