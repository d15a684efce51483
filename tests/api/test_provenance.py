"""Provenance on every result (issue 15), through real HTTP.

An OpenAI-compatible upstream is stubbed at the transport (respx, as in test_fidelity.py). The
gateway signs with a throw-away ES256 chain made here (`make_chain`), its CA, plus the
"upstream's" CA, being the trust anchors c2pa's own Reader checks against. Each case makes
the same result for three keys, `provenance: off | metadata | signed`, and compares them: the
signed one validates (`Trusted`), names its digital source type in XMP, and has exactly the
pixels (and the encoded image data) of the unsigned one; `off` carries nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from PIL import Image
from typer.testing import CliRunner

from gateway.cli import app as cli_app
from gateway.images.xmp import COMPOSITE, GENERATED, source_type_of
from tests.api.test_fidelity import UPSTREAM, FakeOpenAI, decoded, encode, max_diff, picture, start
from tests.conftest import Gateway, jobs_of
from tests.images.credentials import (
    active_manifest,
    image_data,
    make_chain,
    reader_store,
    sign,
    upstream_ca,
)

PILLOW = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
OTHER = {"png": "JPEG", "jpeg": "PNG", "webp": "PNG"}  # what the upstream answers to convert
MODES = ("off", "metadata", "signed")
Chain = tuple[bytes, bytes, bytes]


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The OpenAI-compatible upstream of test_fidelity.py (channel `oai` of `start`)."""
    monkeypatch.setenv("FIDELITY_KEY", "sk-upstream")
    fake = FakeOpenAI()
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.post(f"{UPSTREAM}/v1/images/generations").mock(side_effect=fake.respond)
        mock.post(f"{UPSTREAM}/v1/images/edits").mock(side_effect=fake.respond)
        yield fake


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain("gateway")


def provenance_settings(tmp_path: Path, chain: Chain, *, command: list[str] | None = None,
                        **more: Any) -> dict[str, Any]:
    """`provenance:` settings signing with `chain` (key file, or `command`)."""
    cert, key, ca = chain
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "anchors.pem").write_bytes(ca + upstream_ca())
    signing: dict[str, Any] = {"cert_file": str(tmp_path / "cert.pem")}
    if command is None:
        signing["key_file"] = str(tmp_path / "key.pem")
    else:
        signing["sign_command"] = command
    return {"signing": signing, "trust_anchors_file": str(tmp_path / "anchors.pem"), **more}


def anchors(chain: Chain) -> bytes:
    return chain[2] + upstream_ca()


def served(resp: httpx.Response) -> bytes:
    assert resp.status_code == 200, resp.text
    return base64.b64decode(resp.json()["data"][0]["b64_json"])


# -- the four result paths ---------------------------------------------------------------------
def _generate(gw: Gateway, key: str, fmt: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": "flux-kontext-pro", "prompt": "a fox", "output_format": fmt,
                            "response_format": "b64_json"})


def _edit(gw: Gateway, key: str, fmt: str, images: list[bytes],
          mask: bytes | None = None) -> httpx.Response:
    files = [("image[]", (f"in{i}.png", data, "image/png")) for i, data in enumerate(images)]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return httpx.post(f"{gw.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {key}"}, files=files, timeout=60,
                      data={"model": "flux-kontext-pro", "prompt": "x", "output_format": fmt,
                            "response_format": "b64_json"})


ORIGINAL = picture((96, 64))
MASK = Image.new("L", (96, 64), 0)
MASK.paste(255, (48, 0, 96, 64))  # the right half is edited
STITCH = [encode(picture((48, 64)), "PNG"), encode(picture((48, 64)).rotate(180), "PNG")]


def scenario(name: str, fmt: str, up: FakeOpenAI) -> tuple[Callable[[Gateway, str], bytes],
                                                           list[bytes]]:
    """(make the result for a key, the inputs sent) of a path; sets the upstream's answer."""
    if name == "generate":  # the answer in the asked format: served as it came
        up.answer = encode(picture((64, 64)), PILLOW[fmt])
        return (lambda gw, key: served(_generate(gw, key, fmt))), []
    if name == "conversion":
        up.answer = encode(picture((64, 64)), OTHER[fmt])
        return (lambda gw, key: served(_generate(gw, key, fmt))), []
    if name == "masked edit":
        up.answer = encode(Image.new("RGB", (96, 64), (0, 200, 0)), "PNG")
        inputs = [encode(ORIGINAL, "PNG")]
        mask = encode(MASK, "PNG")
        return (lambda gw, key: served(_edit(gw, key, fmt, inputs, mask))), inputs
    assert name == "stitched edit"  # two inputs to a one-slot channel: side by side
    up.answer = encode(picture((48, 64)), PILLOW[fmt])
    return (lambda gw, key: served(_edit(gw, key, fmt, STITCH))), STITCH


