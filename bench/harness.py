"""Plumbing the benchmarks share: servers in their own processes, /proc readings, fluxgate set-up,
percentiles and the Markdown/JSON report.

Nothing here measures on its own; `pipeline.py` and `slowjobs.py` decide what and when.
Linux only (/proc). Every server listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    """Raise this process's (and so its children's) open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" (field 3) on


def descendants(root: int) -> list[int]:
    """`root` and every process below it (scanning /proc for parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """utime+stime (seconds) of each live pid, plus the cutime+cstime of reaped children."""
    out: dict[int, float] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:  # fields[11..14] = utime stime cutime cstime (stat fields 14..17)
            out[pid] = sum(int(x) for x in fields[11:15]) / CLK_TCK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `cpu_seconds` readings (new pids count in full)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def vm_hwm_mib(pids: Iterable[int]) -> float:
    """The sum of the peak resident sizes (VmHWM) of `pids`, in MiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server in its own process group, its base URL and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so stop() reaches its whole tree), output to `log`."""
    out = log.open("ab")
    return subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def start_printing_port(name: str, argv: list[str], log: Path, timeout: float = 30) -> Server:
    """Start a server that prints `PORT <n>` as its first line (the mock, the relay)."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("ab"),
                            start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(b"PORT ") or not line:
            break
    if not line.startswith(b"PORT "):
        proc.kill()
        raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")
    port = int(line.split()[1])
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    wait_http(server, "/_stats" if name == "mock" else "/", timeout, any_status=True)
    return server


def wait_http(server: Server, path: str, timeout: float, any_status: bool = False,
              headers: dict[str, str] | None = None) -> None:
    """Wait until `path` answers (200, or any status with `any_status`); raise on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log_tail()}")
        try:
            resp = httpx.get(server.base_url + path, timeout=2, headers=headers)
            if any_status or resp.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{server.name} did not answer {path} in {timeout:.0f} s: "
                       f"{server.log_tail()}")


def start_mock(workdir: Path, bfl_delay: float = 30.0) -> Server:
    return start_printing_port("mock", [sys.executable, str(BENCH / "upstream_mock.py"),
                                        "--bfl-delay", str(bfl_delay)], workdir / "mock.log")


# --- fluxgate ------------------------------------------------------------------------------


def fluxgate_argv(fluxgate_bin: str | None) -> list[str]:
    """How to run the `fluxgate` command: `--fluxgate-bin`, the worktree's .venv, or this
    interpreter's `-m gateway.cli`."""
    if fluxgate_bin:
        return [fluxgate_bin]
    local = ROOT / ".venv" / "bin" / "fluxgate"
    if local.exists():
        return [str(local)]
    return [sys.executable, "-m", "gateway.cli"]


@dataclass
class Fluxgate:
    server: Server
    key: str
    data_dir: Path
    config: Path
    database_url: str | None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "fluxgate.db"


def start_fluxgate(name: str, workdir: Path, channels: list[dict[str, Any]], *,
                   database_url: str | None = None, extra: dict[str, Any] | None = None,
                   balance: str = "1000000", fluxgate_bin: str | None = None,
                   env: dict[str, str] | None = None, timeout: float = 90) -> Fluxgate:
    """`fluxgate serve` in its own process with `channels`, a fresh data dir (SQLite there unless
    `database_url`), and a prepaid live key made with `fluxgate keys create`."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    port = free_port()
    config: dict[str, Any] = {"data_dir": str(data_dir), "database_url": database_url,
                              "host": "127.0.0.1", "port": port, "log_level": "WARNING",
                              "channels": channels}
    for section, values in (extra or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    cfg = data_dir / "config.yaml"
    cfg.write_text(json.dumps(config, indent=2))  # JSON is YAML
    argv = fluxgate_argv(fluxgate_bin)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
                **(env or {})}
    log = workdir / f"{name}.log"
    # the key first: `keys create` migrates the empty database
    made = subprocess.run([*argv, "keys", "create", "--name", "bench", "--balance", balance,
                           "--json", "--config", str(cfg)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        raise RuntimeError(f"fluxgate keys create failed: {made.stderr[-2000:]}")
    key: str = json.loads(made.stdout.strip().splitlines()[-1])["key"]
    proc = spawn(name, [*argv, "serve", "--config", str(cfg)], log, env=full_env)
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    wait_http(server, "/healthz", timeout)
    return Fluxgate(server, key, data_dir, cfg, database_url)


def readyz_transactions(base_url: str) -> int | None:
    """`database.transactions` from GET /readyz (commits since start), or None where absent."""
    try:
        body = httpx.get(base_url + "/readyz", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None
    db = body.get("database") if isinstance(body, dict) else None
    value = db.get("transactions") if isinstance(db, dict) else None
    return value if isinstance(value, int) else None


def cleanup_dir(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


# --- reporting -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def write_report(out_dir: Path, stem: str, markdown: str,
                 data: dict[str, Any]) -> tuple[Path, Path]:
    """Write `<stem>-<UTC time>.md` and `.json` (and `<stem>-latest.*`) under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    md, js = out_dir / f"{stem}-{stamp}.md", out_dir / f"{stem}-{stamp}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(data, indent=2, default=str))
    (out_dir / f"{stem}-latest.md").write_text(markdown)
    (out_dir / f"{stem}-latest.json").write_text(json.dumps(data, indent=2, default=str))
    return md, js


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start, Python "
            f"{sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
