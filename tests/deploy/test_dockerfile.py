"""The Docker image's runtime user can write its data directory (deploy/Dockerfile).

No Docker needed: the image's facts (its USER, its FLUXGATE_DATA_DIR, the ownership and mode
its RUN lines give that directory) are read from the Dockerfile, a folder is given the same
ownership and mode, and `fluxgate` runs as the same uid/gid against it, as the container's
CMD would. Needs root (to create a folder owned by another user and to switch to it) and
util-linux's `setpriv`. Where this machine's Python lives in a folder that user cannot read
(pyenv under /root), the process keeps one capability, CAP_DAC_READ_SEARCH: it may read and
search any folder, while every write is still checked as that uid, which is what is tested.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="needs root to run as the image's user"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv"),
]
_READ_ANYWHERE = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@dataclass(frozen=True)
class ImageFacts:
    uid: int
    gid: int
    data_dir: str
    owner: tuple[int, int]  # of data_dir in the image
    mode: int


def image_facts(text: str) -> ImageFacts:
    """What the Dockerfile makes of its data directory: without a chown it is root's (what
    `VOLUME` or `mkdir` create), 0755."""
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", text, re.M)
    assert user, "the image must name a numeric USER"
    uid, gid = int(user[-1][0]), int(user[-1][1] or user[-1][0])
    env = re.search(r"^ENV\s.*\bFLUXGATE_DATA_DIR=(\S+)", text, re.M)
    assert env, "the image must set FLUXGATE_DATA_DIR"
    data_dir = env.group(1)
    run = " ".join(re.findall(r"^RUN\s+(.*(?:\\\n.*)*)", text, re.M))
    owner = (0, 0)
    chown = re.search(rf"chown\s+(\d+):(\d+)\s+{re.escape(data_dir)}(\s|$)", run)
    if chown:
        owner = (int(chown.group(1)), int(chown.group(2)))
    mode = 0o755
    chmod = re.search(rf"chmod\s+([0-7]{{3,4}})\s+{re.escape(data_dir)}(\s|$)", run)
    if chmod:
        mode = int(chmod.group(1), 8)
    return ImageFacts(uid, gid, data_dir, owner, mode)


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A folder standing for the image's `/`, traversable by every user."""
    with tempfile.TemporaryDirectory(prefix="fluxgate-image-") as name:
        root = Path(name)
        root.chmod(0o755)
        yield root


def as_user(facts: ImageFacts, *command: str) -> list[str]:
    """`command` run as the image's uid/gid, with no supplementary groups."""
    caps = [] if _interpreter_usable(facts) else _READ_ANYWHERE
    return ["setpriv", f"--reuid={facts.uid}", f"--regid={facts.gid}", "--clear-groups",
            *caps, *command]


@functools.cache
def app_dir() -> Path:
    """The image's /app: the folders the Dockerfile copies, in a place every user can read
    (the checkout may sit in a folder only root can enter, as a `mktemp -d` clone does)."""
    app = Path(tempfile.mkdtemp(prefix="fluxgate-app-"))
    app.chmod(0o755)
    atexit.register(shutil.rmtree, app, True)
    for name in ("gateway", "adapters", "billing", "migrations"):
        shutil.copytree(ROOT / name, app / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [app, *app.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return app


def _interpreter_usable(facts: ImageFacts) -> bool:
    probe = subprocess.run(["setpriv", f"--reuid={facts.uid}", f"--regid={facts.gid}",
                            "--clear-groups", sys.executable, "-c", "import gateway.cli"],
                           capture_output=True, timeout=60, cwd="/",
                           env={"PYTHONPATH": str(app_dir()), "PYTHONDONTWRITEBYTECODE": "1"})
    return probe.returncode == 0


def image_env(data: Path, port: int | None = None) -> dict[str, str]:
    """The image's environment (FLUXGATE_DATA_DIR...), bound to loopback for the test."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(app_dir()),
           "FLUXGATE_DATA_DIR": str(data), "FLUXGATE_HOST": "127.0.0.1"}
    if port is not None:
        env["FLUXGATE_PORT"] = str(port)
    return env


def as_image_user(facts: ImageFacts, data: Path, *args: str, port: int | None = None,
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(facts, sys.executable, "-m", "gateway.cli", *args),
                          capture_output=True, text=True, timeout=120, cwd="/",
                          env=image_env(data, port))


def make_data_dir(root: Path, facts: ImageFacts) -> Path:
    data = root / facts.data_dir.lstrip("/")
    data.mkdir(parents=True)
    os.chown(data, *facts.owner)
    data.chmod(facts.mode)
    return data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_image_user_creates_keys_and_serves_images(image_root: Path) -> None:
    facts = image_facts(DOCKERFILE.read_text())
    data = make_data_dir(image_root, facts)

    created = as_image_user(facts, data, "keys", "create", "--name", "docker", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    db = data / "fluxgate.db"
    assert json.loads(created.stdout)["database"].startswith(str(db))
    assert db.stat().st_uid == facts.uid

    port = _free_port()
    server = subprocess.Popen(as_user(facts, sys.executable, "-m", "gateway.cli", "serve"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd="/", env=image_env(data, port))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.2)
        answer = httpx.post(f"{base}/v1/images/generations", timeout=60,
                            headers={"authorization": f"Bearer {key}"},
                            json={"model": "flux-kontext-pro", "prompt": "a container ship",
                                  "response_format": "url"})
        assert answer.status_code == 200, answer.text
        image = httpx.get(answer.json()["data"][0]["url"], timeout=30)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
        stored = [p for p in (data / "files").rglob("*") if p.is_file()]
        assert stored and all(p.stat().st_uid == facts.uid for p in stored)
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_a_root_owned_data_dir_stops_with_one_line(image_root: Path) -> None:
    """What the image did before /data was given to its user: one line, no traceback."""
    facts = image_facts(DOCKERFILE.read_text())
    root_owned = ImageFacts(facts.uid, facts.gid, facts.data_dir, (0, 0), 0o755)
    data = make_data_dir(image_root, root_owned)
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    for args in (("keys", "create", "--name", "x"), ("serve",)):
        result = as_image_user(root_owned, data, *args, port=_free_port())
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"{data} is not writable by uid {facts.uid}" in lines[0]
        assert "FLUXGATE_DATA_DIR" in lines[0]


def test_facts_are_read_from_the_dockerfile() -> None:
    before = "FROM x\nENV FLUXGATE_DATA_DIR=/data\nVOLUME /data\nUSER 65534:65534\n"
    assert image_facts(before).owner == (0, 0)
    after = before.replace("VOLUME", "RUN mkdir -p /data && chown 65534:65534 /data\nVOLUME")
    assert image_facts(after).owner == (65534, 65534)
