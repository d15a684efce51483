"""The image pipeline benchmark of issue 9: fluxgate against the upstream itself, a minimal Python
relay and the LiteLLM proxy, interleaved and repeated, every ratio computed inside each repeat.

    .venv/bin/python bench/pipeline.py                 # 5 repeats, every arm (~8 min)
    .venv/bin/python bench/pipeline.py --quick         # 1 repeat, short phases (a smoke run)
    .venv/bin/python bench/pipeline.py --arms direct,fluxgate --repeats 3

Arms (each server in its own process on 127.0.0.1, all calling the same loopback mock,
bench/upstream_mock.py, whose POST /v1/images/generations answers at once with a URL):

* **direct**: the mock itself (what the client and the mock cost: the ceiling of this set-up);
* **litellm**: the LiteLLM proxy 1.106.2 in its own virtualenv (bench/.venv-litellm, made on first
  use), one worker, a master key, `drop_params`, the mock as an OpenAI-compatible upstream with
  `model_info.mode: image_generation`, `LITELLM_LOCAL_MODEL_COST_MAP=True`;
* **relay**: bench/relay.py (uvicorn + one pooled httpx client, no framework): the floor for
  Python on this machine;
* **fluxgate**: `fluxgate serve` on the embedded default (SQLite), a prepaid live key made with
  `fluxgate keys create`, metering on, one `openai` channel at the mock asking for URLs, so every
  image is downloaded from the upstream and re-hosted (the answer's URL is fluxgate's own; an
  answer with the upstream's URL counts as an error);
* **fluxgate-pg**: the same on PostgreSQL (`FLUXGATE_TEST_PG_URL`, e.g. from /tmp/svc.env), in a
  database created for this run and dropped after it.

Each repeat runs every arm (in a rotated order) through two closed-loop phases of
`POST /v1/images/generations` (`response_format: url`): concurrency 32 (req/s, p50/p99, errors,
server CPU per request from /proc, database transactions per image from fluxgate's
`/readyz` `database.transactions` read before and after) and concurrency 1 (p50; "added p50" is
the arm's p50 minus the direct arm's p50 of the same repeat). The load comes from
bench/loadgen.py in its own process (aiohttp on uvloop), so its CPU is separate and reported.
Server CPU is the server's process tree; for fluxgate-pg it adds the PostgreSQL backends that
serve the run's database (found by their process titles, sampled every 0.25 s; a backend that
exits between two samples loses at most that much). Shared PostgreSQL processes (WAL writer,
checkpointer) are not counted. Peak RSS is the sum of VmHWM over the server's processes.

Writes bench/results/pipeline-<time>.md and .json (and pipeline-latest.*) and prints the
Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # bench/ is not a package: found through sys.path

ARMS = ("direct", "litellm", "relay", "fluxgate", "fluxgate-pg")
LITELLM_VERSION = "1.106.2"
LITELLM_MASTER_KEY = "sk-bench-master-0123456789"
MODEL = "flux-kontext-pro"
BODY = {"model": MODEL, "prompt": "a lighthouse on a cliff at dusk", "response_format": "url"}


# --- LiteLLM -------------------------------------------------------------------------------


def ensure_litellm(venv: Path) -> Path:
    """The `litellm` command of `venv`, creating the virtualenv with LiteLLM's proxy extra
    pinned to LITELLM_VERSION when it is missing."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"creating {venv} with litellm[proxy]=={LITELLM_VERSION} (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    if not exe.exists():
        raise RuntimeError(f"{exe} missing after the install")
    return exe


def start_litellm(workdir: Path, mock_url: str, exe: Path, timeout: float = 120) -> harness.Server:
    """The LiteLLM proxy, one worker, the mock as an OpenAI-compatible image upstream."""
    port = harness.free_port()
    config = {
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{mock_url}/v1",
                               "api_key": "sk-bench-upstream"},
            "model_info": {"mode": "image_generation"},
        }],
        "litellm_settings": {"drop_params": True, "telemetry": False},
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    cfg = workdir / "litellm.yaml"
    cfg.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = workdir / "litellm.log"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    proc = harness.spawn("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                                     "--port", str(port), "--num_workers", "1"], log, env=env,
                         cwd=workdir)
    server = harness.Server("litellm", proc, f"http://127.0.0.1:{port}", log)
    harness.wait_http(server, "/health/liveliness", timeout)
    return server


# --- PostgreSQL ----------------------------------------------------------------------------


