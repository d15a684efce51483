"""Database work per image: what the pipeline costs the database on the happy path.

Counted from `/readyz` (`database.transactions`: every commit the engine ended), around
requests made one at a time, on SQLite and PostgreSQL. A job is at most three write
transactions (created + reserved; accepted upstream with its id; finished: output stored,
settled, outbox), and the request around it adds none on the happy path once the key is
cached."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from tests.conftest import Gateway, jobs_of, png_bytes


def commits(gw: Gateway) -> int:
    answer = httpx.get(f"{gw.base_url}/readyz", timeout=30)
    assert answer.status_code == 200, answer.text
    value: int = answer.json()["database"]["transactions"]
    return value


def _per_image(gw: Gateway, key: str, body: dict[str, Any], rounds: int = 3) -> list[int]:
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gw.base_url, headers=headers, timeout=120) as client:
        warm = client.post("/v1/images/generations", json=body)  # the key is now cached
        assert warm.status_code == 200, warm.text
        counts = []
        for _ in range(rounds):
            before = commits(gw)
            answer = client.post("/v1/images/generations", json=body)
            assert answer.status_code == 200, answer.text
            counts.append(commits(gw) - before)
    return counts


def test_sandbox_image_costs_at_most_three_write_transactions(
        gateway_factory: Any, any_database: str) -> None:
    gw = gateway_factory(database_url=any_database)
    key_id, key = gw.create_key("tx", balance=10_000_000)
    counts = _per_image(gw, key, {"model": "flux-kontext-pro", "prompt": "a fox",
                                  "response_format": "url"})
    assert max(counts) <= 3, counts
    jobs = jobs_of(gw, key_id)
    assert {j.status for j in jobs} == {"succeeded"} and all(j.charged for j in jobs)


def test_queue_upstream_image_costs_at_most_three_write_transactions(
        gateway_factory: Any, any_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A BFL-style upstream (submit, several polls, download): polls cost no transaction."""
    monkeypatch.setenv("T_KEY", "key-t")
    base = "https://api.bfl.test"
    polls: dict[str, int] = {}
    image = png_bytes((1024, 1024))

    def submit(request: httpx.Request) -> httpx.Response:
        job = f"task-{len(polls)}"
        polls[job] = 0
        return httpx.Response(200, json={"id": job,
                                         "polling_url": f"{base}/v1/get_result?id={job}"})

    def poll(request: httpx.Request) -> httpx.Response:
        job = request.url.params["id"]
        polls[job] += 1
        if polls[job] < 4:
            return httpx.Response(200, json={"id": job, "status": "Pending"})
        return httpx.Response(200, json={"id": job, "status": "Ready", "result": {
            "sample": f"https://delivery.bfl.test/{job}.png"}})

    with respx.mock(assert_all_called=False) as mock:
        mock.post(f"{base}/v1/flux-kontext-pro").mock(side_effect=submit)
        mock.get(f"{base}/v1/get_result").mock(side_effect=poll)
        mock.get(url__startswith="https://delivery.bfl.test/").mock(
            return_value=httpx.Response(200, content=image,
                                        headers={"content-type": "image/png"}))
        mock.route(host="127.0.0.1").pass_through()
        gw = gateway_factory(
            database_url=any_database,
            channels=[{"name": "bfl", "type": "bfl", "base_url": base, "api_key_env": "T_KEY",
                       "max_concurrency": 50, "result_hosts": ["delivery.bfl.test"]}],
            jobs={"poll_initial": 0.01, "poll_max": 0.02})
        key_id, key = gw.create_key("tx", balance=10_000_000)
        counts = _per_image(gw, key, {"model": "flux-kontext-pro", "prompt": "a fox",
                                      "response_format": "url"})
    assert max(counts) <= 3, counts
    assert all(n >= 4 for n in polls.values()), polls
    jobs = jobs_of(gw, key_id)
    assert {j.status for j in jobs} == {"succeeded"}, [(j.status, j.error_message) for j in jobs]
