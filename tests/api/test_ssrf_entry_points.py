"""User URLs reach the SSRF-safe fetcher from every entry point of the generations API:
without an allow-list, loopback and metadata addresses are refused before any connection."""

from __future__ import annotations

import base64
import socket
from typing import Any

import httpx
import pytest

from tests.conftest import ImageServer, png_bytes


@pytest.mark.parametrize("where", ["prompt", "input_image", "input_image_2"])
def test_loopback_url_refused_at_every_entry_point(gateway_factory: Any, image_server: ImageServer,
                                                   where: str) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    url = image_server.add("secret.png", png_bytes())
    body: dict[str, Any] = {"model": "flux-kontext-pro", "prompt": "edit it"}
    if where == "prompt":
        body["prompt"] = f"{url} edit it"
    elif where == "input_image":
        body["input_image"] = url
    else:
        body["input_image"] = "data:image/png;base64," + base64.b64encode(
            png_bytes()).decode()
        body["input_image_2"] = url
    resp = httpx.post(f"{gw.base_url}/v1/images/generations", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "url_not_allowed"
    assert image_server.hits == []  # no connection reached the canary


def test_metadata_address_refused(gateway_factory: Any) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    resp = httpx.post(f"{gw.base_url}/v1/images/generations",
                      json={"model": "flux-kontext-pro",
                            "prompt": "http://169.254.169.254/latest/meta-data/x.png edit"},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "url_not_allowed"


def _chat_messages(where: str, url: str) -> list[dict[str, Any]]:
    if where == "image_url part":
        return [{"role": "user", "content": [{"type": "text", "text": "edit it"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    if where == "files_info":
        return [{"role": "user", "content": (
            "edit it\n<!-- SYSTEM CONTEXT (NOT PART OF USER QUERY) -->\n<files_info>\n<images>\n"
            f'<image name="a.png" url="{url}"></image>\n</images>\n</files_info>\n'
            "<!-- END SYSTEM CONTEXT -->")}]
    if where == "history":
        return [{"role": "user", "content": "a fox"},
                {"role": "assistant", "content": f"![image]({url})"},
                {"role": "user", "content": "now at night"}]
    return [{"role": "user", "content": f"{url} edit it"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("where", ["image_url part", "files_info", "text", "history"])
def test_chat_image_urls_go_through_the_same_guard(gateway_factory: Any,
                                                   image_server: ImageServer, where: str,
                                                   stream: bool) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    for url in (image_server.add("secret.png", png_bytes()),
                "http://169.254.169.254/latest/meta-data/x.png"):
        resp = httpx.post(f"{gw.base_url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "flux-kontext-pro", "stream": stream,
                                "messages": _chat_messages(where, url)})
        assert resp.status_code == 400, resp.text  # refused before any stream starts
        assert resp.json()["error"]["code"] == "url_not_allowed"
    assert image_server.hits == []


def test_edit_urls_go_through_the_same_guard(gateway_factory: Any,
                                             image_server: ImageServer) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    url = image_server.add("secret.png", png_bytes())
    inline = base64.b64encode(png_bytes()).decode()
    auth = {"authorization": f"Bearer {key}"}
    edits = f"{gw.base_url}/v1/images/edits"
    answers = [
        httpx.post(edits, headers=auth, json={"model": "flux-kontext-pro", "prompt": "x",
                                              "image": url}),
        httpx.post(edits, headers=auth, json={"model": "flux-kontext-pro", "prompt": "x",
                                              "images": [{"image_url": url}]}),
        httpx.post(edits, headers=auth, json={"model": "flux-kontext-pro", "prompt": "x",
                                              "image": inline, "mask": url}),
        httpx.post(edits, headers=auth, data={"model": "flux-kontext-pro", "prompt": "x",
                                              "image[]": url},
                   files={"mask": ("m.png", b"")}),
    ]
    for resp in answers:
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "url_not_allowed"
    assert image_server.hits == []


def test_fetch_allow_entry_with_a_port_opens_that_port_only(gateway_factory: Any,
                                                            image_server: ImageServer) -> None:
    """`limits.fetch_allow: ["127.0.0.1:PORT"]` (issue 17 item 7): an image on that port is
    fetched; the same host on another port is refused before any connection."""
    port = int(image_server.base_url.rsplit(":", 1)[1])
    gw = gateway_factory(limits={"fetch_allow": [f"127.0.0.1:{port}"]})
    _, key = gw.create_key()
    url = image_server.add("cat.png", png_bytes())

    def edit(image_url: str) -> httpx.Response:
        return httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "flux-kontext-pro", "prompt": "edit it",
                                "input_image": image_url, "response_format": "url"})

    with socket.socket() as closed:  # a free port nobody listens on
        closed.bind(("127.0.0.1", 0))
        other = closed.getsockname()[1]
    refused = edit(f"http://127.0.0.1:{other}/cat.png")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "url_not_allowed"
    resp = edit(url)
    assert resp.status_code == 200, resp.text
    assert image_server.hits == ["cat.png"]


PROMPT_URLS = [
    "http://[2001:db8::1]/a.png",  # an IPv6 literal (documentation range): recognised, refused
    "http://[::1]:8080/a.png",
    "http://[::ffff:127.0.0.1]/a.png",
    "https://[fe80::1%25eth0]/a.png",
    "file:///etc/passwd",
    "file:/etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "ftp://127.0.0.1/a.png",
]


@pytest.mark.parametrize("url", PROMPT_URLS)
def test_prompt_urls_of_every_form_go_through_the_policy(gateway_factory: Any,
                                                         url: str) -> None:
    """A URL at the start of a prompt is an input image whatever its host notation or scheme;
    the fetcher refuses these, so none reaches an upstream as prompt text."""
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    resp = httpx.post(f"{gw.base_url}/v1/images/generations",
                      json={"model": "flux-kontext-pro", "prompt": f"{url} make it blue"},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("url_not_allowed", "prompt[0]")
    assert sum(getattr(c.adapter, "submitted", 0) for c in gw.services.router.channels) == 0


@pytest.mark.parametrize("url", ["http://[::1]/a.png", "file:///etc/passwd",
                                 "gopher://127.0.0.1:70/_x", "file:///srv/photo.png"])
def test_chat_text_urls_of_every_form_go_through_the_policy(gateway_factory: Any,
                                                            url: str) -> None:
    gw = gateway_factory(limits={"fetch_allow": []})
    _, key = gw.create_key()
    for text in (f"{url} make it blue", f"make it like {url}"):
        if not url.endswith(".png") and not text.startswith(url):
            continue  # mid-text, only image-looking URLs are inputs (the rest stays words)
        resp = httpx.post(f"{gw.base_url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "flux-kontext-pro",
                                "messages": [{"role": "user", "content": text}]})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "url_not_allowed"
