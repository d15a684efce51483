"""The storage orphan sweep (gateway/storage/sweep.py) against the real gateway: leftovers of
crashes are removed once older than the grace period, files a job still references (a live
job's above all) never are; `fluxgate storage reconcile` reports and, with --apply, removes.

The leftovers are arranged as a crash leaves them, through the storage and the `files` table
(a blob stored whose row was never committed; a half-written local `.tmp`; an output row of a
job that crashed before its terminal commit and stored another copy on restart), or made by a
real request (the inputs of an order refused for funds). Sweeps whose orphans must be old run
with the clock moved forward (`now=`), which ages everything alike: rows, jobs and objects."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import respx
from sqlalchemy import select, update
from typer.testing import CliRunner

from gateway.cli import app as cli_app
from gateway.jobs.tables import JobRow
from gateway.storage import sweep
from gateway.storage.base import Storage
from gateway.storage.tables import FileRow
from tests.conftest import Gateway, png_bytes
from tests.jobs.test_failover import channels
from tests.jobs.test_leases import SlowBfl, until
from tests.storage.test_s3 import (  # noqa: F401 (module-scoped moto server and a bucket)
    FAKE_KEY,
    FAKE_SECRET,
    REGION,
    bucket,
    moto_url,
    s3_admin,
)

GRACE = 3600.0
LATER = timedelta(seconds=GRACE + 60)  # the clock moved past the grace period


# helpers -------------------------------------------------------------------------------------

def file_rows(gw: Gateway) -> dict[str, FileRow]:
    async def go() -> dict[str, FileRow]:
        async with gw.services.sessions() as s:
            return {r.id: r for r in (await s.execute(select(FileRow))).scalars()}
    result: dict[str, FileRow] = gw.call(go())
    return result


def stored_keys(gw: Gateway) -> set[str]:
    storage: Storage = gw.services.files.storage

    async def go() -> set[str]:
        return {obj.key async for obj in storage.scan()}
    result: set[str] = gw.call(go())
    return result


def find(gw: Gateway, *, later: bool = True) -> sweep.Orphans:
    now = datetime.now(UTC) + (LATER if later else timedelta(0))
    result: sweep.Orphans = gw.call(sweep.find_orphans(
        gw.services.files.storage, gw.services.sessions, grace=GRACE, now=now))
    return result


def sweep_later(gw: Gateway) -> sweep.Orphans:
    result: sweep.Orphans = gw.call(sweep.sweep(
        gw.services.files.storage, gw.services.sessions, grace=GRACE,
        now=datetime.now(UTC) + LATER))
    return result


def new_key(kind: str) -> tuple[str, str]:
    """(file id, storage key) in the form the gateway writes."""
    file_id = f"file_{secrets.token_hex(12)}"
    return file_id, f"{kind}/{datetime.now(UTC):%Y/%m/%d}/{file_id}.png"


def blob_without_row(gw: Gateway, kind: str = "output") -> str:
    """A crash between storing a blob and committing its row: the object alone."""
    _, key = new_key(kind)
    gw.call(gw.services.files.storage.put(key, png_bytes(), "image/png"))
    return key


def row_and_blob(gw: Gateway, kind: str, *, job_id: str | None, key_id: str | None) -> str:
    """A file stored and recorded (blob, then its committed row), as the file store does;
    answers the file id."""
    file_id, key = new_key(kind)
    data = png_bytes()
    gw.call(gw.services.files.storage.put(key, data, "image/png"))

    async def go() -> None:
        async with gw.services.sessions.begin() as s:
            s.add(FileRow(id=file_id, kind=kind, job_id=job_id, key_id=key_id, ext="png",
                          content_type="image/png", size=len(data), width=64, height=64,
                          sha256=hashlib.sha256(data).hexdigest(), storage_key=key,
                          created_at=datetime.now(UTC)))
    gw.call(go())
    return file_id


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def refused_for_funds(gw: Gateway) -> set[str]:
    """A BFL-style order with an input image from a key with no money: 402, and the input's
    bytes, stored before the charge was refused, are left without a row (the row is written
    with the job, which never came to be). Answers their storage keys."""
    key_id, key = gw.create_key("broke", balance=0)
    before = stored_keys(gw)
    resp = httpx.post(f"{gw.base_url}/v1/flux-kontext-pro", headers={"x-key": key}, timeout=30,
                      json={"prompt": "a fox", "input_image": data_url(png_bytes())})
    assert resp.status_code == 402, resp.text
    left = stored_keys(gw) - before
    assert left and all(k.startswith("input/") for k in left)
    assert not [r for r in file_rows(gw).values() if r.key_id == key_id]
    return left


def job_rows(gw: Gateway) -> list[JobRow]:
    async def go() -> list[JobRow]:
        async with gw.services.sessions() as s:
            return list((await s.execute(select(JobRow))).scalars())
    result: list[JobRow] = gw.call(go())
    return result


@pytest.fixture(params=["local", "s3"])
def storage_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                 ) -> dict[str, Any]:
    """The gateway's `storage` settings: local disk, then a moto S3 bucket."""
    if request.param == "local":
        return {"kind": "local"}
    monkeypatch.setenv("FG_TEST_S3_KEY", FAKE_KEY)
    monkeypatch.setenv("FG_TEST_S3_SECRET", FAKE_SECRET)
    name: str = request.getfixturevalue("bucket")
    return {"kind": "s3", "s3": {
        "bucket": name, "prefix": "fg", "region": REGION,
        "endpoint_url": request.getfixturevalue("moto_url"),
        "access_key_env": "FG_TEST_S3_KEY", "secret_key_env": "FG_TEST_S3_SECRET",
        "addressing_style": "path"}}


