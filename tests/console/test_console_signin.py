"""Signing in to the console over plain HTTP (no browser): the sign-in form's own token, the
throttle on guessing, and where the secret travels."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.conftest import Gateway

ADMIN = "console-signin-admin-token-42"


def _form(client: httpx.Client) -> str:
    page = client.get("/console/login")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def test_guessing_is_throttled_and_the_token_travels_in_the_body_only(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(admin_token=ADMIN)
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        statuses = []
        for i in range(25):
            answer = client.post("/console/login", data={"csrf": _form(client),
                                                          "token": f"guess-{i}"})
            statuses.append(answer.status_code)
        assert statuses[:20] == [401] * 20 and statuses[-1] == 429, statuses
        assert "retry-after" in answer.headers
    with httpx.Client(base_url=gw.base_url, timeout=30) as other:  # same address: still waiting
        answer = other.post("/console/login", data={"csrf": _form(other), "token": ADMIN})
        assert answer.status_code == 429
        assert "fluxgate_console" not in answer.cookies


def test_a_signed_in_operator_gets_a_signed_cookie_not_the_token(
        gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(admin_token=ADMIN)
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        answer = client.post("/console/login", data={"csrf": _form(client), "token": ADMIN})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/keys"
        cookie = answer.headers["set-cookie"]
        assert ADMIN not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert client.get("/console/keys").status_code == 200
        # a tampered cookie is no session
        value = client.cookies["fluxgate_console"]
        client.cookies.clear()
        client.cookies.set("fluxgate_console", value[:-2] + ("AA" if value[-2:] != "AA"
                                                                else "BB"), path="/console")
        assert client.get("/console/keys", headers={"accept": "text/html"}).status_code == 303
