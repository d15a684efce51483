"""The Prometheus alert rules (deploy/prometheus/alerts.yaml) and the Grafana dashboard
(deploy/grafana/fluxgate.json): every expression parses as PromQL (promql-parser, the Rust
port of Prometheus' own parser) and every metric it reads is one that the gateway's /metrics
really exposes (read from a running gateway's `# TYPE` lines, so a renamed metric fails
here). The alerts cover what loses money; the dashboard shows every metric family of issue
16."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "fluxgate.json"
#: series that Prometheus itself makes, not /metrics
PROMETHEUS_OWN = {"up"}
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "untyped": ("",)}
#: Grafana's variables, as a query would see them
_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$channel": ".*"}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name the gateway's /metrics exposes, from its `# TYPE` lines (a labelled
    counter nobody incremented yet has no sample, but has its TYPE line)."""
    from tests.conftest import start_gateway

    gw: Gateway = start_gateway(tmp_path_factory.mktemp("metrics") / "data")
    try:
        text = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    finally:
        gw.stop()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads; raises ValueError when it does not parse."""
    for variable, value in _VARIABLES.items():
        expr = expr.replace(variable, value)
    found: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def expression_problems(exprs: dict[str, str], exposed: set[str]) -> list[str]:
    problems = []
    for where, expr in exprs.items():
        try:
            names = metric_names(expr)
        except ValueError as exc:
            problems.append(f"{where}: does not parse: {exc}")
            continue
        if not names:
            problems.append(f"{where}: reads no metric")
        unknown = names - exposed - PROMETHEUS_OWN
        if unknown:
            problems.append(f"{where}: /metrics exposes no {sorted(unknown)}")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dash["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(metric, label): the metric must exist
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert match, query
            exprs[f"variable {variable['name']}"] = match.group(1)
    return exprs


def test_every_alert_parses_and_reads_exposed_metrics(exposed: set[str]) -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])
    assert expression_problems({r["alert"]: r["expr"] for r in rules}, exposed) == []


def test_the_alerts_cover_what_loses_money() -> None:
    read = {r["alert"]: metric_names(r["expr"]) for r in alert_rules()}
    for metric in ("fluxgate_settle_failures_total", "fluxgate_jobs_stuck",
                   "fluxgate_webhook_backlog", "fluxgate_channel_enabled"):
        assert any(metric in names for names in read.values()), metric


def test_the_dashboard_parses_and_shows_every_metric_family(exposed: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["schemaVersion"] >= 36
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    exprs = dashboard_exprs()
    assert expression_problems(exprs, exposed) == []
    shown = set().union(*(metric_names(e) for e in exprs.values()))
    for family in ("fluxgate_http_requests_total", "fluxgate_jobs_finished_total",
                   "fluxgate_job_stage_seconds_bucket", "fluxgate_upstream_errors_total",
                   "fluxgate_channel_breaker", "fluxgate_channel_active",
                   "fluxgate_money_total", "fluxgate_webhook_deliveries_total",
                   "fluxgate_webhook_backlog", "fluxgate_db_query_seconds_bucket",
                   "fluxgate_redis_seconds_bucket", "fluxgate_event_loop_lag_seconds_bucket",
                   "fluxgate_settle_failures_total", "fluxgate_jobs_stuck"):
        assert family in shown, family


def test_a_wrong_expression_is_caught(exposed: set[str]) -> None:
    problems = expression_problems({
        "renamed": "sum(rate(fluxgate_settle_failure_total[5m])) > 0",
        "broken": "sum(rate(fluxgate_settle_failures_total[5m]) > 0",
        "constant": "1 > 0"}, exposed)
    assert [p.split(":")[0] for p in problems] == ["renamed", "broken", "constant"]