def keys_by_mode(gw: Gateway) -> dict[str, tuple[str, str]]:
    """mode -> (key id, key) of a key with that `provenance`."""
    return {mode: gw.create_key(balance=10_000_000, provenance=mode) for mode in MODES}


def same_pixels(a: bytes, b: bytes) -> None:
    ia, ib = decoded(a), decoded(b)
    assert (ia.mode, ia.size) == (ib.mode, ib.size)
    assert ia.tobytes() == ib.tobytes()
    assert image_data(a) == image_data(b)  # not even re-encoded: the same bitstream


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("path", ["generate", "conversion", "masked edit", "stitched edit"])
def test_every_result_path_is_marked_and_signed_without_touching_pixels(
        gateway_factory: Any, upstream: FakeOpenAI, tmp_path: Path, chain: Chain, path: str,
        fmt: str) -> None:
    make, inputs = scenario(path, fmt, upstream)
    gw, _, _ = start(gateway_factory, options={"max_input_images": 1},
                     provenance=provenance_settings(tmp_path, chain))
    keys = keys_by_mode(gw)
    out = {mode: make(gw, key) for mode, (_, key) in keys.items()}
    mime = MIMES[fmt]

    # off: nothing written, as before this issue
    assert source_type_of(out["off"]) is None
    assert active_manifest(out["off"], mime) is None
    if path == "generate":
        assert out["off"] == upstream.answer

    # metadata (the default mode): the IPTC field, no manifest, the same pixels
    masked = path == "masked edit"
    want_type = COMPOSITE if masked else GENERATED
    assert source_type_of(out["metadata"]) == want_type
    assert active_manifest(out["metadata"], mime) is None
    same_pixels(out["metadata"], out["off"])

    # signed: c2pa's own Reader validates it against the trust anchors
    signed = out["signed"]
    assert source_type_of(signed) == want_type
    same_pixels(signed, out["off"])
    state, store = reader_store(signed, mime, anchors(chain))
    assert state == "Trusted", store.get("validation_results")
    active = store["manifests"][store["active_manifest"]]
    assert active["claim_generator_info"][0]["name"] == "fluxgate"
    [actions] = [a["data"]["actions"] for a in active["assertions"]
                 if a["label"].startswith("c2pa.actions")]
    names = [a["action"] for a in actions]
    ingredients = active.get("ingredients", [])
    by_hash = {i["instance_id"]: i["relationship"] for i in ingredients}
    if inputs:  # an edit: c2pa.opened (the first input is the parent), then c2pa.edited
        assert names == ["c2pa.opened", "c2pa.edited"]
        assert actions[1]["digitalSourceType"] == want_type
        assert actions[1]["parameters"]["model"] == "flux-kontext-pro"
        assert actions[1]["parameters"]["channel_type"] == "openai"
        expected = {f"sha256:{hashlib.sha256(d).hexdigest()}": rel
                    for d, rel in zip(inputs, ["parentOf", "componentOf"], strict=False)}
        assert by_hash == expected
    else:
        assert names == ["c2pa.created"] and not ingredients
        assert actions[0]["digitalSourceType"] == GENERATED
        assert actions[0]["parameters"]["channel_type"] == "openai"
        assert "when" in actions[0]
    if masked and fmt != "jpeg":  # mask exactness holds in the signed file too
        kept = decoded(signed).convert("RGB").crop((0, 0, 48, 64))
        assert max_diff(kept, ORIGINAL.crop((0, 0, 48, 64))) == 0