def _pg_dsn(url: str, database: str | None = None) -> str:
    """An asyncpg DSN from a SQLAlchemy URL, optionally for another database."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    path = f"/{database}" if database else parts.path
    return parts._replace(path=path).geturl()


def pg_admin(url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(_pg_dsn(url))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_create(url: str) -> tuple[str, str]:
    """A fresh database on the server of `url`: (its SQLAlchemy URL, its name)."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    pg_admin(url, f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl(), name


def pg_drop(url: str, name: str) -> None:
    try:
        pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # a leftover database is not worth failing the report for
        print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)


def pg_backends(dbname: str) -> list[int]:
    """Pids of PostgreSQL backends connected to `dbname` (their process title is
    `postgres: <user> <database> <host>(<port>) <state>`)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\x00", b" ").split()
        except OSError:
            continue
        if len(title) >= 3 and title[0] == b"postgres:" and title[2] == dbname.encode():
            out.append(int(entry))
    return out


class BackendSampler:
    """CPU seconds of the backends of one database over a window, sampled in a thread."""

    def __init__(self, dbname: str, interval: float = 0.25) -> None:
        self.dbname, self.interval = dbname, interval
        self.base = harness.cpu_seconds(pg_backends(dbname))
        self.last: dict[int, float] = dict(self.base)
        self.peak_rss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        pids = pg_backends(self.dbname)
        self.last.update(harness.cpu_seconds(pids))
        self.peak_rss = max(self.peak_rss, harness.vm_hwm_mib(pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return harness.cpu_delta(self.base, self.last)


# --- arms ----------------------------------------------------------------------------------


@dataclass
class Arm:
    """One thing to load: where to POST, with what, and which processes are its server."""

    name: str
    base_url: str
    path: str
    headers: list[str]
    expect_prefix: str | None
    pids: Callable[[], list[int]]
    pg_db: str | None = None
    fluxgate: bool = False
    background_tx_per_s: float | None = None
    profiled: int | None = None  # pid of a server under bench/profile_serve.py
    notes: list[str] = field(default_factory=list)


def fluxgate_channel(mock_url: str) -> dict[str, Any]:
    return {"name": "mock", "type": "openai", "base_url": mock_url,
            "api_key_env": "BENCH_UPSTREAM_KEY", "options": {"response_format": "url"}}


def loadgen(arm: Arm, concurrency: int, duration: float) -> dict[str, Any]:
    argv = [sys.executable, str(harness.BENCH / "loadgen.py"), "--url", arm.base_url + arm.path,
            "--concurrency", str(concurrency), "--duration", str(duration),
            "--body", json.dumps(BODY)]
    for h in arm.headers:
        argv += ["--header", h]
    if arm.expect_prefix:
        argv += ["--expect-url-prefix", arm.expect_prefix]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 180)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(arm: Arm, concurrency: int, duration: float) -> dict[str, Any]:
    """One closed-loop phase against `arm`, with its server's CPU, RSS and transactions."""
    if arm.profiled and concurrency > 1:
        os.kill(arm.profiled, signal.SIGUSR1)
    tx0 = harness.readyz_transactions(arm.base_url) if arm.fluxgate else None
    pids0 = arm.pids()
    cpu0 = harness.cpu_seconds(pids0)
    sampler = BackendSampler(arm.pg_db) if arm.pg_db else None
    result = loadgen(arm, concurrency, duration)
    cpu1 = harness.cpu_seconds(arm.pids())
    pg_cpu = sampler.stop() if sampler else None
    tx1 = harness.readyz_transactions(arm.base_url) if arm.fluxgate else None
    if arm.profiled and concurrency > 1:
        os.kill(arm.profiled, signal.SIGUSR2)
    ok = max(result["ok"], 1)
    result["server_cpu_s"] = harness.cpu_delta(cpu0, cpu1)
    result["server_cpu_ms_per_req"] = result["server_cpu_s"] / ok * 1000
    result["pg_cpu_ms_per_req"] = pg_cpu / ok * 1000 if pg_cpu is not None else None
    result["total_cpu_ms_per_req"] = result["server_cpu_ms_per_req"] + (
        result["pg_cpu_ms_per_req"] or 0.0)
    result["client_cpu_share"] = result["client_cpu_s"] / result["wall_s"]
    result["peak_rss_mib"] = harness.vm_hwm_mib(arm.pids())
    if sampler:
        result["pg_peak_rss_mib"] = sampler.peak_rss
    if tx0 is not None and tx1 is not None:
        tx = tx1 - tx0
        result["transactions"] = tx
        result["tx_per_image"] = tx / ok
        if arm.background_tx_per_s is not None:
            result["tx_per_image_net"] = max(
                0.0, tx - arm.background_tx_per_s * result["wall_s"]) / ok
    return result


