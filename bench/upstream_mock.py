"""A fast loopback mock of the image upstreams the benchmarks call (pure asyncio, no framework).

    python bench/upstream_mock.py [--port 0] [--bfl-delay 30]

Prints `PORT <n>` on stdout once it listens on 127.0.0.1, then serves HTTP/1.1 with keep-alive:

* `POST /v1/images/generations` (OpenAI-compatible, synchronous): answers at once
  `{"created", "data": [{"url": <base>/files/<n>.png}]}` (or `b64_json` when the request asks
  `response_format: b64_json`); the URL serves a small PNG.
* `POST /v1/flux-kontext-pro|max|dev` (BFL): `{"id", "polling_url", "cost"}`; `GET polling_url`
  (`/v1/get_result?id=`) answers `{"status": "Pending"}` until `--bfl-delay` seconds passed since
  the create, then `{"status": "Ready", "result": {"sample": <base>/files/<id>.png}}` (wire
  shapes of shared/reference/upstreams.md §1.2-1.3). An unknown id answers 404 "Task not found".
* `GET /files/<name>.png`: the PNG (counted per BFL job: a result that is Ready but never
  downloaded is a result the gateway lost).
* `GET /_stats`: the counters as JSON; `GET /_stats?ids=1` adds the BFL ids that reached Ready
  without a download, and those created.

Only what the benchmarks need: Content-Length or chunked bodies, no TLS, no auth checks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
import uuid
from collections import Counter
from urllib.parse import parse_qs, urlsplit


def small_png() -> bytes:
    """A 64x64 RGB PNG (a few hundred bytes): Pillow if present, else a solid zlib-made PNG."""
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 120, 40)).save(buf, "PNG")
        return buf.getvalue()
    except ImportError:  # pragma: no cover - the benchmarks run in the project's venv
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        raw = b"".join(b"\x00" + b"\xc8\x78\x28" * 64 for _ in range(64))
        header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Mock:
    """The mock's state: counters, BFL jobs (id -> created monotonic time) and downloads."""

    def __init__(self, bfl_delay: float) -> None:
        self.bfl_delay = bfl_delay
        self.png = small_png()
        self.base = ""
        self.counts: Counter[str] = Counter()
        self.bfl_jobs: dict[str, float] = {}
        self.ready_ids: set[str] = set()
        self.downloaded: set[str] = set()

    def route(self, method: str, target: str, body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        url = urlsplit(target)
        path = url.path
        if method == "POST" and path.endswith("/images/generations"):
            self.counts["generations"] += 1
            try:
                fmt = json.loads(body or b"{}").get("response_format")
            except ValueError:
                fmt = None
            n = self.counts["generations"]
            item = ({"b64_json": base64.b64encode(self.png).decode()} if fmt == "b64_json"
                    else {"url": f"{self.base}/files/g{n}.png"})
            return 200, "application/json", json.dumps(
                {"created": int(time.time()), "data": [item]}).encode()
        if method == "POST" and path.startswith("/v1/flux-kontext-"):
            self.counts["bfl_create"] += 1
            job_id = uuid.uuid4().hex
            self.bfl_jobs[job_id] = time.monotonic()
            return 200, "application/json", json.dumps(
                {"id": job_id, "polling_url": f"{self.base}/v1/get_result?id={job_id}",
                 "cost": 4.0, "input_mp": None, "output_mp": None}).encode()
        if method == "GET" and path == "/v1/get_result":
            self.counts["bfl_poll"] += 1
            job_id = parse_qs(url.query).get("id", [""])[0]
            created = self.bfl_jobs.get(job_id)
            if created is None:
                return 404, "application/json", json.dumps(
                    {"id": job_id, "status": "Task not found"}).encode()
            if time.monotonic() - created < self.bfl_delay:
                progress = min(0.99, (time.monotonic() - created) / max(self.bfl_delay, 1e-9))
                return 200, "application/json", json.dumps(
                    {"id": job_id, "status": "Pending", "result": None,
                     "progress": round(progress, 2)}).encode()
            self.ready_ids.add(job_id)
            return 200, "application/json", json.dumps(
                {"id": job_id, "status": "Ready", "progress": 1.0,
                 "result": {"sample": f"{self.base}/files/{job_id}.png"}}).encode()
        if method == "GET" and path.startswith("/files/"):
            self.counts["files"] += 1
            name = path.rsplit("/", 1)[-1].removesuffix(".png")
            if name in self.bfl_jobs:
                self.downloaded.add(name)
            return 200, "image/png", self.png
        if method == "GET" and path == "/_stats":
            stats: dict[str, object] = {**self.counts, "bfl_jobs": len(self.bfl_jobs),
                                        "bfl_ready": len(self.ready_ids),
                                        "bfl_downloaded": len(self.downloaded)}
            if parse_qs(url.query).get("ids"):
                stats["ready_not_downloaded"] = sorted(self.ready_ids - self.downloaded)
                stats["created_ids"] = sorted(self.bfl_jobs)
            return 200, "application/json", json.dumps(stats).encode()
        return 404, "application/json", b'{"error": {"message": "not found"}}'

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until the client closes it."""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while (size := int((await reader.readline()).split(b";")[0], 16)):
                        parts.append(await reader.readexactly(size))
                        await reader.readline()
                    await reader.readline()
                    body = b"".join(parts)
                status, ctype, payload = self.route(method, target, body)
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
                    f"content-type: {ctype}\r\ncontent-length: {len(payload)}\r\n"
                    f"connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + payload)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()


async def serve(port: int, bfl_delay: float) -> None:
    mock = Mock(bfl_delay)
    server = await asyncio.start_server(mock.handle, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    mock.base = f"http://127.0.0.1:{bound}"
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bfl-delay", type=float, default=30.0,
                        help="seconds a BFL job stays Pending")
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(args.port, args.bfl_delay))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
