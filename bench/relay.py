"""A minimal Python relay: the floor for a Python HTTP proxy on this machine.

    python bench/relay.py --upstream http://127.0.0.1:PORT [--port 0]

Prints `PORT <n>` once it listens on 127.0.0.1. Every request is forwarded as it is (method,
path, query, body, content-type and authorization) to `--upstream` over one pooled
`httpx.AsyncClient`, and the answer is returned as it is. A raw ASGI app on uvicorn (uvloop,
httptools): no framework, no auth, no metering, no re-hosting; what any Python gateway costs at
least.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import httpx
import uvicorn

FORWARDED = (b"content-type", b"authorization", b"accept")


def make_app(upstream: str) -> Any:
    client = httpx.AsyncClient(base_url=upstream, timeout=60,
                               limits=httpx.Limits(max_connections=512,
                                                   max_keepalive_connections=512))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        url = scope["path"] + ("?" + scope["query_string"].decode()
                               if scope["query_string"] else "")
        resp = await client.request(scope["method"], url, content=b"".join(chunks),
                                    headers=headers)
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": [(b"content-type",
                                 resp.headers.get("content-type", "").encode())]})
        await send({"type": "http.response.body", "body": resp.content})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(make_app(args.upstream), log_level="warning", access_log=False,
                            loop="uvloop", http="httptools", backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