def background_tx_rate(base_url: str, seconds: float = 2.0) -> float | None:
    """Transactions per second fluxgate commits while idle (background loops)."""
    t0 = harness.readyz_transactions(base_url)
    time.sleep(seconds)
    t1 = harness.readyz_transactions(base_url)
    return None if t0 is None or t1 is None else (t1 - t0) / seconds


# --- ratios and the report -----------------------------------------------------------------


def added_p50(rep: dict[str, dict[str, Any]], arm: str) -> float | None:
    if arm not in rep or "direct" not in rep:
        return None
    return float(rep[arm]["c1"]["p50_ms"] - rep["direct"]["c1"]["p50_ms"])


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


#: (name, function of one repeat, target text, predicate on the value)
RATIOS: list[tuple[str, Callable[[dict[str, dict[str, Any]]], float | None], str,
                   Callable[[float], bool]]] = [
    ("fluxgate / litellm req/s at c32",
     lambda r: _div(r.get("fluxgate", {}).get("c32", {}).get("rps"),
                    r.get("litellm", {}).get("c32", {}).get("rps")), ">= 10", lambda v: v >= 10),
    ("fluxgate / litellm added p50 at c1",
     lambda r: _div(added_p50(r, "fluxgate"), added_p50(r, "litellm")), "<= 0.2",
     lambda v: v <= 0.2),
    ("fluxgate / litellm server CPU per request",
     lambda r: _div(r.get("fluxgate", {}).get("c32", {}).get("total_cpu_ms_per_req"),
                    r.get("litellm", {}).get("c32", {}).get("total_cpu_ms_per_req")),
     "<= 0.1", lambda v: v <= 0.1),
    ("fluxgate-pg / fluxgate req/s at c32",
     lambda r: _div(r.get("fluxgate-pg", {}).get("c32", {}).get("rps"),
                    r.get("fluxgate", {}).get("c32", {}).get("rps")), ">= 0.67 (1/1.5)",
     lambda v: v >= 1 / 1.5),
    ("fluxgate-pg / fluxgate CPU per request (incl. PostgreSQL)",
     lambda r: _div(r.get("fluxgate-pg", {}).get("c32", {}).get("total_cpu_ms_per_req"),
                    r.get("fluxgate", {}).get("c32", {}).get("total_cpu_ms_per_req")),
     "<= 1.5", lambda v: v <= 1.5),
    ("fluxgate-pg / fluxgate added p50 at c1",
     lambda r: _div(added_p50(r, "fluxgate-pg"), added_p50(r, "fluxgate")), "<= 1.5",
     lambda v: v <= 1.5),
    ("fluxgate / relay req/s at c32 (information)",
     lambda r: _div(r.get("fluxgate", {}).get("c32", {}).get("rps"),
                    r.get("relay", {}).get("c32", {}).get("rps")), "", lambda v: True),
    ("fluxgate / direct req/s at c32 (information)",
     lambda r: _div(r.get("fluxgate", {}).get("c32", {}).get("rps"),
                    r.get("direct", {}).get("c32", {}).get("rps")), "", lambda v: True),
]


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and v == v]
    return statistics.median(present) if present else None


