"""The Replicate-compatible API driven by the real replicate JS client (1.4.0, via npm)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.conftest import Gateway, png_bytes
from tests.node_clients import npm_install, run_node

FILES = """
import Replicate from "replicate";
const [base, auth, pngBase64] = process.argv.slice(2);
const replicate = new Replicate({auth, baseUrl: base});
const png = Buffer.from(pngBase64, "base64");
const created = await replicate.files.create(new Blob([png], {type: "image/png"}), {a: 1, b: "x"});
const again = await replicate.files.get(created.id);
replicate.poll_interval = 100;
const output = await replicate.run("black-forest-labs/flux-kontext-pro",
                                   {input: {prompt: "make it night", input_image: png}});
console.log(JSON.stringify({created, again, output: String(output)}));
"""


@pytest.fixture(scope="module")
def replicate_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return npm_install(tmp_path_factory.mktemp("replicate-js"), "replicate@1.4.0")


def test_js_files_create_with_metadata_and_run_with_a_buffer(gateway: Gateway, api_key: str,
                                                             replicate_js: Path) -> None:
    result = run_node(replicate_js, FILES, f"{gateway.base_url}/replicate/v1", api_key,
                      base64.b64encode(png_bytes((64, 48))).decode())
    created, again = result["created"], result["again"]
    assert created["content_type"] == "image/png"
    assert created["metadata"] == {"a": 1, "b": "x"}
    assert again["id"] == created["id"]
    assert (again["name"], again["metadata"]) == (created["name"], created["metadata"])
    assert result["output"].startswith(f"{gateway.base_url}/files/")
