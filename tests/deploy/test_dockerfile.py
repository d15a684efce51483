"""The Docker image's runtime user can write its data directory (deploy/Dockerfile), and the
image serves from a read-only root filesystem (deploy/kubernetes).

No Docker needed: the image's facts (its USER, its FLUXGATE_DATA_DIR, the ownership and mode
its RUN lines give that directory) are read from the Dockerfile, a folder is given the same
ownership and mode, and `fluxgate` runs as the same uid/gid against it, as the container's
CMD would. Needs root (to create a folder owned by another user and to switch to it) and
util-linux's `setpriv`. Where this machine's Python lives in a folder that user cannot read
(pyenv under /root), the process keeps one capability, CAP_DAC_READ_SEARCH: it may read and
search any folder, while every write is still checked as that uid, which is what is tested.

The read-only root: `unshare -m` gives the process a mount namespace of its own, where every
mount but the data and tmp volumes is remounted read-only (`_READ_ONLY_ROOT`), as a pod's
`readOnlyRootFilesystem: true` with two emptyDir volumes. Without mount namespaces (an
unprivileged container) the same test runs without that part.
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


#: Inside a private mount namespace: the data and tmp folders become mounts of their own, then
#: every mount (the root filesystem first of all) is remounted read-only but those two, and
#: the command runs: what `readOnlyRootFilesystem: true` with two writable volumes gives a pod
#: (deploy/kubernetes/deployment.yaml). Device files stay usable on a read-only mount.
_READ_ONLY_ROOT = r"""
set -e
data=$1; tmp=$2; shift 2
mount --bind "$data" "$data"
mount --bind "$tmp" "$tmp"
for target in $(findmnt -rn -o TARGET); do
  case "$target" in "$data"|"$tmp") continue;; esac
  mount -o remount,bind,ro "$target" 2>/dev/null || true
done
exec "$@"
"""


def _mount_namespaces() -> bool:
    if shutil.which("unshare") is None or shutil.which("findmnt") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -o remount,bind,ro / && ! touch /.fluxgate-ro-probe"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def read_only_root(data: Path, tmp: Path, command: list[str]) -> list[str]:
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", _READ_ONLY_ROOT, "sh",
            str(data), str(tmp), *command]


def test_the_image_user_creates_keys_and_serves_images(image_root: Path) -> None:
    """As the container and the pods run it: the image's user and paths, and (where this
    machine has mount namespaces) a read-only root filesystem with writable /data and /tmp
    volumes, HOME and TMPDIR pointing at them. The app's folders are root's and mode
    0555/0444, as an image's layers are."""
    facts = image_facts(DOCKERFILE.read_text())
    data = make_data_dir(image_root, facts)
    tmp = image_root / "tmp"
    tmp.mkdir()
    os.chown(tmp, facts.uid, facts.gid)
    app = app_dir()
    for path in [app, *app.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = {**image_env(data), "HOME": str(data), "TMPDIR": str(tmp),
           "FLUXGATE_LOG_FORMAT": "json"}

    read_only = _mount_namespaces()

    def wrap(command: list[str]) -> list[str]:
        return read_only_root(data, tmp, command) if read_only else command

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(wrap(as_user(facts, *command)), capture_output=True, text=True,
                              timeout=120, cwd="/", env=env)

    # the root really is read-only there, for root's files and for the world-writable /tmp
    outside = None if not read_only else run(sys.executable, "-c", "import sys, tempfile\n"
                  "for p in (sys.argv[1], '/tmp/fluxgate-ro', '/dev/shm/fluxgate-ro'):\n"
                  "    try: open(p, 'w')\n"
                  "    except OSError as e: print(e.errno)\n"
                  "    else: print('written', p)\n"
                  "tempfile.TemporaryFile().close()",
                  str(app / "written-by-the-app"))
    if outside is not None:  # EROFS (30) for each
        assert outside.returncode == 0, outside.stderr
        assert outside.stdout.split() == ["30", "30", "30"], outside.stdout

    created = run(sys.executable, "-m", "gateway.cli", "keys", "create", "--name", "docker",
                  "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    db = data / "fluxgate.db"
    assert json.loads(created.stdout)["database"].startswith(str(db))
    assert db.stat().st_uid == facts.uid

    port = _free_port()
    server = subprocess.Popen(
        wrap(as_user(facts, sys.executable, "-m", "gateway.cli", "serve")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/",
        env={**env, "FLUXGATE_PORT": str(port)})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.2)
        for fmt in ("png", "jpeg"):  # the second is re-encoded by the output pipeline
            answer = httpx.post(f"{base}/v1/images/generations", timeout=60,
                                headers={"authorization": f"Bearer {key}"},
                                json={"model": "flux-kontext-pro", "prompt": "a ship",
                                      "response_format": "url", "output_format": fmt})
            assert answer.status_code == 200, answer.text
            image = httpx.get(answer.json()["data"][0]["url"], timeout=30)
            assert image.status_code == 200
            assert image.content[:3] == (b"\x89PN" if fmt == "png" else b"\xff\xd8\xff")
        stored = [p for p in (data / "files").rglob("*") if p.is_file()]
        assert len(stored) >= 2 and all(p.stat().st_uid == facts.uid for p in stored)
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # JSON only
    assert not [r for r in lines if r["level"] in ("ERROR", "CRITICAL")], output
    assert "Read-only file system" not in output
    assert any(r["logger"] == "gateway.access" and r["status"] == 200 for r in lines)


def test_facts_are_read_from_the_dockerfile() -> None:
    before = "FROM x\nENV FLUXGATE_DATA_DIR=/data\nVOLUME /data\nUSER 65534:65534\n"
    assert image_facts(before).owner == (0, 0)
    after = before.replace("VOLUME", "RUN mkdir -p /data && chown 65534:65534 /data\nVOLUME")
    assert image_facts(after).owner == (65534, 65534)
