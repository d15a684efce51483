"""The slow-job scenarios of issue 9: many jobs in flight against a slow BFL-style upstream,
many streamed chats held open, and an overload.

    .venv/bin/python bench/slowjobs.py                       # the issue's sizes (~5 min)
    .venv/bin/python bench/slowjobs.py --quick               # smaller sizes (~2 min)
    .venv/bin/python bench/slowjobs.py --scenarios jobs --jobs 1000

Every scenario starts its own `fluxgate serve` (embedded default: SQLite, local files) with a
prepaid live key made with `fluxgate keys create` and a `bfl` channel whose base_url is the
loopback mock (bench/upstream_mock.py, BFL wire shapes; `--bfl-delay` seconds Pending, then
Ready with a PNG to download). A probe process GETs `/healthz` every 50 ms throughout.

* **jobs** (a): `--jobs` N (5000) created through the BFL-style route `POST /v1/flux-kontext-pro`
  (answers at once with id + polling_url, so N are in flight as fast as the gateway creates
  them) by `--create-concurrency` clients; channel `max_concurrency` = N. Reports the creation
  rate, the most jobs running at once (from /healthz), that every job succeeded, each charged
  once (from the SQLite database: exactly one reserve and one settle ledger row per job, no
  release; the key's balance = its initial balance + the sum of its ledger rows), every
  upstream result downloaded (the mock's counters), peak RSS, `/healthz` p50/p99/max.
* **chats** (b): `--streams` S (1000) concurrent `POST /v1/chat/completions` with `stream: true`
  through the same slow upstream, so each stream is held ~`--bfl-delay` s. Reports the gaps
  between `: ping` comments against `chat.keepalive` (5 s), error events, streams that ended
  with an image and `[DONE]`, peak RSS, and the client's own event-loop lag (what the client
  adds to the observed gaps).
* **overload** (c): `jobs.max_in_flight` = M (20) and 10 x M concurrent clients for
  `--overload-duration` s, half on the BFL-style route, half on the synchronous
  `POST /v1/images/generations`, against an upstream taking `--overload-delay` s. Asserts only
  2xx and 429/503 with Retry-After (0 x 500, no transport error), no traceback in the gateway's
  log (no crashed job task), every created job ends succeeded and charged once, every
  upstream result downloaded.

Writes bench/results/slowjobs-<time>.md and .json (and slowjobs-latest.*) and prints the
Markdown. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # bench/ is not a package: found through sys.path

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

SCENARIOS = ("jobs", "chats", "overload")
MODEL = "flux-kontext-pro"
BALANCE = "1000000"  # in the billing currency; `keys create --balance`


def arun(coro: Any) -> Any:
    return uvloop.run(coro) if uvloop is not None else asyncio.run(coro)


# --- the /healthz probe (its own process) --------------------------------------------------


def probe_main(url: str, interval: float, out: Path) -> None:
    """GET `url` every `interval` s until SIGTERM; then write the samples to `out` as JSON:
    [[monotonic start, seconds, status or -1, jobs_running or null], ...]."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    samples: list[list[Any]] = []
    with httpx.Client(timeout=30) as client:
        next_at = time.monotonic()
        while not stop:
            started = time.monotonic()
            status, running = -1, None
            try:
                resp = client.get(url)
                status = resp.status_code
                running = resp.json().get("jobs_running")
            except (httpx.HTTPError, ValueError):
                pass
            samples.append([started, time.monotonic() - started, status, running])
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
    out.write_text(json.dumps(samples))