# -- an upstream's own manifest --------------------------------------------------------------
@pytest.mark.parametrize(("answered", "asked", "masked"), [
    pytest.param("png", "png", False, id="png passed through"),
    pytest.param("jpeg", "jpeg", False, id="jpeg passed through"),
    pytest.param("webp", "webp", False, id="webp passed through"),
    pytest.param("png", "jpeg", False, id="png converted to jpeg"),
    pytest.param("jpeg", "webp", False, id="jpeg converted to webp"),
    pytest.param("png", "png", True, id="masked edit of a signed result"),
])
def test_an_upstream_manifest_is_kept_as_the_parent_ingredient(
        gateway_factory: Any, upstream: FakeOpenAI, tmp_path: Path, chain: Chain,
        answered: str, asked: str, masked: bool) -> None:
    size = (96, 64) if masked else (64, 64)
    upstream.answer = sign(encode(picture(size), PILLOW[answered]), MIMES[answered])
    upstream_label = active_manifest(upstream.answer, MIMES[answered])
    gw, _, _ = start(gateway_factory, provenance=provenance_settings(tmp_path, chain))
    keys = keys_by_mode(gw)

    def make(mode: str) -> bytes:
        key = keys[mode][1]
        if masked:
            return served(_edit(gw, key, asked, [encode(ORIGINAL, "PNG")], encode(MASK, "PNG")))
        return served(_generate(gw, key, asked))

    signed, plain = make("signed"), make("metadata")
    state, store = reader_store(signed, MIMES[asked], anchors(chain))
    assert state == "Trusted", store.get("validation_results")
    assert len(store["manifests"]) == 2  # the upstream's, whole, and ours
    active = store["manifests"][store["active_manifest"]]
    [parent] = [i for i in active["ingredients"] if i["relationship"] == "parentOf"]
    assert parent["active_manifest"] == upstream_label
    assert parent["instance_id"] == f"sha256:{hashlib.sha256(upstream.answer).hexdigest()}"
    assert source_type_of(signed) == (COMPOSITE if masked else GENERATED)
    same_pixels(signed, make("off"))
    if answered == asked and not masked:  # metadata: the signed bytes pass through untouched
        assert plain == upstream.answer
    else:  # re-encoded without a signature: the manifest is lost, and the notes say what is kept
        assert active_manifest(plain, MIMES[asked]) is None
        assert source_type_of(plain) is not None
        [row] = jobs_of(gw, keys["metadata"][0])
        note = " | ".join(row.spec["notes"])
        assert "C2PA content credentials (manifest) were lost" in note
        assert upstream_label is not None and upstream_label in note



# -- where the mode comes from -----------------------------------------------------------------
ADMIN = "admin-secret"


def test_mode_is_set_per_key_in_the_admin_api_and_per_price_group_in_settings(
        gateway_factory: Any, upstream: FakeOpenAI, tmp_path: Path, chain: Chain) -> None:
    upstream.answer = encode(picture((64, 64)), "PNG")
    gw, _, _ = start(gateway_factory, admin_token=ADMIN, provenance=provenance_settings(
        tmp_path, chain, price_groups={"press": "signed"}))
    admin = {"authorization": f"Bearer {ADMIN}"}
    created = httpx.post(f"{gw.base_url}/admin/keys", headers=admin, timeout=30,
                         json={"name": "press desk", "price_group": "press"})
    assert created.status_code == 201, created.text
    assert created.json()["provenance"] is None  # its group's mode applies
    key_id, key = created.json()["id"], created.json()["secret"]
    assert active_manifest(served(_generate(gw, key, "png")), "image/png") is not None

    patched = httpx.patch(f"{gw.base_url}/admin/keys/{key_id}", headers=admin, timeout=30,
                          json={"provenance": "off"})
    assert patched.status_code == 200 and patched.json()["provenance"] == "off"
    assert served(_generate(gw, key, "png")) == upstream.answer  # the key's own mode wins

    bad = httpx.patch(f"{gw.base_url}/admin/keys/{key_id}", headers=admin, timeout=30,
                      json={"provenance": "loud"})
    assert bad.status_code in (400, 422)
    assert "provenance" in json.dumps(bad.json()["error"])
    plain = httpx.post(f"{gw.base_url}/admin/keys", headers=admin, timeout=30,
                       json={"name": "no group"}).json()["secret"]
    result = served(_generate(gw, plain, "png"))  # the default: metadata
    assert source_type_of(result) == GENERATED and active_manifest(result, "image/png") is None


def test_keys_cli_sets_and_clears_the_mode(gateway: Gateway) -> None:
    key_id, _ = gateway.create_key()
    env = {"FLUXGATE_DATA_DIR": str(gateway.settings.data_dir)}
    runner = CliRunner()
    done = runner.invoke(cli_app, ["keys", "update", key_id, "--provenance", "signed"], env=env)
    assert done.exit_code == 0, done.output
    listed = json.loads(runner.invoke(cli_app, ["keys", "list", "--json"], env=env).output)
    assert [k["provenance"] for k in listed if k["id"] == key_id] == ["signed"]
    bad = runner.invoke(cli_app, ["keys", "update", key_id, "--provenance", "loud"], env=env)
    assert bad.exit_code == 1 and "provenance must be one of" in bad.output
    cleared = runner.invoke(cli_app, ["keys", "update", key_id, "--clear", "provenance"], env=env)
    assert cleared.exit_code == 0, cleared.output
    listed = json.loads(runner.invoke(cli_app, ["keys", "list", "--json"], env=env).output)
    assert [k["provenance"] for k in listed if k["id"] == key_id] == [None]


