"""A graceful stop with requests open (issue 17 item 3): every open synchronous request gets a
JSON answer that tells SDKs not to retry and names its job, open chat streams end with an
error event and `[DONE]`, and the jobs are finished by another replica, each charged once.

Two real replicas share one database and one BFL upstream (respx, BFL's wire format; see
tests/jobs/test_leases.py)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, ledger_of
from tests.jobs.test_leases import QUICK, SlowBfl, job, replica, until, upstream  # noqa: F401

PRICE = 40_000


def test_stop_answers_open_requests_and_streams_and_charges_once(
        upstream: SlowBfl, gateway_factory: Callable[..., Gateway],  # noqa: F811
        tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a = replica(gateway_factory, tmp_path, "a", db, **QUICK, lease=2.0, adopt_interval=0.2)
    key_id, key = a.create_key(balance=1_000_000)
    upstream.accept.set()  # submits are accepted; the tasks stay Pending until `ready`
    answers: dict[str, Any] = {}

    def sync_call() -> None:
        client = openai.OpenAI(base_url=f"{a.base_url}/v1", api_key=key, max_retries=3,
                               timeout=120)
        try:
            client.images.generate(model="flux-kontext-pro", prompt="a fox")
        except openai.APIStatusError as exc:
            answers["sdk"] = exc
        answers["sdk_attempts"] = upstream.submits

    def raw_call() -> None:
        answers["raw"] = httpx.post(
            f"{a.base_url}/v1/images/generations", timeout=120,
            headers={"authorization": f"Bearer {key}", "idempotency-key": "stop-1"},
            json={"model": "flux-kontext-pro", "prompt": "a cat", "response_format": "url"})

    def stream_call() -> None:
        with httpx.stream("POST", f"{a.base_url}/v1/chat/completions", timeout=120,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "flux-kontext-pro", "stream": True,
                                "messages": [{"role": "user", "content": "a dog"}]}) as r:
            answers["stream"] = [line for line in r.iter_lines() if line.startswith("data:")]

    threads = [threading.Thread(target=f) for f in (sync_call, raw_call, stream_call)]
    for t in threads:
        t.start()
    until(lambda: upstream.submits >= 3 and len(_jobs_with_upstream(a, key_id)) >= 3,
          "the three jobs are at the upstream")
    a.stop()  # a graceful stop while all three wait
    for t in threads:
        t.join(60)

    # the SDK got a non-retryable answer and did not send the request again
    sdk = answers["sdk"]
    assert sdk.status_code == 503 and sdk.response.headers["x-should-retry"] == "false"
    assert sdk.body["code"] == "interrupted" and "job_" in sdk.body["message"]
    assert upstream.submits == 3
    raw = answers["raw"]
    assert raw.status_code == 503 and raw.headers["x-should-retry"] == "false"
    job_id = raw.headers["x-fluxgate-job-id"]
    assert job_id in raw.json()["error"]["message"]
    events = answers["stream"]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][len("data:"):])["error"]["code"] == "interrupted"

    # another replica adopts the released jobs and finishes them: each charged once
    b = replica(gateway_factory, tmp_path, "b", db, **QUICK)
    upstream.ready.set()
    until(lambda: all(j.status == "succeeded" for j in _jobs(b, key_id)) and
          len(_jobs(b, key_id)) == 3, "B finished the three jobs")
    balance, total, rows = ledger_of(b, key_id)
    assert Counter(kind for kind, _ in rows) == {"topup": 1, "reserve": 3, "settle": 3}
    assert balance == total == 1_000_000 - 3 * PRICE
    assert upstream.submits == 3  # nothing was sent twice

    # a retry with the same Idempotency-Key replays the answer: no new job
    again = httpx.post(f"{b.base_url}/v1/images/generations", timeout=60,
                       headers={"authorization": f"Bearer {key}", "idempotency-key": "stop-1"},
                       json={"model": "flux-kontext-pro", "prompt": "a cat",
                             "response_format": "url"})
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(_jobs(b, key_id)) == 3


def _jobs(gw: Gateway, key_id: str) -> list[Any]:
    from tests.conftest import jobs_of

    return jobs_of(gw, key_id)


def _jobs_with_upstream(gw: Gateway, key_id: str) -> list[Any]:
    return [j for j in _jobs(gw, key_id) if j.upstream_id]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/models"])
def test_requests_arriving_during_a_stop_get_503_with_retry_after(
        gateway: Gateway, api_key: str, path: str) -> None:
    gateway.services.jobs.drain()  # what GatewayServer does when a stop begins
    headers = {"authorization": f"Bearer {api_key}"}
    answer = (httpx.post(f"{gateway.base_url}{path}", headers=headers, timeout=30,
                         json={"model": "flux-kontext-pro", "prompt": "a fox"})
              if "images" in path else httpx.get(f"{gateway.base_url}{path}", headers=headers))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["error"]["code"] == "shutting_down"
    assert httpx.get(f"{gateway.base_url}/healthz").status_code == 200  # liveness answers
    assert httpx.get(f"{gateway.base_url}/readyz").status_code == 503  # readiness does not
