"""Worker test harness: tiny random-weight pipelines built offline in a subprocess, and
`fluxgate worker` started as a real process on the CPU.

The worker extra (torch, diffusers, transformers) is needed: without it these tests skip and
say so (CI installs it: see the Makefile's `install-dev`). The test process itself never
imports torch; the models are built by `python -m tests.worker.tiny_models`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = [m for m in ("torch", "diffusers", "transformers")
           if importlib.util.find_spec(m) is None]
if MISSING and os.environ.get("FLUXGATE_REQUIRE_WORKER_TESTS"):
    raise RuntimeError(f"FLUXGATE_REQUIRE_WORKER_TESTS is set but {', '.join(MISSING)} "
                       "cannot be imported: install the worker extra")
if MISSING:
    pytest.skip(f"the worker extra is not installed ({', '.join(MISSING)} missing): "
                "pip install 'torch==2.13.0' -e '.[worker]'", allow_module_level=True)

SECRET = "worker-test-secret"
#: tiny renders: the gateway asks ~1 MP buckets, the test workers draw at most this area
MAX_AREA = 160 * 96
START_TIMEOUT = 240.0  # a busy 2-core machine imports torch + diffusers slowly


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `kontext/` and `klein/`: tiny pipelines saved with save_pretrained."""
    root = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, "-m", "tests.worker.tiny_models", str(root)], cwd=ROOT,
                   check=True, timeout=START_TIMEOUT, env=_offline_env(root))
    return root


def _offline_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(home / "hf-home"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class WorkerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict[str, object]:
        resp = httpx.get(f"{self.url}/health", headers=auth(), timeout=10)
        resp.raise_for_status()
        data: dict[str, object] = resp.json()
        return data

    def job(self, job_id: str) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=auth(),
                                            timeout=10).json()
        return data

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                self.health()
                return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"worker not ready: {self.log.read_text()[-2000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {SECRET}"}


def launch_worker(model_dir: Path, log_dir: Path, *args: str) -> WorkerProcess:
    """Start `fluxgate worker` on the CPU (not yet waited for: call wait_ready)."""
    port = free_port()
    log = log_dir / f"worker-{port}.log"
    env = _offline_env(log_dir)
    env["FLUXGATE_WORKER_SECRET"] = SECRET
    cmd = [sys.executable, "-m", "gateway.cli", "worker", "--model-path", str(model_dir),
           "--device", "cpu", "--port", str(port), "--max-area", str(MAX_AREA),
           "--max-steps", "100000", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return WorkerProcess(f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="module")
def worker_factory(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (all ready when it answers); every one is stopped after the module."""
    started: list[WorkerProcess] = []
    log_dir = tmp_path_factory.mktemp("worker-logs")

    def make(model_dir: Path, *args: str, count: int = 1) -> list[WorkerProcess]:
        procs = [launch_worker(model_dir, log_dir, *args) for _ in range(count)]
        started.extend(procs)
        for proc in procs:  # started together: the imports overlap
            proc.wait_ready()
        return procs

    yield make
    for proc in started:
        proc.stop()


def wait_until(check: Callable[[], object], timeout: float = 120.0, what: str = "") -> object:
    """Poll `check` until it answers something truthy (its answer), within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)
