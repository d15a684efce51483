"""A closed-loop HTTP load generator, run as its own process so that it never shares a CPU
accounting or an event loop with the orchestrator.

    python bench/loadgen.py --url URL --concurrency 32 --duration 10 [--header 'k: v']
                            [--body JSON] [--expect-url-prefix P]

`--concurrency` workers each send the POST, wait for the whole answer, and send the next one,
until `--duration` seconds passed (requests still in flight then are finished and counted).
Prints one JSON line: requests, ok, errors (non-2xx, transport errors, or a 2xx whose
`data[0].url` is missing or does not start with `--expect-url-prefix`), statuses, the error
samples, req/s over the window, latency p50/p90/p99/mean (ms) of the successful requests, and
the client's own CPU seconds (so a report can show the client is not the bottleneck).

aiohttp on uvloop when installed (the cheapest Python client there is), else httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

try:  # uvloop when present: what the gateway runs on too
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Tally:
    """What the workers saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.errors = 0
        self.samples: list[str] = []

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])

    def check(self, status: int, body: bytes, prefix: str | None) -> str | None:
        """None when the answer is a success, else why not."""
        if not 200 <= status < 300:
            return f"HTTP {status}: {body[:200]!r}"
        try:
            url = json.loads(body)["data"][0]["url"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"no data[0].url in {body[:200]!r}"
        if prefix and not str(url).startswith(prefix):
            return f"url not re-hosted: {str(url)[:120]}"
        return None


async def run_aiohttp(args: argparse.Namespace, headers: dict[str, str], body: bytes,
                      tally: Tally) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:
        stop_at = 0.0

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    async with session.post(args.url, data=body) as resp:
                        payload = await resp.read()
                        status = resp.status
                except Exception as exc:  # every transport failure is an error to count
                    tally.statuses[type(exc).__name__] += 1
                    tally.fail(repr(exc))
                    continue
                tally.statuses[str(status)] += 1
                why = tally.check(status, payload, args.expect_url_prefix)
                if why:
                    tally.fail(why)
                else:
                    tally.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        stop_at = started + args.duration
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return time.perf_counter() - started


async def run_httpx(args: argparse.Namespace, headers: dict[str, str], body: bytes,
                    tally: Tally) -> float:
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency * 2,
                          max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits, headers=headers) as client:
        stop_at = 0.0

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    resp = await client.post(args.url, content=body)
                except Exception as exc:  # every transport failure is an error to count
                    tally.statuses[type(exc).__name__] += 1
                    tally.fail(repr(exc))
                    continue
                tally.statuses[str(resp.status_code)] += 1
                why = tally.check(resp.status_code, resp.content, args.expect_url_prefix)
                if why:
                    tally.fail(why)
                else:
                    tally.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        stop_at = started + args.duration
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return time.perf_counter() - started


def client_name() -> str:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "httpx"
    return "aiohttp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--header", action="append", default=[], help="'name: value'")
    parser.add_argument("--body", default="{}", help="the JSON body of every POST")
    parser.add_argument("--expect-url-prefix", default=None)
    parser.add_argument("--client", choices=["auto", "aiohttp", "httpx"], default="auto")
    args = parser.parse_args()
    headers = {"content-type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    body = args.body.encode()
    kind = client_name() if args.client == "auto" else args.client
    tally = Tally()
    runner = run_aiohttp if kind == "aiohttp" else run_httpx
    cpu0 = os.times()
    coro = runner(args, headers, body, tally)
    wall = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    cpu1 = os.times()
    lat = tally.latencies
    out: dict[str, Any] = {
        "client": kind, "concurrency": args.concurrency, "wall_s": wall,
        "requests": len(lat) + tally.errors, "ok": len(lat), "errors": tally.errors,
        "statuses": dict(tally.statuses), "error_samples": tally.samples,
        "rps": len(lat) / wall if wall > 0 else float("nan"),
        "p50_ms": pct(lat, 0.5) * 1000, "p90_ms": pct(lat, 0.9) * 1000,
        "p99_ms": pct(lat, 0.99) * 1000,
        "mean_ms": (sum(lat) / len(lat) * 1000) if lat else float("nan"),
        "client_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
