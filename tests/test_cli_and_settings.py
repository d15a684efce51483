"""The `fluxgate` command and the settings loader, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# First run: one database for the CLI and the server, one-line errors ---------------------------
def _clean_env(home: Path) -> dict[str, str]:
    """The environment of a new user: no FLUXGATE_* variables, HOME at `home`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLUXGATE_") and k != "XDG_DATA_HOME"}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_key_made_in_one_folder_works_with_a_server_started_in_another(tmp_path: Path,
                                                                         ) -> None:
    import time

    import httpx

    home, here, there = tmp_path / "home", tmp_path / "here", tmp_path / "there"
    for folder in (home, here, there):
        folder.mkdir()
    env = _clean_env(home)
    made = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--name", "me"],
                          capture_output=True, text=True, env=env, cwd=here, timeout=120)
    assert made.returncode == 0, made.stderr
    expected_db = home / ".local" / "share" / "fluxgate" / "fluxgate.db"
    assert f"database: {expected_db} (data dir from the default for this user)" in made.stdout
    key = made.stdout.split()[0]
    assert key.startswith("fk_live_") and not (here / "data").exists()
    bare = subprocess.run([sys.executable, "-m", "gateway.cli"], capture_output=True, text=True,
                          env=env, cwd=there, timeout=120)
    assert bare.returncode == 0 and f"database: {expected_db}" in bare.stdout

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=there)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2,
                                   headers={"authorization": f"Bearer {key}"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start within 60 s"
                time.sleep(0.2)
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"database: {expected_db}" in output


def test_a_relative_data_dir_in_a_config_file_is_relative_to_that_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLUXGATE_DATA_DIR", raising=False)
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "fluxgate.yaml"
    cfg.write_text("data_dir: state\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings("etc/fluxgate.yaml")
    assert s.data_dir == tmp_path / "etc" / "state"
    assert s.data_dir_origin == "the config file etc/fluxgate.yaml"
    monkeypatch.setenv("FLUXGATE_DATA_DIR", "elsewhere")  # the environment wins, from cwd
    s = load_settings(cfg)
    assert s.data_dir == tmp_path / "elsewhere" and s.data_dir_origin == "FLUXGATE_DATA_DIR"


def test_version(tmp_path: Path) -> None:
    from gateway import __version__

    result = fluxgate("--version", data_dir=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"fluxgate {__version__}"


@pytest.mark.parametrize(("args", "config", "expected"), [
    (["keys", "create", "--name", "a", "--balance", "abc"], None,
     "Invalid value for '--balance': 'abc' is not an amount"),
    (["keys", "create", "--name", "a", "--balance", "-5"], None,
     "Invalid value for '--balance': -5 must be at least 0"),
    (["keys", "topup", "key_x", "ten"], None, "'ten' is not an amount"),
    (["keys", "topup", "key_x", "0"], None, "0 must be above 0"),
    (["serve", "--port", "99999"], None, "Invalid value for '--port'"),
    (["serve"], "channels:\n  - {name: eu, type: bfl, options: {pollinterval: 2}}\n",
     "fluxgate: channels.eu.options.pollinterval: Extra inputs are not permitted"),
    (["serve"], "channels:\n  - {name: gpu, type: local_worker, options: {worker: x}}\n",
     "fluxgate: channels.gpu.options.worker: Extra inputs are not permitted"),
])
def test_mistakes_end_in_one_line_not_a_traceback(tmp_path: Path, args: list[str],
                                                  config: str | None, expected: str) -> None:
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        args = [*args, "--config", str(tmp_path / "c.yaml")]
    result = fluxgate(*args, data_dir=tmp_path / "data", env={"COLUMNS": "200"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and expected in result.stderr, result.stderr
    if config is not None:  # our own messages: exactly one line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for args in (["keys", "list"], ["serve"]):
        result = fluxgate(*args, data_dir=tmp_path / "a-file" / "data")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"data directory {tmp_path / 'a-file' / 'data'} is not writable" in lines[0]


def test_a_setting_names_where_its_bad_value_came_from(tmp_path: Path) -> None:
    result = fluxgate("keys", "list", data_dir=tmp_path, env={"FLUXGATE_PORT": "99999"})
    assert result.returncode == 2
    assert "invalid configuration in environment variable FLUXGATE_PORT: port" in result.stderr


def test_keys_list_keeps_ids_whole_and_labels_money(tmp_path: Path) -> None:
    made = json.loads(fluxgate("keys", "create", "--name", "a-rather-long-key-name",
                               "--balance", "2.5", "--json", data_dir=tmp_path).stdout)
    narrow = fluxgate("keys", "list", data_dir=tmp_path, env={"COLUMNS": "60"})
    assert narrow.returncode == 0, narrow.stderr
    assert made["id"] in narrow.stdout  # not cut to "key_1a2b…" in a narrow terminal
    assert "balance 2.5 USD" in narrow.stdout
    wide = fluxgate("keys", "list", data_dir=tmp_path, env={"COLUMNS": "200"})
    assert made["id"] in wide.stdout and "balance (USD)" in wide.stdout
    [row] = json.loads(fluxgate("keys", "list", "--json", data_dir=tmp_path).stdout)
    assert row["balance"] == 2_500_000 and row["money_unit"] == "micro-USD (1 USD = 1000000)"
    topped = fluxgate("keys", "topup", made["id"], "1.25", data_dir=tmp_path)
    assert topped.returncode == 0 and "by 1.25 USD: balance 3.75 USD" in topped.stdout


def test_usage_of_an_unknown_key_is_an_error(tmp_path: Path) -> None:
    result = fluxgate("usage", "--key", "key_nope", data_dir=tmp_path)
    assert result.returncode == 1 and "No API key with id 'key_nope'" in result.stderr


def test_topup_of_an_unlimited_key_is_refused_and_explained(tmp_path: Path) -> None:
    made = json.loads(fluxgate("keys", "create", "--name", "u", "--json",
                               data_dir=tmp_path).stdout)
    result = fluxgate("keys", "topup", made["id"], "5", data_dir=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "is an unlimited key: it has no balance to top up" in result.stderr
    [row] = json.loads(fluxgate("keys", "list", "--json", data_dir=tmp_path).stdout)
    assert row["balance"] is None


def test_start_up_names_unusable_channels_and_why(
        monkeypatch: pytest.MonkeyPatch, gateway_factory: Any) -> None:
    from gateway.app import startup_report

    for var in ("BFL_API_KEY", "FAL_KEY", "REPLICATE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    example = load_settings(ROOT / "config.example.yaml")
    gw = gateway_factory(channels=[c.model_dump() for c in example.channels])
    lines = startup_report(gw.services)
    bfl = next(line for line in lines if line.startswith("upstream bfl "))
    assert "UNUSABLE: no credential: environment variable BFL_API_KEY is not set" in bfl
    assert any(line.startswith("no upstream is usable") for line in lines), lines


@pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0,
                    reason="needs make")
def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    """`make run` on a fresh machine installs fluxgate without the dev tools; `make test`
    adds them (dry runs: `make -n` prints the commands it would run)."""
    venv = str(tmp_path / "venv")
    run = subprocess.run(["make", "-n", "run", f"VENV={venv}"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    installs = [line for line in run.stdout.splitlines() if "pip install" in line]
    assert any(line.endswith("-e .") for line in installs), installs
    assert not any("[dev]" in line for line in installs), installs
    test = subprocess.run(["make", "-n", "test", f"VENV={venv}"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert any("'.[dev]'" in line for line in test.stdout.splitlines()), test.stdout