# the sweep -----------------------------------------------------------------------------------

def test_crash_leftovers_are_removed_after_the_grace_period(
        any_database: str, storage_kind: dict[str, Any],
        gateway_factory: Callable[..., Gateway]) -> None:
    """After a job ran and a few crashes left their debris: nothing is an orphan while young;
    past the grace period exactly the debris is, and the sweep removes it, leaving the job's
    input and result (its URL still serves the image), a files-API upload and objects under
    keys the gateway does not write."""
    gw = gateway_factory(database_url=any_database, storage={**storage_kind, "sweep_interval": 0})
    key_id, key = gw.create_key("owner", balance=1_000_000)
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    done = client.images.edit(model="flux-kontext-pro", image=("in.png", png_bytes()),
                              prompt="a fox", response_format="url")
    result_url = done.data[0].url or ""
    upload = httpx.post(f"{gw.base_url}/replicate/v1/files", timeout=30,
                        headers={"authorization": f"Bearer {key}"},
                        files={"content": ("u.png", png_bytes(), "image/png")})
    assert upload.status_code == 201, upload.text
    (job,) = job_rows(gw)
    kept_rows = set(file_rows(gw))  # the job's input and output, the upload
    assert {r.kind for r in file_rows(gw).values()} == {"input", "output", "upload"}
    kept_objects = stored_keys(gw)
    gw.call(gw.services.files.storage.put("notes/README.txt", b"not ours", "text/plain"))

    rowless = {blob_without_row(gw, "output"), blob_without_row(gw, "input")}
    if storage_kind["kind"] == "local":  # an interrupted atomic write: the temporary file
        half = f"output/{datetime.now(UTC):%Y/%m/%d}/.file_{secrets.token_hex(8)}.png." \
               f"{secrets.token_hex(16)}.tmp"
        (gw.settings.files_dir / half).write_bytes(b"\x89PNG half")
        rowless.add(half)
    stray_output = row_and_blob(gw, "output", job_id=job.id, key_id=key_id)  # before a restart
    stray_input = row_and_blob(gw, "input", job_id=None, key_id=key_id)  # named by no job
    rowless |= refused_for_funds(gw)
    unreferenced = {stray_output, stray_input}

    assert find(gw, later=False).total == 0  # all of it is younger than the grace period
    found = find(gw)
    assert set(found.objects) == rowless and set(found.rows) == unreferenced
    assert found.unknown == 1

    removed = sweep_later(gw)
    assert set(removed.objects) == rowless and set(removed.rows) == unreferenced
    assert set(file_rows(gw)) == kept_rows
    assert stored_keys(gw) == kept_objects | {"notes/README.txt"}
    assert find(gw).total == 0
    image = httpx.get(result_url, timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


@pytest.fixture
def slow_bfl(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowBfl]:
    monkeypatch.setenv("A_KEY", "key-a")
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        yield SlowBfl(mock)


def mask_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    """An RGBA mask whose left half is transparent (edited) and right half opaque (kept)."""
    from PIL import Image

    im = Image.new("RGBA", size, (0, 0, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_live_jobs_files_are_never_removed(
        any_database: str, slow_bfl: SlowBfl, gateway_factory: Callable[..., Gateway]) -> None:
    """An edit with a mask still at the upstream, however old: its input and mask (which the
    gateway reads again to composite the result) and an output it already stored survive the
    sweep, and the job then succeeds. Once it is terminal, the output it does not list goes;
    what it lists and names stays."""
    gw = gateway_factory(database_url=any_database, channels=channels()[:1],
                         jobs={"poll_initial": 0.02, "poll_max": 0.1},
                         storage={"sweep_interval": 0})
    key_id, key = gw.create_key("owner", balance=1_000_000)
    slow_bfl.accept.set()
    answer: dict[str, Any] = {}

    def edit() -> None:
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                               timeout=60)
        answer["result"] = client.images.edit(
            model="flux-kontext-pro", image=("in.png", png_bytes()), mask=mask_bytes(),
            prompt="a fox", response_format="url")

    thread = threading.Thread(target=edit)
    thread.start()
    job = until(lambda: next((j for j in job_rows(gw) if j.upstream_id), None),
                "the edit reached the upstream")
    assert job.status == "running"
    own = set(file_rows(gw))
    assert {r.kind for r in file_rows(gw).values()} == {"input", "mask"}
    pending = row_and_blob(gw, "output", job_id=job.id, key_id=key_id)  # stored, not recorded
    objects = stored_keys(gw)

    assert find(gw).total == 0
    assert sweep_later(gw).total == 0
    assert set(file_rows(gw)) == own | {pending} and stored_keys(gw) == objects

    slow_bfl.ready.set()
    thread.join(60)
    url = answer["result"].data[0].url
    assert httpx.get(url, timeout=30).status_code == 200  # composited from input and mask
    (finished,) = job_rows(gw)
    assert finished.status == "succeeded", finished.error_message
    listed = {o["file_id"] for o in finished.outputs}

    removed = sweep_later(gw)
    assert set(removed.rows) == {pending} and not removed.objects
    assert set(file_rows(gw)) == own | listed
    assert httpx.get(url, timeout=30).status_code == 200


def test_periodic_sweep_runs_in_the_gateway(gateway_factory: Callable[..., Gateway]) -> None:
    """With `storage.sweep_interval` set the gateway sweeps by itself: a blob without a row
    written before the grace period goes, a fresh one stays. The grace is never shorter than
    a job's life (`jobs.deadline` + `jobs.download_timeout`)."""
    gw = gateway_factory(storage={"sweep_interval": 0.2, "sweep_grace": 60},
                         jobs={"deadline": 90, "download_timeout": 10})
    assert sweep.effective_grace(gw.settings) == 100
    old, fresh = blob_without_row(gw), blob_without_row(gw)
    between = blob_without_row(gw)  # older than sweep_grace, younger than the job floor
    files = gw.settings.files_dir
    stamp = time.time() - 2 * 3600
    os.utime(files / old, (stamp, stamp))
    os.utime(files / between, (time.time() - 80,) * 2)
    until(lambda: not (files / old).exists(), "the periodic sweep removed the old blob")
    assert (files / fresh).exists() and (files / between).exists()


def test_sweep_interval_zero_turns_it_off(gateway_factory: Callable[..., Gateway]) -> None:
    on = gateway_factory(storage={"sweep_interval": 3600})
    assert "storage-sweep" in on.call(_tasks())
    off = gateway_factory(on.settings.data_dir.parent / "off", storage={"sweep_interval": 0})
    assert "storage-sweep" not in off.call(_tasks())


async def _tasks() -> list[str]:
    import asyncio

    return [t.get_name() for t in asyncio.all_tasks()]


# fluxgate storage reconcile ------------------------------------------------------------------

def _age(gw: Gateway, file_ids: set[str], keys: set[str], by: timedelta) -> None:
    """Make rows and local objects look `by` older (as if written that long ago)."""
    async def go() -> None:
        async with gw.services.sessions.begin() as s:
            await s.execute(update(FileRow).where(FileRow.id.in_(file_ids))
                            .values(created_at=datetime.now(UTC) - by))
    gw.call(go())
    stamp = time.time() - by.total_seconds()
    for key in keys:
        os.utime(gw.settings.files_dir / key, (stamp, stamp))


def test_reconcile_reports_and_removes_with_apply(
        any_database: str, gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    """`fluxgate storage reconcile` lists the orphans older than the grace period and removes
    nothing; `--apply` removes exactly those; a second look finds none."""
    data_dir = tmp_path / "data"
    gw = gateway_factory(data_dir, database_url=any_database, storage={"sweep_interval": 0})
    refused = refused_for_funds(gw)
    rowless, young = blob_without_row(gw), blob_without_row(gw)
    stray = row_and_blob(gw, "output", job_id="job_gone", key_id=None)  # its job is gone
    _age(gw, {stray}, {rowless, *refused}, timedelta(hours=2))
    stray_key = file_rows(gw)[stray].storage_key
    gw.stop()
    env = {"FLUXGATE_DATA_DIR": str(data_dir), "FLUXGATE_DATABASE_URL": any_database}
    runner = CliRunner()

    report = runner.invoke(cli_app, ["storage", "reconcile"], env=env)
    assert report.exit_code == 0, report.output
    for key in (rowless, *refused):
        assert f"object without a file row: {key}" in report.output
    assert f"file row no job references: {stray} ({stray_key})" in report.output
    assert young not in report.output
    objects = 1 + len(refused)
    assert (f"found {objects} objects without a file row and 1 file rows no job "
            "references, older than 3600 s") in report.output
    assert "--apply" in report.output
    files = data_dir / "files"
    doomed = {rowless, stray_key, *refused}
    assert all((files / k).exists() for k in doomed)

    applied = runner.invoke(cli_app, ["storage", "reconcile", "--apply"], env=env)
    assert applied.exit_code == 0, applied.output
    assert f"removed {objects} objects without a file row and 1 file rows" in applied.output
    assert not any((files / k).exists() for k in doomed)
    assert (files / young).exists()

    again = runner.invoke(cli_app, ["storage", "reconcile"], env=env)
    assert "found 0 objects without a file row and 0 file rows" in again.output
    # a grace shorter than a job's life is raised to it (jobs.deadline + download_timeout)
    longer = runner.invoke(cli_app, ["storage", "reconcile", "--grace", "60"],
                           env={**env, "FLUXGATE_JOBS__DEADLINE": "7200"})
    assert "older than 7230 s" in longer.output, longer.output
