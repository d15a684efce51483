"""S3Storage against moto's S3 server, in-process on a loopback port (no network), and the real
gateway storing its outputs there while still serving them at its own signed /files/ URLs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
from moto.server import ThreadedMotoServer

from gateway.app import build_storage
from gateway.settings import ConfigError, load_settings
from gateway.storage.base import ObjectMissing, StorageError
from gateway.storage.s3 import S3Storage
from tests.conftest import Gateway, png_bytes

REGION = "us-east-1"
FAKE_KEY, FAKE_SECRET = "testing-key", "testing-secret"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_admin(moto_url: str) -> Any:
    """A plain boto3 client for arranging and inspecting the fake bucket."""
    return boto3.client("s3", endpoint_url=moto_url, region_name=REGION,
                        aws_access_key_id=FAKE_KEY, aws_secret_access_key=FAKE_SECRET)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"fg-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


def make_storage(moto_url: str, bucket: str, prefix: str = "") -> S3Storage:
    return S3Storage(bucket=bucket, prefix=prefix, region=REGION, endpoint_url=moto_url,
                     access_key=FAKE_KEY, secret_key=FAKE_SECRET, addressing_style="path",
                     max_attempts=1)


@pytest.fixture
async def storage(moto_url: str, bucket: str) -> AsyncIterator[S3Storage]:
    st = make_storage(moto_url, bucket, prefix="/fluxgate/")
    await st.start()
    yield st
    await st.aclose()


async def test_put_get_delete_round_trip(storage: S3Storage, s3_admin: Any, bucket: str) -> None:
    data = png_bytes()
    await storage.put("output/2025/01/02/file_x.png", data, "image/png")
    assert await storage.get("output/2025/01/02/file_x.png") == data
    head = s3_admin.head_object(Bucket=bucket, Key="fluxgate/output/2025/01/02/file_x.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(data)
    await storage.put("output/2025/01/02/file_x.png", b"v2", "image/png")  # overwrite
    assert await storage.get("output/2025/01/02/file_x.png") == b"v2"
    await storage.delete("output/2025/01/02/file_x.png")
    with pytest.raises(ObjectMissing):
        await storage.get("output/2025/01/02/file_x.png")
    await storage.delete("output/2025/01/02/file_x.png")  # idempotent


async def test_missing_object_and_bucket(storage: S3Storage, moto_url: str) -> None:
    with pytest.raises(ObjectMissing):
        await storage.get("output/nope.png")
    nowhere = make_storage(moto_url, f"absent-{uuid.uuid4().hex[:8]}")
    await nowhere.start()
    try:
        with pytest.raises(StorageError) as info:  # a missing bucket is not a missing object
            await nowhere.get("output/nope.png")
        assert not isinstance(info.value, ObjectMissing)
        with pytest.raises(StorageError):
            await nowhere.put("output/x.png", b"x", "image/png")
    finally:
        await nowhere.aclose()


async def test_prefix_and_keys(moto_url: str, bucket: str, s3_admin: Any) -> None:
    plain, prefixed = make_storage(moto_url, bucket), make_storage(moto_url, bucket, "a/b")
    assert plain.name == f"s3:{moto_url}/{bucket}"
    assert prefixed.name == f"s3:{moto_url}/{bucket}/a/b"
    await plain.start()
    await prefixed.start()
    try:
        await plain.put("k/one.bin", b"1", "application/octet-stream")
        await prefixed.put("k/one.bin", b"2", "application/octet-stream")
        keys = sorted(o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket)["Contents"])
        assert keys == ["a/b/k/one.bin", "k/one.bin"]
        assert await plain.get("k/one.bin") == b"1"
        assert await prefixed.get("k/one.bin") == b"2"
        for bad in ("", "/abs", "a/../b", "a//b", "./a"):
            with pytest.raises(StorageError):
                await prefixed.put(bad, b"x", "image/png")
    finally:
        await plain.aclose()
        await prefixed.aclose()


async def test_not_started_is_a_storage_error(moto_url: str, bucket: str) -> None:
    with pytest.raises(StorageError, match="not started"):
        await make_storage(moto_url, bucket).get("x")


# settings ------------------------------------------------------------------------------------

def test_s3_settings_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.s3\.bucket") as info:
        load_settings(None, data_dir=tmp_path, storage={"kind": "s3"})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"storage\.s3\.addressing_style"):
        load_settings(None, storage={"kind": "s3", "s3": {"bucket": "b",
                                                          "addressing_style": "dns"}})
    with pytest.raises(ConfigError, match=r"storage\.s3.*secret_key_env"):
        load_settings(None, storage={"kind": "s3", "s3": {"bucket": "b",
                                                          "access_key_env": "K"}})
    with pytest.raises(ConfigError, match=r"storage\.s3\.prefix"):
        load_settings(None, storage={"kind": "s3", "s3": {"bucket": "b", "prefix": "a/../b"}})
    ok = load_settings(None, storage={"kind": "s3", "s3": {"bucket": "b", "prefix": "/fg/"}})
    assert ok.storage.s3.prefix == "fg" and ok.storage.s3.addressing_style == "auto"


def test_env_overrides_reach_s3_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXGATE_STORAGE__KIND", "s3")
    monkeypatch.setenv("FLUXGATE_STORAGE__S3__BUCKET", "from-env")
    assert load_settings(None).storage.s3.bucket == "from-env"


async def test_unset_credential_variable_stops_start_up(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.delenv("FG_TEST_NO_SUCH_KEY", raising=False)
    monkeypatch.setenv("FG_TEST_SECRET", "x")
    settings = load_settings(None, data_dir=tmp_path, storage={"kind": "s3", "s3": {
        "bucket": "b", "access_key_env": "FG_TEST_NO_SUCH_KEY",
        "secret_key_env": "FG_TEST_SECRET"}})
    with pytest.raises(ConfigError, match=r"storage\.s3\.access_key_env.*FG_TEST_NO_SUCH_KEY"):
        await build_storage(settings)


def s3_settings(tmp_path: Path, moto_url: str, bucket: str, **extra: Any) -> Any:
    return load_settings(None, data_dir=tmp_path, storage={"kind": "s3", "s3": {
        "bucket": bucket, "region": REGION, "endpoint_url": moto_url,
        "access_key_env": "FG_TEST_S3_KEY", "secret_key_env": "FG_TEST_S3_SECRET",
        "addressing_style": "path", **extra}})


async def test_start_up_probes_the_bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          moto_url: str, bucket: str, s3_admin: Any) -> None:
    """A wrong bucket stops start-up with one line naming the field and S3's answer (not a
    first failed job); a good one is left as it was (the probe object is deleted)."""
    monkeypatch.setenv("FG_TEST_S3_KEY", FAKE_KEY)
    monkeypatch.setenv("FG_TEST_S3_SECRET", FAKE_SECRET)
    with pytest.raises(ConfigError) as info:
        await build_storage(s3_settings(tmp_path, moto_url, "fg-no-such-bucket"))
    message = str(info.value)
    assert message.startswith("storage.s3.bucket: ") and "NoSuchBucket" in message
    assert "\n" not in message and FAKE_SECRET not in message
    storage = await build_storage(s3_settings(tmp_path, moto_url, bucket, prefix="fg"))
    try:
        assert s3_admin.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    finally:
        await storage.aclose()
    # probe: false skips the check (e.g. a bucket that may not take writes at start)
    unprobed = await build_storage(s3_settings(tmp_path, moto_url, "fg-no-such-bucket",
                                               probe=False))
    await unprobed.aclose()


def test_serve_stops_with_one_line_on_a_bad_bucket(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path, moto_url: str) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app as cli_app

    env = {"FG_TEST_S3_KEY": FAKE_KEY, "FG_TEST_S3_SECRET": FAKE_SECRET,
           "FLUXGATE_DATA_DIR": str(tmp_path), "FLUXGATE_STORAGE__KIND": "s3",
           "FLUXGATE_STORAGE__S3__BUCKET": "fg-no-such-bucket",
           "FLUXGATE_STORAGE__S3__REGION": REGION,
           "FLUXGATE_STORAGE__S3__ENDPOINT_URL": moto_url,
           "FLUXGATE_STORAGE__S3__ADDRESSING_STYLE": "path",
           "FLUXGATE_STORAGE__S3__ACCESS_KEY_ENV": "FG_TEST_S3_KEY",
           "FLUXGATE_STORAGE__S3__SECRET_KEY_ENV": "FG_TEST_S3_SECRET"}
    result = CliRunner().invoke(cli_app, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 2
    # (the in-process moto server logs its requests here too: leave those out)
    lines = [line for line in result.output.splitlines() if "werkzeug" not in line]
    assert len(lines) == 1 and lines[0].startswith("fluxgate: storage.s3.bucket: ")
    assert "NoSuchBucket" in lines[0] and "Traceback" not in result.output


# end to end ----------------------------------------------------------------------------------

def test_gateway_stores_outputs_in_s3_and_serves_them(
        gateway_factory: Callable[..., Gateway], moto_url: str, bucket: str, s3_admin: Any,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FG_TEST_S3_KEY", FAKE_KEY)
    monkeypatch.setenv("FG_TEST_S3_SECRET", FAKE_SECRET)
    data_dir = tmp_path / "data"
    gw = gateway_factory(data_dir, storage={"kind": "s3", "s3": {
        "bucket": bucket, "prefix": "fg", "region": REGION, "endpoint_url": moto_url,
        "access_key_env": "FG_TEST_S3_KEY", "secret_key_env": "FG_TEST_S3_SECRET",
        "addressing_style": "path"}})
    assert gw.services.files.storage.name == f"s3:{moto_url}/{bucket}/fg"
    key = gw.create_key("s3")[1]
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    result = client.images.generate(model="flux-kontext-pro", prompt="a fox",
                                    response_format="url", size="1024x1024")
    url = result.data[0].url
    assert url and url.startswith(f"{gw.base_url}/files/")  # our URL, never the bucket's
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.content.startswith(b"\x89PNG")

    listed = s3_admin.list_objects_v2(Bucket=bucket, Prefix="fg/output/").get("Contents", [])
    assert len(listed) == 1
    obj = s3_admin.get_object(Bucket=bucket, Key=listed[0]["Key"])
    assert obj["Body"].read() == resp.content and obj["ContentType"] == "image/png"
    assert not (data_dir / "files").exists()  # nothing on local disk

    s3_admin.delete_object(Bucket=bucket, Key=listed[0]["Key"])  # gone from the bucket: 404
    gone = httpx.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "file_not_found"

    again = client.images.generate(model="flux-kontext-pro", prompt="a fox",
                                   response_format="url")
    for item in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3_admin.delete_object(Bucket=bucket, Key=item["Key"])
    s3_admin.delete_bucket(Bucket=bucket)  # the store itself is gone: 503, nothing leaked
    down = httpx.get(again.data[0].url or "")
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "storage_unavailable"
    assert bucket not in down.text

    storage = gw.services.files.storage
    assert isinstance(storage, S3Storage)
    gw.stop()  # close_services closes the S3 client
    assert storage._client is None
