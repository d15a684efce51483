"""Gateway overhead against a direct upstream call, in the same run.

    .venv/bin/python bench/overhead.py [--requests 200] [--concurrency 8] [--format jpeg]

Starts the real gateway in its own process (embedded default: SQLite, local disk, sandbox
upstream with zero latency) on a loopback port and sends OpenAI image requests to it; then
renders the same images by calling the sandbox adapter directly, in this process. Prints
RSS and the ratio gateway/direct. The difference is what the gateway adds: HTTP, auth, the
ledger, the job rows, re-hosting and the signed URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.base import UpstreamRequest
from adapters.sandbox import SandboxAdapter, SandboxOptions


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


def start_gateway(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The real gateway in its own process (as deployed), on the embedded default."""
    env = {**os.environ, "FLUXGATE_DATA_DIR": str(data_dir), "FLUXGATE_PORT": str(port),
           "FLUXGATE_LOG_LEVEL": "WARNING", "FLUXGATE_SANDBOX__LATENCY": "0",
           "FLUXGATE_JOBS__POLL_INITIAL": "0.005", "FLUXGATE_JOBS__POLL_MAX": "0.05",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the gateway did not start")


def make_key(data_dir: Path) -> str:
    env = {**os.environ, "FLUXGATE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--name",
                          "bench", "--json"], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    key: str = json.loads(out)["key"]
    return key


def rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--format", default="jpeg", choices=["png", "jpeg", "webp"])
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="fluxgate-bench-"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = start_gateway(data_dir, port)
    try:
        key = make_key(data_dir)
        base_url = f"http://127.0.0.1:{port}"
        print(f"fluxgate overhead benchmark: {args.requests} images, concurrency "
              f"{args.concurrency}, 16:9 {args.format}, sandbox latency 0, gateway in its own "
              "process (SQLite, local disk)")
        asyncio.run(through_gateway(base_url, key, 10, 4, args.format))  # warm-up
        d_lat, d_wall = asyncio.run(direct(args.requests, args.concurrency, args.format))
        g_lat, g_wall = asyncio.run(through_gateway(base_url, key, args.requests,
                                                    args.concurrency, args.format))
        report("direct", d_lat, d_wall)
        report("gateway", g_lat, g_wall)
        print(f"ratio gateway/direct: p50 {pct(g_lat, .5) / pct(d_lat, .5):.2f}x, "
              f"throughput {(args.requests / g_wall) / (args.requests / d_wall):.2f}x; "
              f"added p50 {(pct(g_lat, .5) - pct(d_lat, .5)) * 1000:.1f} ms per image")
        print(f"peak RSS: gateway process {rss_mib(proc.pid):.0f} MiB; bench process (direct "
              f"renderer + client) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
              " MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