def summarize(repeats: list[dict[str, dict[str, Any]]], arms: list[str]) -> dict[str, Any]:
    """Per-arm medians over the repeats and every ratio per repeat with its median."""
    per_arm: dict[str, dict[str, Any]] = {}
    for arm in arms:
        reps = [r[arm] for r in repeats if arm in r]
        c32 = [r["c32"] for r in reps]
        c1 = [r["c1"] for r in reps]

        def m(rows: list[dict[str, Any]], key: str) -> float | None:
            return median([row.get(key) for row in rows])

        per_arm[arm] = {
            "rps_c32": m(c32, "rps"), "p50_c32_ms": m(c32, "p50_ms"),
            "p99_c32_ms": m(c32, "p99_ms"),
            "errors": sum(row["errors"] for row in c32 + c1),
            "requests": sum(row["requests"] for row in c32 + c1),
            "p50_c1_ms": m(c1, "p50_ms"),
            "added_p50_c1_ms": median([added_p50(r, arm) for r in repeats if arm in r]),
            "server_cpu_ms_per_req": m(c32, "server_cpu_ms_per_req"),
            "pg_cpu_ms_per_req": m(c32, "pg_cpu_ms_per_req"),
            "total_cpu_ms_per_req": m(c32, "total_cpu_ms_per_req"),
            "peak_rss_mib": max((row["peak_rss_mib"] for row in c32 + c1), default=None),
            "pg_peak_rss_mib": m(c32, "pg_peak_rss_mib"),
            "tx_per_image": m(c32, "tx_per_image"),
            "tx_per_image_net": m(c32, "tx_per_image_net"),
            "tx_per_image_c1": m(c1, "tx_per_image"),
            "tx_per_image_c1_net": m(c1, "tx_per_image_net"),
            "client_cpu_share_c32": m(c32, "client_cpu_share"),
        }
    ratios = []
    for name, fn, target, ok in RATIOS:
        values = [fn(r) for r in repeats]
        if all(v is None for v in values):
            continue
        med = median(values)
        ratios.append({"name": name, "per_repeat": values, "median": med, "target": target,
                       "met": (ok(med) if med is not None and target else None)})
    return {"arms": per_arm, "ratios": ratios}


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    f = harness.fmt
    lines = [f"# fluxgate pipeline benchmark ({meta['started']})", "",
             f"Machine: {meta['machine']}", "",
             f"{meta['repeats']} repeat(s), arms interleaved (rotated order); per arm and repeat "
             f"{meta['duration']:.0f} s closed loop at concurrency {meta['concurrency']}, then "
             f"{meta['c1_duration']:.0f} s at concurrency 1; POST /v1/images/generations "
             "(response_format url; fluxgate downloads and re-hosts every image). Medians over "
             "the repeats; every ratio is computed inside one repeat, then its median taken.",
             "", f"| arm | req/s c{meta['concurrency']} | p50 / p99 c{meta['concurrency']} "
             "(ms) | errors | p50 c1 (ms) | added p50 c1 (ms) | server CPU ms/req | "
             f"peak RSS (MiB) | DB tx/image c{meta['concurrency']} / c1 | "
             f"client CPU c{meta['concurrency']} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in summary["arms"].items():
        cpu = f(s["server_cpu_ms_per_req"], 2)
        if s["pg_cpu_ms_per_req"] is not None:
            cpu += f" + {f(s['pg_cpu_ms_per_req'], 2)} PG = {f(s['total_cpu_ms_per_req'], 2)}"
        rss = f(s["peak_rss_mib"], 0)
        if s["pg_peak_rss_mib"]:
            rss += f" (+{f(s['pg_peak_rss_mib'], 0)} PG)"
        tx = (f"{f(s['tx_per_image'], 2)} / {f(s['tx_per_image_c1'], 2)}"
              f" ({f(s['tx_per_image_net'], 2)} / {f(s['tx_per_image_c1_net'], 2)} net)")
        lines.append(
            f"| {arm} | {f(s['rps_c32'], 1)} | {f(s['p50_c32_ms'], 1)} / {f(s['p99_c32_ms'], 1)}"
            f" | {s['errors']} of {s['requests']} | {f(s['p50_c1_ms'], 2)} | "
            f"{f(s['added_p50_c1_ms'], 2) if arm != 'direct' else '-'} | {cpu} | {rss} | "
            f"{tx if arm.startswith('fluxgate') else '-'} | "
            f"{f((s['client_cpu_share_c32'] or 0) * 100, 0)} % of a core |")
    lines += ["", "| ratio | per repeat | median | target | met |", "|---|---|---|---|---|"]
    for r in summary["ratios"]:
        per = ", ".join(f(v, 3) for v in r["per_repeat"])
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        label = r["name"].replace("at c32", f"at c{meta['concurrency']}")
        lines.append(f"| {label} | {per} | {f(r['median'], 3)} | {r['target']} | {met} |")
    lines += ["", "Notes:",
              "- server CPU: utime+stime of the server's process tree over the c32 phase, per "
              "successful request; fluxgate-pg adds its database's PostgreSQL backends (shared "
              "WAL writer/checkpointer not counted). The mock's CPU is not counted for the "
              "gateway arms (it is the direct arm's server).",
              "- DB tx/image: `/readyz` `database.transactions` after minus before, per successful "
              "image, in the c32 and the c1 phase (SQLite's group commit puts many images in one "
              "transaction under load); 'net' subtracts the idle background rate measured "
              "before the repeats.",
              "- PG peak RSS: the sum of VmHWM over the run's backends; each counts the shared "
              "buffers it touched, so this overstates PostgreSQL's real memory.",
              "- client CPU: the load generator's own CPU over its wall time; the direct arm shows "
              "what this client reaches when the server costs almost nothing."]
    lines += [f"- {n}" for n in meta.get("notes", [])]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def profiled_bin(args: argparse.Namespace, workdir: Path, name: str) -> str | None:
    """With `--profile DIR`: a wrapper that runs `fluxgate serve` under pyinstrument
    (bench/profile_serve.py), sampling the throughput phases only, writing DIR/<arm>-serve.txt
    when the server stops. Profiled figures are slower than unprofiled ones."""
    if not args.profile:
        return args.fluxgate_bin  # type: ignore[no-any-return]
    try:
        import pyinstrument  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"--profile needs pyinstrument: {Path(sys.executable).parent}/pip "
                         "install pyinstrument") from exc
    out = Path(args.profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wrapper = workdir / f"{name}-profiled"
    base = " ".join(harness.fluxgate_argv(args.fluxgate_bin))
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = serve ]; then\n'
        f'  exec {sys.executable} {harness.BENCH / "profile_serve.py"} {out}/{name}-serve.txt'
        ' "$@"\n'
        "fi\n"
        f'exec {base} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def start_arms(names: list[str], workdir: Path, mock: harness.Server, args: argparse.Namespace,
               started: list[harness.Server], cleanups: list[Callable[[], None]]) -> list[Arm]:
    arms: list[Arm] = []
    path = "/v1/images/generations"
    mock_files = mock.base_url + "/files/"
    for name in names:
        if name == "direct":
            arms.append(Arm(name, mock.base_url, path, [], mock_files, mock.pids))
        elif name == "relay":
            relay = harness.start_printing_port(
                "relay", [sys.executable, str(harness.BENCH / "relay.py"), "--upstream",
                          mock.base_url], workdir / "relay.log")
            started.append(relay)
            arms.append(Arm(name, relay.base_url, path, [], mock_files, relay.pids))
        elif name == "litellm":
            exe = ensure_litellm(Path(args.litellm_venv))
            t0 = time.monotonic()
            lite = start_litellm(workdir, mock.base_url, exe)
            print(f"litellm started in {time.monotonic() - t0:.1f} s", flush=True)
            started.append(lite)
            arms.append(Arm(name, lite.base_url, path,
                            [f"authorization: Bearer {LITELLM_MASTER_KEY}"], mock_files,
                            lite.pids))
        elif name in ("fluxgate", "fluxgate-pg"):
            db_url: str | None = None
            db_name: str | None = None
            if name == "fluxgate-pg":
                pg = args.pg_url or os.environ.get("FLUXGATE_TEST_PG_URL")
                if not pg:
                    raise SystemExit("fluxgate-pg needs FLUXGATE_TEST_PG_URL (source "
                                     "/tmp/svc.env) or --pg-url; or leave the arm out")
                db_url, db_name = pg_create(pg)
                cleanups.append(functools.partial(pg_drop, pg, db_name))
            fg = harness.start_fluxgate(name, workdir, [fluxgate_channel(mock.base_url)],
                                        database_url=db_url,
                                        fluxgate_bin=profiled_bin(args, workdir, name),
                                        env={"BENCH_PROFILE_SIGNALS": "1"} if args.profile
                                        else None)
            started.append(fg.server)
            arm = Arm(name, fg.server.base_url, path, [f"authorization: Bearer {fg.key}"],
                      fg.server.base_url + "/", fg.server.pids, pg_db=db_name, fluxgate=True,
                      profiled=fg.server.proc.pid if args.profile else None)
            arms.append(arm)
        else:
            raise SystemExit(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
    return arms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Issue 9's pipeline benchmark: direct, litellm, relay, fluxgate, "
                    "fluxgate-pg; interleaved, repeated; Markdown + JSON in bench/results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from: "
                   + ", ".join(ARMS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32, help="the throughput phase")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of the throughput phase per arm and repeat")
    p.add_argument("--c1-duration", type=float, default=5.0,
                   help="seconds of the concurrency-1 phase per arm and repeat")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load per arm before the first repeat (0: none)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 repeat, concurrency 4, 2 s + 1 s phases, 1 s warm-up "
                        "(explicit flags still win)")
    p.add_argument("--pg-url", default=None, help="default: $FLUXGATE_TEST_PG_URL")
    p.add_argument("--litellm-venv", default=str(harness.BENCH / ".venv-litellm"))
    p.add_argument("--fluxgate-bin", default=None)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="run the fluxgate arms under pyinstrument; text profiles in DIR")
    p.add_argument("--out", default=str(harness.BENCH / "results"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    p.add_argument("--report-only", default=None, metavar="JSON",
                   help="only re-render the report of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for flag, value in (("--repeats", 1), ("--concurrency", 4), ("--duration", 2.0),
                            ("--c1-duration", 1.0), ("--warmup", 1.0)):
            if flag not in given:
                setattr(args, flag.lstrip("-").replace("-", "_"), value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        data = json.loads(Path(args.report_only).read_text())
        old = summarize(data["repeats"], data["meta"]["arms"])
        text = markdown(old, data["meta"])
        md, js = harness.write_report(Path(args.out), "pipeline", text,
                                      {**data, "summary": old})
        print(text)
        print(f"written: {md} and {js}")
        return
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    harness.raise_nofile()
    machine = harness.machine_line()
    print(f"Machine: {machine}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    started: list[harness.Server] = []
    cleanups: list[Callable[[], None]] = []
    meta: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "machine": machine, "repeats": args.repeats,
                            "concurrency": args.concurrency, "duration": args.duration,
                            "c1_duration": args.c1_duration, "arms": names, "notes": []}
    repeats: list[dict[str, dict[str, Any]]] = []
    aborted = ""
    try:
        mock = harness.start_mock(workdir)
        started.append(mock)
        arms = start_arms(names, workdir, mock, args, started, cleanups)
        for arm in arms:
            if args.warmup > 0:
                loadgen(arm, min(8, args.concurrency), args.warmup)
            if arm.fluxgate:
                arm.background_tx_per_s = background_tx_rate(arm.base_url)
        for rep in range(args.repeats):
            shift = rep % len(arms)
            order = arms[shift:] + arms[:shift]
            results: dict[str, dict[str, Any]] = {}
            for arm in order:
                c32 = measure(arm, args.concurrency, args.duration)
                c1 = measure(arm, 1, args.c1_duration)
                results[arm.name] = {"c32": c32, "c1": c1}
                print(f"repeat {rep + 1}/{args.repeats} {arm.name:12s} "
                      f"c{args.concurrency}: {c32['rps']:7.1f} req/s p50 {c32['p50_ms']:7.2f} ms "
                      f"err {c32['errors']}  cpu {c32['total_cpu_ms_per_req']:6.2f} ms/req  "
                      f"c1: p50 {c1['p50_ms']:6.2f} ms"
                      + (f"  tx/img {c32.get('tx_per_image', float('nan')):.2f}"
                         if arm.fluxgate else ""), flush=True)
                for phase in (c32, c1):
                    for sample in phase["error_samples"][:2]:
                        print(f"    error sample: {sample}", flush=True)
            repeats.append(results)
    except Exception as exc:  # report what was measured, and why the rest was not
        aborted = f"ABORTED after {len(repeats)} complete repeat(s): {exc!r}"[:2000]
        meta["notes"].append(aborted)
        print(aborted, file=sys.stderr)
        for server in started:
            if server.proc.poll() is not None:
                meta["notes"].append(f"{server.name} had exited: {server.log_tail(10)}")
    finally:
        for server in reversed(started):
            server.stop()
        for cleanup in cleanups:
            cleanup()
        if args.keep:
            print(f"work dir kept: {workdir}")
        harness.cleanup_dir(workdir, args.keep)
    client = next((a["c32"]["client"] for r in repeats for a in r.values()), "?")
    meta["client"] = client
    meta["notes"].append(f"load generator: bench/loadgen.py ({client}), its own process")
    summary = summarize(repeats, names)
    text = markdown(summary, meta)
    md, js = harness.write_report(Path(args.out), "pipeline", text,
                                  {"meta": meta, "summary": summary, "repeats": repeats})
    print(text)
    print(f"written: {md} and {js}")
    if aborted:
        sys.exit(1)


if __name__ == "__main__":
    main()
