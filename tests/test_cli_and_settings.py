"""The `fluxgate` command and the settings loader, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def fluxgate(*args: str, data_dir: Path, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FLUXGATE_DATA_DIR": str(data_dir), **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=120, cwd=ROOT)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = fluxgate("keys", "create", "--name", "alice", "--balance", "2.5", "--json",
                       data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["key"].startswith("fk_live_") and info["id"].startswith("key_")
    listed = json.loads(fluxgate("keys", "list", "--json", data_dir=tmp_path).stdout)
    assert listed[0]["balance"] == 2_500_000 and listed[0]["revoked"] is False
    assert info["key"] not in json.dumps(listed)  # the secret is shown once only
    db = (tmp_path / "fluxgate.db").read_bytes()
    assert info["key"].encode() not in db  # hashed at rest
    assert fluxgate("keys", "revoke", info["id"], data_dir=tmp_path).returncode == 0
    assert json.loads(fluxgate("keys", "list", "--json", data_dir=tmp_path).stdout)[0]["revoked"]
    assert fluxgate("keys", "revoke", "key_nope", data_dir=tmp_path).returncode == 1


def test_db_upgrade(tmp_path: Path) -> None:
    result = fluxgate("db", "upgrade", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fluxgate.db").exists()


def test_bad_config_stops_with_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: not-a-number\n")
    result = fluxgate("serve", "--config", str(bad), data_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0], result.stderr
    bad.write_text("channels:\n  - name: x\n    type: nonsense\n")
    result = fluxgate("serve", "--config", str(bad), data_dir=tmp_path)
    assert result.returncode == 2 and "channels.0.type" in result.stderr


def test_defaults_without_any_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLUXGATE_CONFIG", raising=False)
    monkeypatch.setenv("FLUXGATE_DATA_DIR", str(tmp_path))
    s = load_settings()
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/fluxgate.db"
    assert s.files_dir == tmp_path / "files"
    assert s.redis_url is None and s.channels == []


def test_env_overrides_yaml_with_nesting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 9000\nstorage:\n  url_ttl: 600\njobs:\n  deadline: 100\n")
    monkeypatch.setenv("FLUXGATE_STORAGE__URL_TTL", "1200")
    s = load_settings(cfg)
    assert s.port == 9000 and s.storage.url_ttl == 1200 and s.jobs.deadline == 100
    monkeypatch.setenv("FLUXGATE_JOBS__DEADLINE", "-5")
    with pytest.raises(ConfigError, match=r"jobs\.deadline"):
        load_settings(cfg)


def test_example_config_is_valid() -> None:
    s = load_settings(ROOT / "config.example.yaml")
    assert s.billing.prices["flux-kontext-max"] == 0.08


def test_dependency_direction() -> None:
    """gateway -> {adapters, billing}; adapters and billing never import gateway or each other
    (import-linter contracts in pyproject.toml)."""
    result = subprocess.run([sys.executable, "-c",
                             "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports())"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout and "BROKEN" not in result.stdout


def test_prices_from_config_per_operation_and_group(tmp_path: Path) -> None:
    from gateway.app import price_table

    cfg = tmp_path / "p.yaml"
    cfg.write_text("billing:\n  prices:\n    flux-kontext-pro: {generate: 0.04, edit: 0.05}\n"
                   "    flux-kontext-max: 0.08\n  price_groups: {resale: 1.5}\n")
    table = price_table(load_settings(cfg))
    assert table.quote("flux-kontext-pro", "generate") == 40_000
    assert table.quote("flux-kontext-pro", "edit") == 50_000
    assert table.quote("flux-kontext-max", "edit", group="resale", n=2) == 240_000
    cfg.write_text("billing:\n  prices:\n    flux-kontext-pro: -1\n")
    with pytest.raises(ConfigError, match="prices"):
        load_settings(cfg)
