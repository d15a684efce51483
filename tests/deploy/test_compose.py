"""deploy/docker-compose.yml: its fluxgate service's environment is a configuration fluxgate
accepts (JSON logs, a metrics token, PostgreSQL and Redis), it stops within the drain, and it
writes only to /data (the image's data dir) and /tmp, as tests/deploy/test_dockerfile.py runs
the image."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from gateway.serving import DRAIN_SECONDS
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_the_compose_service_is_a_valid_production_shape(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["fluxgate"]
    for name in [n for n in os.environ if n.startswith("FLUXGATE_")]:
        monkeypatch.delenv(name)
    for name, value in service["environment"].items():
        # ${VAR:-default}: what compose gives when VAR is unset
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLUXGATE_DATA_DIR", str(tmp_path))  # the image's /data
    settings = load_settings(None)
    assert settings.log_format == "json"
    assert settings.metrics_token_env == "METRICS_TOKEN"
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://")
    assert settings.redis_url and settings.redis_url.startswith("redis://")
    assert _seconds(service["stop_grace_period"]) > DRAIN_SECONDS + 5
    assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    data_dir = re.search(r"FLUXGATE_DATA_DIR=(\S+)", dockerfile)
    assert data_dir and any(v.split(":")[1] == data_dir.group(1) for v in service["volumes"])
