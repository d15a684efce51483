"""Gateway overhead against a direct upstream call, in the same run.

    .venv/bin/python bench/overhead.py [--requests 200] [--concurrency 16] [--format jpeg]

Starts the real gateway (embedded default: SQLite, local disk, sandbox upstream with zero
latency) on a loopback port and sends OpenAI image requests to it; then renders the same
images by calling the sandbox adapter directly. Prints latency percentiles, throughput, peak
RSS and the ratio gateway/direct. The difference is what the gateway adds: HTTP, auth, the
ledger, the job rows, re-hosting and the signed URL.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import UpstreamRequest
from adapters.sandbox import SandboxAdapter, SandboxOptions
from billing.keys import create_key
from gateway.app import create_app
from gateway.settings import load_settings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float], wall: float) -> None:
    print(f"{name:8s} n={len(latencies):4d}  p50={pct(latencies, .5) * 1000:7.1f} ms  "
          f"p95={pct(latencies, .95) * 1000:7.1f} ms  mean={statistics.mean(latencies) * 1000:7.1f}"
          f" ms  throughput={len(latencies) / wall:6.1f} img/s")


async def run_concurrently(n: int, concurrency: int, one: object) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def task(i: int) -> None:
        async with sem:
            started = time.perf_counter()
            await one(i)  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(n)))
    return latencies, time.perf_counter() - started


async def direct(n: int, concurrency: int, fmt: str) -> tuple[list[float], float]:
    adapter = SandboxAdapter(SandboxOptions(latency=0))

    async def one(i: int) -> None:
        req = UpstreamRequest(model="flux-kontext-pro", prompt=f"bench {i}", seed=i,
                              aspect_ratio="16:9", output_format=fmt)  # type: ignore[arg-type]
        job = await adapter.submit(req)
        while not (job := await adapter.poll(job)).state.terminal:
            await asyncio.sleep(0)

    return await run_concurrently(n, concurrency, one)


async def through_gateway(base_url: str, key: str, n: int, concurrency: int,
                          fmt: str) -> tuple[list[float], float]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as c:
        async def one(i: int) -> None:
            resp = await c.post(f"{base_url}/v1/images/generations",
                                headers={"authorization": f"Bearer {key}"},
                                json={"model": "flux-kontext-pro", "prompt": f"bench {i}",
                                      "seed": i, "aspect_ratio": "16:9", "output_format": fmt,
                                      "response_format": "url"})
            resp.raise_for_status()

        return await run_concurrently(n, concurrency, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--format", default="jpeg", choices=["png", "jpeg", "webp"])
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="fluxgate-bench-"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = load_settings(None, data_dir=data_dir, port=port, sandbox={"latency": 0},
                             jobs={"poll_initial": 0.01, "poll_max": 0.05}, log_level="WARNING")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve([sock])),
                              daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    async def make_key() -> str:
        async with app.state.services.sessions.begin() as session:
            return (await create_key(session, name="bench")).plaintext

    key = asyncio.run_coroutine_threadsafe(make_key(), loop).result()
    base_url = f"http://127.0.0.1:{port}"
    print(f"fluxgate overhead benchmark: {args.requests} images, concurrency "
          f"{args.concurrency}, 16:9 {args.format}, sandbox latency 0")
    asyncio.run(through_gateway(base_url, key, 10, 4, args.format))  # warm-up
    d_lat, d_wall = asyncio.run(direct(args.requests, args.concurrency, args.format))
    g_lat, g_wall = asyncio.run(through_gateway(base_url, key, args.requests, args.concurrency,
                                                args.format))
    report("direct", d_lat, d_wall)
    report("gateway", g_lat, g_wall)
    print(f"ratio gateway/direct: p50 {pct(g_lat, .5) / pct(d_lat, .5):.2f}x, "
          f"throughput {(args.requests / g_wall) / (args.requests / d_wall):.2f}x; "
          f"added p50 {(pct(g_lat, .5) - pct(d_lat, .5)) * 1000:.1f} ms per image")
    print(f"peak RSS (whole process, both runs): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    server.should_exit = True
    thread.join(timeout=10)


if __name__ == "__main__":
    main()