def test_signed_without_a_certificate_marks_with_metadata_and_says_so(
        gateway_factory: Any, upstream: FakeOpenAI) -> None:
    upstream.answer = encode(picture((64, 64)), "JPEG")
    gw, key_id, key = start(gateway_factory, provenance={"default": "signed"})
    result = served(_generate(gw, key, "jpeg"))
    assert source_type_of(result) == GENERATED
    assert active_manifest(result, "image/jpeg") is None
    [row] = jobs_of(gw, key_id)
    assert any("no signing certificate is configured" in n for n in row.spec["notes"])


SIGN_HOOK = '''
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
digest = sys.stdin.buffer.read()
assert len(digest) == 32, len(digest)  # the hook signs a SHA-256 digest, as a KMS does
sys.stdout.buffer.write(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
'''


def test_a_sign_command_keeps_the_key_outside_the_gateway(
        gateway_factory: Any, upstream: FakeOpenAI, tmp_path: Path, chain: Chain) -> None:
    """`signing.sign_command`: the private key lives only in the hook (here a script standing
    in for a KMS), which gets the digest on stdin and prints a DER signature."""
    hook = tmp_path / "hook.py"
    hook.write_text(SIGN_HOOK)
    settings = provenance_settings(tmp_path, chain,
                                   command=[sys.executable, str(hook), str(tmp_path / "key.pem")],
                                   default="signed")
    assert "key_file" not in settings["signing"]
    upstream.answer = encode(picture((64, 64)), "WEBP", lossless=True)
    gw, _, key = start(gateway_factory, provenance=settings)
    result = served(_generate(gw, key, "webp"))
    state, store = reader_store(result, "image/webp", anchors(chain))
    assert state == "Trusted", store.get("validation_results")


# -- what a file carries: GET /files/{id}/credentials and `fluxgate verify` ----------------------
def test_credentials_endpoint_and_verify_command_show_what_a_result_carries(
        gateway_factory: Any, upstream: FakeOpenAI, tmp_path: Path, chain: Chain) -> None:
    upstream.answer = sign(encode(picture((64, 64)), "PNG"), "image/png")
    gw, key_id, key = start(gateway_factory,
                            provenance=provenance_settings(tmp_path, chain, default="signed"))
    result = served(_generate(gw, key, "jpeg"))
    [row] = jobs_of(gw, key_id)
    file_id = row.outputs[0]["file_id"]
    resp = httpx.get(f"{gw.base_url}/files/{file_id}/credentials", timeout=30,
                     headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["digital_source_type"] == GENERATED
    c2pa = body["c2pa"]
    assert c2pa["validation_state"] == "Trusted" and c2pa["manifests"] == 2
    assert c2pa["claim_generator"][0].startswith("fluxgate ")
    assert [a["action"] for a in c2pa["actions"]] == ["c2pa.opened", "c2pa.edited"]
    assert [i["relationship"] for i in c2pa["ingredients"]] == ["parentOf"]
    _, other = gw.create_key()
    denied = httpx.get(f"{gw.base_url}/files/{file_id}/credentials", timeout=30,
                       headers={"authorization": f"Bearer {other}"})
    assert denied.status_code == 404 and denied.json()["error"]["code"] == "file_not_found"

    runner = CliRunner()
    path = tmp_path / "result.jpg"
    path.write_bytes(result)
    trust = ["--trust", str(tmp_path / "anchors.pem")]
    shown = runner.invoke(cli_app, ["verify", str(path), *trust])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["c2pa"]["validation_state"] == "Trusted"
    tampered = bytearray(result)
    tampered[-100] ^= 0xFF  # one bit of the image data: the hard binding no longer matches
    path.write_bytes(bytes(tampered))
    refused = runner.invoke(cli_app, ["verify", str(path), *trust])
    assert refused.exit_code == 1
    assert json.loads(refused.output)["c2pa"]["failures"]
    path.write_bytes(encode(picture((16, 16)), "PNG"))
    bare = runner.invoke(cli_app, ["verify", str(path), *trust])
    assert bare.exit_code == 0
    assert json.loads(bare.output) == {"format": "image/png", "digital_source_type": None,
                                       "c2pa": None}
