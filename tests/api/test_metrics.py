"""GET /metrics after real jobs: what an operator's Prometheus scrapes (issue 16, first part)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway


def scrape(gw: Gateway, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{gw.base_url}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def generate(gw: Gateway, key: str, prompt: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", timeout=120,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": prompt,
                            "response_format": "url"})


def test_metrics_count_jobs_money_and_requests(gateway: Gateway) -> None:
    _, key = gateway.create_key("m", balance=1_000_000)
    assert generate(gateway, key, "a fox").status_code == 200
    assert generate(gateway, key, "a cat").status_code == 200
    assert generate(gateway, key, "a dog sandbox:fail").status_code == 502
    m = scrape(gateway)
    ok = (("channel", "sandbox"), ("error_code", ""), ("model", "flux-kontext-pro"),
          ("status", "succeeded"))
    assert m[("fluxgate_jobs_finished_total", ok)] == 2
    failed = [v for (name, labels), v in m.items() if name == "fluxgate_jobs_finished_total"
              and ("status", "failed") in labels]
    assert failed == [1]
    charged = m[("fluxgate_money_total", (("kind", "charged"), ("model", "flux-kontext-pro")))]
    released = m[("fluxgate_money_total", (("kind", "released"), ("model", "flux-kontext-pro")))]
    assert charged == pytest.approx(0.08) and released == pytest.approx(0.04)
    route = (("method", "POST"), ("route", "/v1/images/generations"))
    assert m[("fluxgate_http_requests_total", (*route, ("status", "200")))] == 2
    assert m[("fluxgate_http_requests_total", (*route, ("status", "502")))] == 1
    assert m[("fluxgate_upstream_seconds_count", (("channel", "sandbox"),))] == 3
    assert m[("fluxgate_jobs_running", ())] == 0
    assert m[("fluxgate_channel_breaker", (("channel", "sandbox"),))] == 0
    assert m[("fluxgate_db_transactions", (("outcome", "commit"),))] > 0
    # no key ids, job ids or prompts in any label
    labels = " ".join(str(labels) for _, labels in m)
    assert "job_" not in labels and "fox" not in labels and "key_" not in labels


def test_metrics_token(gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRAPE_TOKEN", "s3cret")
    gw = gateway_factory(metrics_token_env="SCRAPE_TOKEN")
    assert httpx.get(f"{gw.base_url}/metrics").status_code == 403
    wrong = httpx.get(f"{gw.base_url}/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert scrape(gw, authorization="Bearer s3cret")[("fluxgate_jobs_running", ())] == 0