class Probe:
    """The probe process for one scenario."""

    def __init__(self, base_url: str, workdir: Path, name: str, interval: float) -> None:
        self.out = workdir / f"probe-{name}.json"
        self.proc = subprocess.Popen([sys.executable, __file__, "--_probe", base_url + "/healthz",
                                      "--_probe-out", str(self.out),
                                      "--_probe-interval", str(interval)])

    def stop(self) -> list[list[Any]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        samples: list[list[Any]] = json.loads(self.out.read_text())
        return samples


def probe_summary(samples: list[list[Any]], window: tuple[float, float] | None = None
                  ) -> dict[str, Any]:
    chosen = [s for s in samples if window is None or window[0] <= s[0] <= window[1]]
    lat = [s[1] * 1000 for s in chosen]
    running = [s[3] for s in chosen if isinstance(s[3], int)]
    return {"samples": len(chosen), "p50_ms": harness.pct(lat, 0.5),
            "p99_ms": harness.pct(lat, 0.99), "max_ms": max(lat, default=float("nan")),
            "failed": sum(1 for s in chosen if s[2] != 200),
            "max_jobs_running": max(running, default=None)}


# --- fluxgate, the database, the mock ------------------------------------------------------


def bfl_channel(mock_url: str, max_concurrency: int) -> dict[str, Any]:
    return {"name": "bfl-mock", "type": "bfl", "base_url": mock_url,
            "api_key_env": "BENCH_UPSTREAM_KEY", "models": [MODEL],
            "max_concurrency": max_concurrency, "model_concurrency": {MODEL: max_concurrency}}


def ledger_check(db: Path) -> dict[str, Any]:
    """What the SQLite database says about every job and the money (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        statuses = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status"))
        per_job = conn.execute(
            "SELECT j.id, j.status, "
            " sum(l.kind = 'reserve'), sum(l.kind = 'settle'), sum(l.kind = 'release'), "
            " coalesce(sum(l.amount), 0), j.price "
            "FROM jobs j LEFT JOIN ledger l ON l.job_id = j.id GROUP BY j.id").fetchall()
        bad = []
        for job_id, status, reserve, settle, release, net, price in per_job:
            if status == "succeeded":
                good = reserve == 1 and settle == 1 and not release and -net == price
            elif status in ("failed", "canceled"):
                good = reserve == 1 and release == 1 and not settle and net == 0
            else:
                good = False  # not terminal
            if not good:
                bad.append({"job": job_id, "status": status, "reserve": reserve,
                            "settle": settle, "release": release, "net": net, "price": price})
        keys = conn.execute("SELECT id, balance FROM api_keys").fetchall()
        balances = []
        for key_id, balance in keys:
            total, kinds = 0, Counter[str]()
            for kind, amount in conn.execute(
                    "SELECT kind, amount FROM ledger WHERE key_id = ?", (key_id,)):
                total += amount
                kinds[kind] += 1
            balances.append({"key": key_id, "balance": balance, "ledger_sum": total,
                             "kinds": dict(kinds)})
    finally:
        conn.close()
    initial = int(float(BALANCE) * 1_000_000)  # micro-units
    # the balance is either the ledger's sum (a top-up row holds the initial balance) or the
    # initial balance plus it (no such row)
    balance_ok = all(b["balance"] == (b["ledger_sum"] if b["kinds"].get("topup")
                                      else initial + b["ledger_sum"]) for b in balances)
    return {"statuses": statuses, "jobs": len(per_job), "bad_jobs": len(bad),
            "bad_samples": bad[:5], "balances": balances, "balance_ok": balance_ok}


def mock_stats(mock: harness.Server) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(mock.base_url + "/_stats?ids=1", timeout=30).json()
    lost = stats.pop("ready_not_downloaded", [])
    created = stats.pop("created_ids", [])
    stats["ready_not_downloaded"] = len(lost)
    stats["created_ids"] = len(created)
    return stats


def log_problems(log: Path) -> dict[str, Any]:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = text.splitlines()
    errors = [ln for ln in lines if " ERROR " in ln or ln.startswith("ERROR")]
    return {"tracebacks": text.count("Traceback (most recent call last)"),
            "error_lines": len(errors), "error_samples": [ln[:300] for ln in errors[:5]]}


def wait_drained(fg: harness.Fluxgate, mock: harness.Server, expect_downloads: int,
                 timeout: float) -> float:
    """Wait until fluxgate runs no job and the mock saw `expect_downloads` BFL downloads;
    returns the seconds waited (raises TimeoutError past `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            running = httpx.get(fg.server.base_url + "/healthz", timeout=30).json()["jobs_running"]
            done = httpx.get(mock.base_url + "/_stats", timeout=30).json().get(
                "bfl_downloaded", 0)
        except (httpx.HTTPError, ValueError, KeyError):
            running, done = None, 0
        if running == 0 and done >= expect_downloads:
            return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError(f"jobs still running after {timeout:.0f} s")


# --- (a) jobs in flight --------------------------------------------------------------------


async def create_jobs(base_url: str, key: str, n: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    statuses: Counter[str] = Counter()
    ids: list[str] = []
    samples: list[str] = []
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=120), headers={"x-key": key}) as session:

        async def worker() -> None:
            for i in todo:
                try:
                    async with session.post(f"{base_url}/v1/{MODEL}", json={
                            "prompt": f"slow job {i}", "seed": i}) as resp:
                        body = await resp.read()
                        statuses[str(resp.status)] += 1
                        if resp.status == 200:
                            ids.append(json.loads(body)["id"])
                        elif len(samples) < 5:
                            samples.append(f"{resp.status} {body[:200]!r}")
                except Exception as exc:  # counted, reported
                    statuses[type(exc).__name__] += 1
                    if len(samples) < 5:
                        samples.append(repr(exc)[:200])

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        ended = time.monotonic()
    return {"started": started, "ended": ended, "wall_s": ended - started, "ids": ids,
            "statuses": dict(statuses), "error_samples": samples}


def scenario_jobs(args: argparse.Namespace, workdir: Path, mock: harness.Server
                  ) -> dict[str, Any]:
    n = args.jobs
    stats0 = mock_stats(mock)
    fg = harness.start_fluxgate(
        "fluxgate-jobs", workdir, [bfl_channel(mock.base_url, max(n, 24))], balance=BALANCE,
        extra={"jobs": {"max_in_flight": max(10_000, n + 100)}}, fluxgate_bin=args.fluxgate_bin)
    probe = Probe(fg.server.base_url, workdir, "jobs", args.probe_interval)
    try:
        time.sleep(0.5)
        created = arun(create_jobs(fg.server.base_url, fg.key, n, args.create_concurrency))
        try:
            drained: float | None = wait_drained(
                fg, mock, stats0.get("bfl_downloaded", 0) + len(created["ids"]),
                args.bfl_delay + args.drain_timeout)
        except TimeoutError:
            drained = None
        samples = probe.stop()
        rss = harness.vm_hwm_mib(fg.server.pids())
        ledger = ledger_check(fg.sqlite_path)
        stats = mock_stats(mock)
    finally:
        with contextlib.suppress(Exception):
            probe.proc.kill()
        fg.server.stop()
    ok_ids = len(created["ids"])
    succeeded = ledger["statuses"].get("succeeded", 0)
    result = {
        "jobs": n, "created": ok_ids, "create_statuses": created["statuses"],
        "create_error_samples": created["error_samples"],
        "create_wall_s": created["wall_s"], "create_rate": ok_ids / created["wall_s"],
        "drain_s": drained, "succeeded": succeeded, "db_statuses": ledger["statuses"],
        "bad_ledger_jobs": ledger["bad_jobs"], "bad_ledger_samples": ledger["bad_samples"],
        "balance_ok": ledger["balance_ok"], "balances": ledger["balances"],
        "upstream_creates": stats.get("bfl_create", 0) - stats0.get("bfl_create", 0),
        "upstream_polls": stats.get("bfl_poll", 0) - stats0.get("bfl_poll", 0),
        "ready_not_downloaded": stats["ready_not_downloaded"],
        "peak_rss_mib": rss,
        "healthz": probe_summary(samples),
        "healthz_while_creating": probe_summary(samples, (created["started"], created["ended"])),
        "log": log_problems(fg.server.log),
    }
    result["checks"] = {
        "created >= 200/s": result["create_rate"] >= 200,
        "all created": ok_ids == n,
        "all succeeded": succeeded == n,
        "drained": drained is not None,
        "each charged once": ledger["bad_jobs"] == 0 and ledger["balance_ok"],
        "each submitted upstream once": result["upstream_creates"] == ok_ids,
        "no result lost": stats["ready_not_downloaded"] == 0,
        "RSS < 1 GiB": rss < 1024,
        "/healthz p99 < 100 ms": result["healthz"]["p99_ms"] < 100,
        "N in flight at once": (result["healthz"]["max_jobs_running"] or 0) >= n,
        "no traceback": result["log"]["tracebacks"] == 0,
    }
    return result


# --- (b) streamed chats --------------------------------------------------------------------


async def stream_chats(base_url: str, key: str, n: int) -> dict[str, Any]:
    import aiohttp

    streams: list[dict[str, Any]] = []
    lag: list[float] = []
    done = asyncio.Event()

    async def lag_monitor() -> None:
        while not done.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.1)
            lag.append(time.monotonic() - t - 0.1)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=None, sock_read=120), headers={"authorization": f"Bearer {key}"}) as session:

        async def one(i: int) -> None:
            s: dict[str, Any] = {"status": None, "pings": [], "errors": 0, "image": False,
                                 "done": False, "first": None, "end": None, "exc": None}
            streams.append(s)
            started = time.monotonic()
            try:
                async with session.post(f"{base_url}/v1/chat/completions", json={
                        "model": MODEL, "stream": True,
                        "messages": [{"role": "user", "content": f"a slow chat image {i}"}]},
                        ) as resp:
                    s["status"] = resp.status
                    async for raw in resp.content:
                        now = time.monotonic() - started
                        line = raw.decode(errors="replace").strip()
                        if not line:
                            continue
                        if s["first"] is None:
                            s["first"] = now
                        if line.startswith(": ping"):
                            s["pings"].append(now)
                        elif line == "data: [DONE]":
                            s["done"] = True
                        elif line.startswith("data: "):
                            if '"error"' in line[:20]:
                                s["errors"] += 1
                            elif "/files/" in line:
                                s["image"] = True
            except Exception as exc:  # counted, reported
                s["exc"] = repr(exc)[:200]
            s["end"] = time.monotonic() - started

        monitor = asyncio.create_task(lag_monitor())
        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        done.set()
        await monitor
    return {"streams": streams, "wall_s": time.monotonic() - started, "lag": lag}


def scenario_chats(args: argparse.Namespace, workdir: Path, mock: harness.Server
                   ) -> dict[str, Any]:
    n = args.streams
    fg = harness.start_fluxgate(
        "fluxgate-chats", workdir, [bfl_channel(mock.base_url, max(n, 24))], balance=BALANCE,
        extra={"jobs": {"max_in_flight": max(10_000, n + 100)},
               "chat": {"keepalive": args.keepalive}}, fluxgate_bin=args.fluxgate_bin)
    keepalive = args.keepalive
    probe = Probe(fg.server.base_url, workdir, "chats", args.probe_interval)
    try:
        out = arun(stream_chats(fg.server.base_url, fg.key, n))
        samples = probe.stop()
        rss = harness.vm_hwm_mib(fg.server.pids())
        ledger = ledger_check(fg.sqlite_path)
    finally:
        with contextlib.suppress(Exception):
            probe.proc.kill()
        fg.server.stop()
    streams = out["streams"]
    gaps: list[float] = []
    for s in streams:
        marks = [s["first"] or 0.0, *s["pings"]]
        gaps += [b - a for a, b in itertools.pairwise(marks)]
    within = sum(1 for g in gaps if abs(g - keepalive) <= 1.0)
    result = {
        "streams": n, "statuses": dict(Counter(str(s["status"]) for s in streams)),
        "completed": sum(1 for s in streams if s["done"] and s["image"] and not s["errors"]),
        "error_events": sum(s["errors"] for s in streams),
        "streams_with_error": sum(1 for s in streams if s["errors"]),
        "transport_errors": sum(1 for s in streams if s["exc"]),
        "transport_error_samples": [s["exc"] for s in streams if s["exc"]][:5],
        "held_s_p50": harness.pct([s["end"] for s in streams], 0.5),
        "keepalive_s": keepalive, "ping_gaps": len(gaps),
        "ping_gap_p50_s": harness.pct(gaps, 0.5), "ping_gap_p99_s": harness.pct(gaps, 0.99),
        "ping_gap_max_s": max(gaps, default=float("nan")),
        "ping_gaps_within_1s": within / len(gaps) if gaps else float("nan"),
        "client_loop_lag_p99_ms": harness.pct(out["lag"], 0.99) * 1000,
        "client_loop_lag_max_ms": max(out["lag"], default=float("nan")) * 1000,
        "wall_s": out["wall_s"], "peak_rss_mib": rss, "healthz": probe_summary(samples),
        "db_statuses": ledger["statuses"], "bad_ledger_jobs": ledger["bad_jobs"],
        "log": log_problems(fg.server.log),
    }
    result["checks"] = {
        "every stream got its image and [DONE]": result["completed"] == n,
        "no error events": result["error_events"] == 0 and result["transport_errors"] == 0,
        "RSS < 1 GiB": rss < 1024,
        "each charged once": ledger["bad_jobs"] == 0,
        "no traceback": result["log"]["tracebacks"] == 0,
    }
    if args.bfl_delay > keepalive:  # else no stream lasts long enough for a ping
        result["checks"]["pings within 1 s of the interval"] = bool(gaps) and within == len(gaps)
    return result


# --- (c) overload --------------------------------------------------------------------------


async def overload_load(base_url: str, key: str, clients: int, duration: float
                        ) -> dict[str, Any]:
    import aiohttp

    tally: dict[str, Counter[str]] = {"bfl": Counter(), "openai": Counter()}
    no_retry_after: Counter[str] = Counter()
    samples: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    stop_at = time.monotonic() + duration
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=300)) as session:

        async def worker(i: int) -> None:
            family = "bfl" if i % 2 == 0 else "openai"
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                if family == "bfl":
                    url, headers = f"{base_url}/v1/{MODEL}", {"x-key": key}
                    body: dict[str, Any] = {"prompt": f"overload {i}.{n}"}
                else:
                    url, headers = (f"{base_url}/v1/images/generations",
                                    {"authorization": f"Bearer {key}"})
                    body = {"model": MODEL, "prompt": f"overload {i}.{n}",
                            "response_format": "url"}
                try:
                    async with session.post(url, json=body, headers=headers) as resp:
                        payload = await resp.read()
                        status = resp.status
                        retry_after = resp.headers.get("retry-after")
                except Exception as exc:  # counted, reported
                    tally[family][type(exc).__name__] += 1
                    if len(samples) < 5:
                        samples.append(repr(exc)[:200])
                    continue
                tally[family][str(status)] += 1
                if status in (429, 503):
                    if not retry_after:
                        no_retry_after[str(status)] += 1
                    await asyncio.sleep(0.05)  # a refused client retries soon, not at once
                elif status >= 300 and len(samples) < 5:
                    samples.append(f"{family} {status} {payload[:200]!r}")

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return {"statuses": {k: dict(v) for k, v in tally.items()},
            "missing_retry_after": dict(no_retry_after), "samples": samples}


def scenario_overload(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    m = args.overload_max_in_flight
    clients = 10 * m
    mock = harness.start_mock(workdir, bfl_delay=args.overload_delay)
    fg = None
    try:
        fg = harness.start_fluxgate(
            "fluxgate-overload", workdir, [bfl_channel(mock.base_url, max(clients, 24))],
            balance=BALANCE, extra={"jobs": {"max_in_flight": m}},
            fluxgate_bin=args.fluxgate_bin)
        out = arun(overload_load(fg.server.base_url, fg.key, clients, args.overload_duration))
        created = (out["statuses"]["bfl"].get("200", 0)
                   + out["statuses"]["openai"].get("200", 0))
        try:
            drained: float | None = wait_drained(fg, mock, 0, args.drain_timeout)
        except TimeoutError:
            drained = None
        # give the last downloads a moment to be counted against what was created
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = mock_stats(mock)
            if stats["ready_not_downloaded"] == 0:
                break
            time.sleep(0.5)
        rss = harness.vm_hwm_mib(fg.server.pids())
        ledger = ledger_check(fg.sqlite_path)
        stats = mock_stats(mock)
        log = log_problems(fg.server.log)
    finally:
        if fg is not None:
            fg.server.stop()
        mock.stop()
    allowed = {"200", "429", "503"}
    seen = {s for fam in out["statuses"].values() for s in fam}
    result = {
        "max_in_flight": m, "clients": clients, "duration_s": args.overload_duration,
        "statuses": out["statuses"], "missing_retry_after": out["missing_retry_after"],
        "samples": out["samples"], "created_2xx": created, "db_jobs": ledger["jobs"],
        "db_statuses": ledger["statuses"], "bad_ledger_jobs": ledger["bad_jobs"],
        "bad_ledger_samples": ledger["bad_samples"], "balance_ok": ledger["balance_ok"],
        "drain_s": drained, "upstream_creates": stats.get("bfl_create", 0),
        "ready_not_downloaded": stats["ready_not_downloaded"], "peak_rss_mib": rss, "log": log,
    }
    total_5xx = sum(v for fam in out["statuses"].values() for k, v in fam.items()
                    if k.isdigit() and int(k) >= 500 and k != "503")
    result["checks"] = {
        "only 2xx, 429, 503": seen <= allowed,
        "0 x 500 (5xx other than 503)": total_5xx == 0,
        "Retry-After on every 429/503": not out["missing_retry_after"],
        "some refused (it was overloaded)": any(
            fam.get("503", 0) + fam.get("429", 0) for fam in out["statuses"].values()),
        "every created job ended": drained is not None and all(
            s in ("succeeded", "failed", "canceled") for s in ledger["statuses"]),
        "every job succeeded": set(ledger["statuses"]) <= {"succeeded"},
        "each charged once": ledger["bad_jobs"] == 0 and ledger["balance_ok"],
        "no result lost": stats["ready_not_downloaded"] == 0,
        "no traceback (no crashed job task)": log["tracebacks"] == 0,
    }
    return result


# --- report --------------------------------------------------------------------------------


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    f = harness.fmt
    lines = [f"# fluxgate slow-job scenarios ({meta['started']})", "",
             f"Machine: {meta['machine']}", ""]
    if "jobs" in results and "error" not in results["jobs"]:
        r = results["jobs"]
        lines += [f"## (a) {r['jobs']} jobs in flight, BFL-style upstream taking "
                  f"{meta['bfl_delay']:.0f} s", "",
                  "| measure | value | target |", "|---|---|---|",
                  f"| created (2xx) | {r['created']} of {r['jobs']} "
                  f"(statuses {r['create_statuses']}) | all |",
                  f"| creation rate | {f(r['create_rate'], 0)} jobs/s "
                  f"({f(r['create_wall_s'], 1)} s, {meta['create_concurrency']} clients) "
                  "| >= 200/s |",
                  f"| most jobs running at once (/healthz) | "
                  f"{r['healthz']['max_jobs_running']} | {r['jobs']} |",
                  f"| succeeded | {r['succeeded']} (db: {r['db_statuses']}) | all |",
                  f"| ledger: jobs not charged exactly once | {r['bad_ledger_jobs']}; balance = "
                  f"ledger: {'yes' if r['balance_ok'] else '**no**'} | 0; yes |",
                  f"| upstream creates / results not downloaded | {r['upstream_creates']} / "
                  f"{r['ready_not_downloaded']} | {r['created']} / 0 |",
                  f"| upstream polls per job | "
                  f"{f(r['upstream_polls'] / max(r['created'], 1), 1)} | |",
                  f"| peak RSS | {f(r['peak_rss_mib'], 0)} MiB | < 1024 MiB |",
                  f"| /healthz p50 / p99 / max, throughout | {f(r['healthz']['p50_ms'], 1)} / "
                  f"{f(r['healthz']['p99_ms'], 1)} / {f(r['healthz']['max_ms'], 1)} ms "
                  f"({r['healthz']['samples']} samples) | p99 < 100 ms |",
                  f"| /healthz p50 / p99, while creating | "
                  f"{f(r['healthz_while_creating']['p50_ms'], 1)} / "
                  f"{f(r['healthz_while_creating']['p99_ms'], 1)} ms | |",
                  f"| drained after the creates | {f(r['drain_s'], 1)} s | |",
                  f"| gateway log: tracebacks / ERROR lines | {r['log']['tracebacks']} / "
                  f"{r['log']['error_lines']} | 0 |", ""]
    if "chats" in results and "error" not in results["chats"]:
        r = results["chats"]
        lines += [f"## (b) {r['streams']} concurrent streamed chats, held ~"
                  f"{meta['bfl_delay']:.0f} s", "",
                  "| measure | value | target |", "|---|---|---|",
                  f"| HTTP statuses | {r['statuses']} | 200 |",
                  f"| streams with image + [DONE], no error | {r['completed']} of {r['streams']}"
                  " | all |",
                  f"| error events / streams with one / transport errors | {r['error_events']} / "
                  f"{r['streams_with_error']} / {r['transport_errors']} | 0 |",
                  f"| ping gap p50 / p99 / max (keepalive {r['keepalive_s']:.0f} s) | "
                  f"{f(r['ping_gap_p50_s'], 2)} / {f(r['ping_gap_p99_s'], 2)} / "
                  f"{f(r['ping_gap_max_s'], 2)} s ({r['ping_gaps']} gaps) | within 1 s |",
                  f"| ping gaps within 1 s of the interval | "
                  f"{f(r['ping_gaps_within_1s'] * 100, 1)} % | 100 % |",
                  f"| client event-loop lag p99 / max | {f(r['client_loop_lag_p99_ms'], 0)} / "
                  f"{f(r['client_loop_lag_max_ms'], 0)} ms | (the client's share of a gap) |",
                  f"| stream duration p50 | {f(r['held_s_p50'], 1)} s | |",
                  f"| peak RSS | {f(r['peak_rss_mib'], 0)} MiB | < 1024 MiB |",
                  f"| /healthz p50 / p99 | {f(r['healthz']['p50_ms'], 1)} / "
                  f"{f(r['healthz']['p99_ms'], 1)} ms | |",
                  f"| ledger: jobs not charged exactly once | {r['bad_ledger_jobs']} | 0 |",
                  f"| gateway log: tracebacks / ERROR lines | {r['log']['tracebacks']} / "
                  f"{r['log']['error_lines']} | 0 |", ""]
    if "overload" in results and "error" not in results["overload"]:
        r = results["overload"]
        lines += [f"## (c) overload: {r['clients']} concurrent clients, jobs.max_in_flight "
                  f"{r['max_in_flight']}, {r['duration_s']:.0f} s, upstream "
                  f"{meta['overload_delay']:.0f} s", "",
                  "| measure | value | target |", "|---|---|---|",
                  f"| BFL-style route statuses | {r['statuses']['bfl']} | 2xx, 429/503 |",
                  f"| OpenAI images route statuses | {r['statuses']['openai']} | 2xx, 429/503 |",
                  f"| 429/503 without Retry-After | {r['missing_retry_after'] or 0} | 0 |",
                  f"| jobs created / in the database | {r['created_2xx']} / {r['db_jobs']} "
                  f"({r['db_statuses']}) | all succeeded |",
                  f"| ledger: jobs not charged exactly once | {r['bad_ledger_jobs']}; balance = "
                  f"ledger: {'yes' if r['balance_ok'] else '**no**'} | 0; yes |",
                  f"| results not downloaded | {r['ready_not_downloaded']} | 0 |",
                  f"| gateway log: tracebacks / ERROR lines | {r['log']['tracebacks']} / "
                  f"{r['log']['error_lines']} | 0 |",
                  f"| peak RSS | {f(r['peak_rss_mib'], 0)} MiB | |", ""]
    for name, r in results.items():
        if "error" in r:
            lines += [f"## {name}: did not complete", "", f"    {r['error']}", ""]
    lines += ["## Checks", "", "| scenario | check | result |", "|---|---|---|"]
    for name, r in results.items():
        for check, ok in r["checks"].items():
            lines.append(f"| {name} | {check} | {'pass' if ok else '**FAIL**'} |")
    for name, r in results.items():
        samples = (r.get("create_error_samples") or r.get("transport_error_samples")
                   or r.get("samples") or []) + r["log"]["error_samples"]
        if samples:
            lines += ["", f"{name}: samples of what went wrong:", ""]
            lines += [f"    {s}" for s in samples[:8]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Issue 9's slow-job scenarios: jobs in flight against a 30 s upstream, "
                    "streamed chats held open, an overload; Markdown + JSON in bench/results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, from: " + ", ".join(SCENARIOS))
    p.add_argument("--jobs", type=int, default=5000, help="(a) jobs in flight")
    p.add_argument("--create-concurrency", type=int, default=64, help="(a) creating clients")
    p.add_argument("--bfl-delay", type=float, default=30.0,
                   help="(a, b) seconds the upstream keeps a job Pending")
    p.add_argument("--streams", type=int, default=1000, help="(b) concurrent streamed chats")
    p.add_argument("--keepalive", type=float, default=5.0,
                   help="(b) chat.keepalive: seconds between `: ping` comments")
    p.add_argument("--overload-max-in-flight", type=int, default=20,
                   help="(c) jobs.max_in_flight; 10x as many clients")
    p.add_argument("--overload-duration", type=float, default=10.0, help="(c) seconds")
    p.add_argument("--overload-delay", type=float, default=2.0,
                   help="(c) seconds the upstream keeps a job Pending")
    p.add_argument("--drain-timeout", type=float, default=180.0,
                   help="seconds to wait for jobs to end after the upstream delay")
    p.add_argument("--probe-interval", type=float, default=0.05, help="/healthz every ... s")
    p.add_argument("--quick", action="store_true",
                   help="smaller: 1000 jobs, 250 streams, 15 s upstream, 32 creating clients, "
                        "overload 10 x 10 for 5 s (explicit flags still win)")
    p.add_argument("--fluxgate-bin", default=None)
    p.add_argument("--out", default=str(harness.BENCH / "results"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    p.add_argument("--_probe-out", help=argparse.SUPPRESS)
    p.add_argument("--_probe-interval", type=float, default=0.05, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for flag, value in (("--jobs", 1000), ("--streams", 250), ("--bfl-delay", 15.0),
                            ("--create-concurrency", 32), ("--overload-max-in-flight", 10),
                            ("--overload-duration", 5.0)):
            if flag not in given:
                setattr(args, flag.lstrip("-").replace("-", "_"), value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._probe:
        probe_main(args._probe, args._probe_interval, Path(args._probe_out))
        return
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in names:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    harness.raise_nofile()
    machine = harness.machine_line()
    print(f"Machine: {machine}", flush=True)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
            **{k: v for k, v in vars(args).items() if not k.startswith("_")}}
    workdir = Path(tempfile.mkdtemp(prefix="bench-slowjobs-"))
    results: dict[str, Any] = {}
    mock = None
    try:
        if {"jobs", "chats"} & set(names):
            mock = harness.start_mock(workdir, bfl_delay=args.bfl_delay)
        for name in names:
            t0 = time.monotonic()
            print(f"scenario {name}...", flush=True)
            try:
                if name == "jobs":
                    assert mock is not None
                    results[name] = scenario_jobs(args, workdir, mock)
                elif name == "chats":
                    assert mock is not None
                    results[name] = scenario_chats(args, workdir, mock)
                else:
                    results[name] = scenario_overload(args, workdir)
            except Exception as exc:  # the other scenarios still run and report
                results[name] = {"error": repr(exc)[:2000], "checks": {"ran": False},
                                 "log": {"error_samples": []}}
                print(f"scenario {name} raised: {exc!r}", file=sys.stderr)
            failed = [c for c, ok in results[name]["checks"].items() if not ok]
            print(f"scenario {name}: {time.monotonic() - t0:.0f} s, "
                  f"{'all checks pass' if not failed else 'FAILED: ' + '; '.join(failed)}",
                  flush=True)
    finally:
        if mock is not None:
            mock.stop()
        if args.keep:
            print(f"work dir kept: {workdir}")
        harness.cleanup_dir(workdir, args.keep)
    text = markdown(results, meta)
    md, js = harness.write_report(Path(args.out), "slowjobs", text,
                                  {"meta": meta, "results": results})
    print(text)
    print(f"written: {md} and {js}")
    if any(not ok for r in results.values() for ok in r["checks"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
