"""The web console driven in a real headless browser (Debian's chromium through Playwright):
sign in, create a key, generate in the playground with an uploaded image and a drawn mask
(the sandbox upstream), find the job in the gallery with its thumbnails, top up, revoke; a
customer sees only its own key's jobs and no operator page; a form posted without its CSRF
token is refused. Screenshots of each page at desktop and phone width are written to
$FLUXGATE_SCREENSHOTS (default tests/artifacts/console/, git-ignored).

One browser serves the module; each test has its own context (its own cookies)."""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageOps
from sqlalchemy import select

from billing.tables import ApiKeyRow
from gateway.jobs.tables import JobRow
from gateway.storage.tables import FileRow
from gateway.webhooks.tables import WebhookDeliveryRow
from tests.conftest import Gateway, ledger_of, start_gateway

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("FLUXGATE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ADMIN = "console-admin-token-0123456789"
SHOTS = Path(os.environ.get("FLUXGATE_SCREENSHOTS")
             or Path(__file__).resolve().parents[1] / "artifacts" / "console")
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 90_000  # a busy 2-core machine: generous, and only ever an upper bound

if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("console") / "data", admin_token=ADMIN)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists()
                                     else shutil.which("chromium"), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Any, gw: Gateway) -> Iterator[Callable[[], Any]]:
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(base_url=gw.base_url, viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def shoot(page: Any, name: str) -> None:
    """Screenshots of the page as it is, at desktop and at phone width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def sign_in(page: Any, token: str) -> None:
    page.goto("/console/login")
    page.get_by_label("Admin token or API key").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console/(keys|usage)$"))


def png(width: int, height: int) -> bytes:
    """A small picture: a warm gradient with a dark disc."""
    im = ImageOps.colorize(Image.linear_gradient("L").resize((width, height)),
                           (230, 120, 40), (60, 40, 140))
    ImageDraw.Draw(im).ellipse((width * 0.6, height * 0.15, width * 0.9, height * 0.6),
                               fill=(20, 20, 30))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def rows(gw: Gateway, model: Any, *where: Any) -> list[Any]:
    async def go() -> list[Any]:
        async with gw.services.sessions() as s:
            return list((await s.execute(select(model).where(*where))).scalars())
    found: list[Any] = gw.call(go())
    return found


def api_job(gw: Gateway, key: str, prompt: str) -> JobRow:
    """A finished sandbox job of `key`, made through the public API."""
    answer = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=120,
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "flux-kontext-pro", "prompt": prompt,
                              "aspect_ratio": "1:1"})
    assert answer.status_code == 200, answer.text
    [job] = [r for r in rows(gw, JobRow, JobRow.prompt == prompt)]
    return job


def test_operator_path_sign_in_create_generate_gallery_top_up_revoke(
        gw: Gateway, new_page: Callable[[], Any]) -> None:
    page = new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the revoke form asks first
    page.goto("/console/login")
    shoot(page, "signin")
    sign_in(page, ADMIN)
    # the admin token is in no URL and in no script-readable cookie
    assert ADMIN not in page.url
    assert ADMIN not in page.evaluate("document.cookie + JSON.stringify(localStorage)")
    cookie = next(c for c in page.context.cookies() if c["name"] == "fluxgate_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # -- create a key: its secret shown once, with a copy button ------------------------
    page.get_by_text("Create a key").click()
    page.get_by_label("Name").fill("alice")
    page.get_by_label("Starting balance (USD)").fill("2")
    page.get_by_label("Requests per minute").fill("600")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("The new key").input_value()
    assert secret.startswith("fk_live_")
    page.get_by_role("button", name="Copy").click()
    sync_api.expect(page.get_by_role("button", name="Copied")).to_be_visible()
    shoot(page, "keys-created")
    alice_id = page.get_by_role("link", name=re.compile(r"^Open key_")).inner_text()[5:]
    assert httpx.get(f"{gw.base_url}/v1/models", timeout=30,
                     headers={"authorization": f"Bearer {secret}"}).status_code == 200
    assert ledger_of(gw, alice_id)[0] == 2_000_000
    page.goto("/console/keys")
    assert secret not in page.content()  # shown once: the list has the display form only

    # -- the playground: an uploaded image, a mask drawn on the canvas, the sandbox ---------
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Prompt").fill("a blue door, painted")
    page.locator("#images").set_input_files([{"name": "door.png", "mimeType": "image/png",
                                              "buffer": png(96, 64)}])
    canvas = page.locator("#mask-canvas")
    sync_api.expect(canvas).to_be_visible()
    page.wait_for_function("document.getElementById('mask-canvas').width === 96")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    assert page.get_by_label("Send the mask").is_checked()
    curl = page.locator("#code-curl").inner_text()
    assert "/v1/images/edits" in curl and "mask=@mask.png" in curl and "$FLUXGATE_API_KEY" in curl
    page.get_by_role("tab", name="Python (openai)").click()
    assert "client.images.edit(" in page.locator("#code-python").inner_text()
    page.get_by_role("button", name="Generate").click()
    result = page.locator("#results img").first
    sync_api.expect(result).to_be_visible()
    page.wait_for_function("document.querySelector('#results img').naturalWidth > 0")
    shoot(page, "playground")
    job_link = page.locator("#results a").first.get_attribute("href")
    assert job_link and job_link.startswith("/console/jobs/job_")
    job_id = job_link.rsplit("/", 1)[1]
    [job] = rows(gw, JobRow, JobRow.id == job_id)
    assert job.status == "succeeded" and job.operation == "edit"
    assert job.spec["mask_file_id"] and len(job.spec["input_file_ids"]) == 1
    assert job.channel and gw.services.router.get(job.channel).kind == "sandbox"
    # the mask is what was drawn: white where the brush went, black elsewhere
    [mask_row] = rows(gw, FileRow, FileRow.id == job.spec["mask_file_id"])
    mask = Image.open(io.BytesIO(gw.call(gw.services.files.blob(mask_row.storage_key))))
    assert mask.size == (96, 64)
    assert mask.convert("L").getpixel((38, 32)) > 200 and mask.convert("L").getpixel((90, 5)) < 50
    # "edit this": the result becomes the next input
    page.get_by_role("button", name="Edit this").first.click()
    sync_api.expect(page.locator("#image-list img")).to_have_count(1)

    # -- the gallery: the job with thumbnails of its input, mask and output ---------------
    page.goto("/console/jobs")
    card = page.locator("li.job", has=page.locator(f'a[href="/console/jobs/{job_id}"]'))
    sync_api.expect(card.locator("img")).to_have_count(3)
    for role in ("input", "mask", "output"):
        sync_api.expect(card.get_by_role("img", name=role)).to_be_visible()
    page.wait_for_function(
        "[...document.querySelectorAll('li.job img')].every(i => i.complete && i.naturalWidth)")
    shoot(page, "jobs")
    thumbs = rows(gw, FileRow, FileRow.kind == "thumb")
    sources = {t.name for t in thumbs}
    output_id = job.outputs[0]["file_id"]
    assert {output_id, job.spec["mask_file_id"], *job.spec["input_file_ids"]} <= sources
    assert all(t.content_type == "image/webp" and max(t.width, t.height) <= 320 for t in thumbs)
    first = page.request.get(f"/console/thumbs/{output_id}")
    assert first.status == 200 and first.headers["content-type"] == "image/webp"
    again = page.request.get(f"/console/thumbs/{output_id}")
    assert again.body() == first.body()
    assert len([t for t in rows(gw, FileRow, FileRow.kind == "thumb")
                if t.name == output_id]) == 1  # made once, then read from storage
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    sync_api.expect(page.get_by_text("No jobs match.")).to_be_visible()

    # -- the job's page: its timeline -------------------------------------------------------
    page.goto(job_link)
    timeline = page.locator("ol.timeline").inner_text()
    for stage in ("created", "reserved", "submitted", "stored"):
        assert stage in timeline
    sync_api.expect(page.locator("#job-status")).to_contain_text("succeeded")
    shoot(page, "job")

    # -- usage: charts, splits, CSV -----------------------------------------------------
    page.goto("/console/usage")
    sync_api.expect(page.get_by_role("img", name="Spend per day (USD)")).to_be_visible()
    sync_api.expect(page.get_by_role("img", name="Jobs per day")).to_be_visible()
    assert "flux-kontext-pro" in page.locator("table", has_text="By model").inner_text()
    sync_api.expect(page.get_by_text("Margin").first).to_be_visible()
    shoot(page, "usage")
    csv = page.request.get("/console/usage.csv")
    assert csv.status == 200 and job_id in csv.text() and "margin" in csv.text().splitlines()[0]

    # -- channels: disable, then enable again -------------------------------------------
    page.goto("/console/channels")
    channel = gw.services.router.channels[0]
    page.get_by_role("button", name=f"Disable {channel.name}").click()
    sync_api.expect(page.get_by_role("button", name=f"Enable {channel.name}")).to_be_visible()
    assert channel.disabled_reason == "disabled by an admin"
    shoot(page, "channels")
    page.get_by_role("button", name=f"Enable {channel.name}").click()
    sync_api.expect(page.get_by_role("button", name=f"Disable {channel.name}")).to_be_visible()
    assert channel.disabled_reason is None

    # -- edit limits, top up with a note, then revoke -------------------------------------
    page.goto(f"/console/keys/{alice_id}")
    page.get_by_text("Edit limits").click()
    page.get_by_label("Requests per minute").fill("120")
    page.get_by_label("Allowed models (comma-separated)").fill("flux-kontext-pro, flux-kontext-max")
    page.get_by_role("button", name="Save").click()
    sync_api.expect(page.get_by_role("status")).to_have_text("Saved.")
    [alice] = rows(gw, ApiKeyRow, ApiKeyRow.id == alice_id)
    assert alice.rpm == 120 and alice.models == ["flux-kontext-pro", "flux-kontext-max"]
    assert not alice.unlimited and not alice.disabled
    page.get_by_label("Amount (USD)", exact=True).fill("3.5")
    page.get_by_label("Note").fill("welcome credit")
    page.get_by_role("button", name="Top up").click()
    sync_api.expect(page.get_by_role("status")).to_have_text("Topped up.")
    sync_api.expect(page.locator("#balance")).to_have_text("5.50 USD")
    sync_api.expect(page.get_by_role("cell", name="welcome credit")).to_be_visible()
    balance, total, entries = ledger_of(gw, alice_id)
    assert balance == total == 5_500_000 and entries[-1] == ("topup", 3_500_000)
    shoot(page, "key")
    page.get_by_role("button", name="Revoke key").click()
    sync_api.expect(page.locator("#status")).to_contain_text("revoked")
    assert httpx.get(f"{gw.base_url}/v1/models", timeout=30,
                     headers={"authorization": f"Bearer {secret}"}).status_code == 401


def test_a_customer_sees_its_own_key_only(gw: Gateway, new_page: Callable[[], Any]) -> None:
    bob_id, bob = gw.create_key("bob", balance=5_000_000)
    carol_id, carol = gw.create_key("carol", balance=5_000_000)
    bob_job = api_job(gw, bob, "bob's lighthouse")
    carol_job = api_job(gw, carol, "carol's secret garden")
    page = new_page()
    sign_in(page, bob)
    assert page.url.endswith("/console/usage")
    assert bob not in page.url
    shoot(page, "customer-usage")
    page.get_by_role("link", name="Jobs").click()
    sync_api.expect(page.get_by_text("bob's lighthouse")).to_be_visible()
    assert "carol" not in page.content()
    shoot(page, "customer-jobs")
    carol_output = carol_job.outputs[0]["file_id"]
    for path in (f"/console/jobs/{carol_job.id}", f"/console/thumbs/{carol_output}",
                 f"/console/files/{carol_output}", "/console/keys", f"/console/keys/{carol_id}",
                 "/console/channels", f"/console/usage?key_id={carol_id}",
                 f"/console/jobs?key_id={carol_id}", f"/console/usage.csv?key_id={carol_id}"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 403, path
        assert "carol's secret garden" not in page.content()
    assert page.goto(f"/console/jobs/{bob_job.id}").status == 200
    assert page.goto(f"/console/usage?key_id={bob_id}").status == 200
    # an operator action with a valid session and CSRF token is still refused
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = page.request.post(f"/console/keys/{carol_id}/revoke", form={"csrf": csrf})
    assert refused.status == 403
    assert rows(gw, JobRow, JobRow.key_id == carol_id)[0].status == "succeeded"
    assert ledger_of(gw, carol_id)[0] > 0
    # the customer's CSV has no upstream cost or margin
    header = page.request.get("/console/usage.csv").text().splitlines()[0]
    assert "margin" not in header and "upstream_cost" not in header


def test_a_form_posted_without_its_csrf_token_is_refused(
        gw: Gateway, new_page: Callable[[], Any]) -> None:
    victim_id, victim = gw.create_key("victim", balance=1_000_000)
    page = new_page()
    sign_in(page, ADMIN)
    for form in ({}, {"csrf": "forged"}):
        refused = page.request.post(f"/console/keys/{victim_id}/revoke", form=form)
        assert refused.status == 403 and "CSRF" in refused.text()
    refused = page.request.post(f"/console/keys/{victim_id}/topup", form={"amount": "100"})
    assert refused.status == 403
    assert ledger_of(gw, victim_id)[0] == 1_000_000
    assert httpx.get(f"{gw.base_url}/v1/models", timeout=30,
                     headers={"authorization": f"Bearer {victim}"}).status_code == 200
    # a page of another site posting the same form: the SameSite cookie is not sent
    other = page.context.new_page()
    other.goto("about:blank")
    other.set_content(f'<form method="post" action="{gw.base_url}/console/keys/{victim_id}/'
                      f'revoke"><button>go</button></form>')
    with other.expect_navigation():
        other.get_by_role("button", name="go").click()
    sync_api.expect(other.get_by_role("heading", name="Please sign in to the console.")
                    ).to_be_visible()
    # sign-in itself needs the sign-in form's token
    fresh = new_page()
    answer = fresh.request.post("/console/login", form={"token": ADMIN})
    assert answer.status == 403
    assert not [c for c in fresh.context.cookies() if c["name"] == "fluxgate_console"]
    [victim_row] = rows(gw, ApiKeyRow, ApiKeyRow.id == victim_id)
    assert victim_row.revoked_at is None and victim_row.balance == 1_000_000


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that answers `status` (class attribute) and counts deliveries."""

    status = 410
    received: list[bytes] = []  # noqa: RUF012 - shared on purpose: one receiver per test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).received.append(body)
        self.send_response(type(self).status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def test_the_operator_cancels_a_job_and_replays_its_webhook(
        gw: Gateway, new_page: Callable[[], Any]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key_id, key = gw.create_key("dave", balance=3_000_000)
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        answer = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=60,
                            headers={"authorization": f"Bearer {key}",
                                     "prefer": "respond-async"},
                            json={"model": "flux-kontext-pro", "prompt": "sandbox:stuck tower",
                                  "webhook_url": hook})
        assert answer.status_code == 202, answer.text
        [job] = rows(gw, JobRow, JobRow.key_id == key_id)
        assert ledger_of(gw, key_id)[0] < 3_000_000  # its price is held
        page = new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        sign_in(page, ADMIN)
        page.goto(f"/console/jobs/{job.id}")
        page.get_by_role("button", name="Cancel job").click()
        sync_api.expect(page.locator("#job-status")).to_contain_text("canceled")
        assert ledger_of(gw, key_id)[0] == 3_000_000  # released: nothing charged
        # the receiver answers 410: the delivery is disabled, and shown so
        wait_until(lambda: [d for d in rows(gw, WebhookDeliveryRow,
                                            WebhookDeliveryRow.job_id == job.id)
                            if d.status == "disabled"], "the webhook disabled by a 410")
        page.reload()
        sync_api.expect(page.get_by_text("disabled after 1 attempt")).to_be_visible()
        _Receiver.status = 200
        page.get_by_role("button", name="Replay webhook").click()
        sync_api.expect(page.get_by_role("status")).to_have_text("Webhook queued again.")
        wait_until(lambda: [d for d in rows(gw, WebhookDeliveryRow,
                                            WebhookDeliveryRow.job_id == job.id)
                            if d.status == "delivered"], "the replayed webhook delivered")
        assert len(_Receiver.received) == 2 and job.id.encode() in _Receiver.received[-1]
        page.reload()
        sync_api.expect(page.get_by_text("delivered after 1 attempt")).to_be_visible()
        sync_api.expect(page.get_by_role("button", name="Replay webhook")).to_have_count(0)
        # dark mode follows the system setting
        page.emulate_media(color_scheme="dark")
        dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
        shoot(page, "job-dark")
        page.emulate_media(color_scheme="light")
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert dark == "rgb(18, 20, 23)" and light == "rgb(247, 247, 248)"
    finally:
        server.shutdown()
        server.server_close()


def test_the_gallery_pages_with_more_jobs(gw: Gateway, new_page: Callable[[], Any]) -> None:
    key_id, key = gw.create_key("erin")
    for i in range(2):  # 8 jobs: more than a page of 6
        answer = httpx.post(f"{gw.base_url}/v1/images/generations", timeout=120,
                            headers={"authorization": f"Bearer {key}"},
                            json={"model": "flux-kontext-pro", "prompt": f"erin {i}", "n": 4,
                                  "size": "1024x1024", "response_format": "url"})
        assert answer.status_code == 200, answer.text
    page = new_page()
    sign_in(page, ADMIN)
    page.goto(f"/console/jobs?key_id={key_id}&per=6")
    cards = page.locator("li.job")
    sync_api.expect(cards).to_have_count(6)
    page.get_by_role("link", name="More jobs").click()  # htmx appends the next page
    sync_api.expect(cards).to_have_count(8)
    assert page.url.endswith(f"key_id={key_id}&per=6")  # same page, extended
    sync_api.expect(page.get_by_role("link", name="More jobs")).to_have_count(0)
    assert len(set(cards.evaluate_all("cs => cs.map(c => c.querySelector('a').href)"))) == 8
