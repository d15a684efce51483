"""The README's Quick start, pasted verbatim into a shell (only the port is changed: tests
never take 8000 on a shared machine), against a real `fluxgate serve`."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
FLUXGATE = Path(sys.executable).parent / "fluxgate"


def quick_start_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder shaped like the checkout after `make run`: `.venv/bin/fluxgate` works."""
    if not FLUXGATE.exists():
        pytest.skip("the fluxgate console script is not installed next to this Python")
    folder = tmp_path / "checkout"
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / ".venv" / "bin" / "fluxgate").symlink_to(FLUXGATE)
    return folder


@pytest.fixture
def served(tmp_path: Path, checkout: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(port, environment) of a `fluxgate serve` started as `make run` starts it."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXGATE_")}
    env["HOME"] = str(tmp_path / "home")  # a new user: the per-user data folder, nothing else
    env.pop("XDG_DATA_HOME", None)
    server = subprocess.Popen([str(FLUXGATE), "serve", "--port", str(port)], cwd=checkout,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start within 60 s"
                time.sleep(0.2)
        yield port, env
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_quick_start_pasted_verbatim(served: tuple[int, dict[str, str]], checkout: Path,
                                     ) -> None:
    port, env = served
    first, *_ = quick_start_blocks("bash")
    assert "export FLUXGATE_KEY=" in first
    script = first.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script += '\necho\necho "FLUXGATE_KEY=$FLUXGATE_KEY"\n'
    result = subprocess.run(["bash", "-e", "-c", script], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer_line, key_line = result.stdout.strip().splitlines()[-2:]
    answer = json.loads(answer_line)
    url = answer["data"][0]["url"]
    assert url.startswith(f"http://127.0.0.1:{port}/files/")
    assert httpx.get(url).content[:8] == b"\x89PNG\r\n\x1a\n"
    key = key_line.removeprefix("FLUXGATE_KEY=")
    assert key.startswith("fk_live_")

    [python] = quick_start_blocks("python")
    program = python.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    ran = subprocess.run([sys.executable, "-c", program], cwd=checkout, capture_output=True,
                         text=True, timeout=120, env={**env, "FLUXGATE_KEY": key})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().startswith(f"http://127.0.0.1:{port}/files/")
