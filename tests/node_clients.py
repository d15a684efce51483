"""Run the real JavaScript clients (installed with npm into a temp folder) against a gateway.
Tests using them skip cleanly where node/npm are missing or the npm registry is unreachable."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest


def npm_install(folder: Path, *packages: str) -> Path:
    """`folder` with `packages` (npm specs, e.g. `replicate@1.4.0`) installed; skips the test
    when node or npm is missing or the install fails (offline)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed")
    (folder / "package.json").write_text('{"private": true, "type": "module"}')
    try:
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                               *packages], cwd=folder, capture_output=True, text=True,
                              timeout=180, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {' '.join(packages)} timed out")
    if done.returncode != 0:
        pytest.skip(f"npm install {' '.join(packages)} failed (offline?): {done.stderr[-300:]}")
    return folder


def run_node(folder: Path, script: str, *args: str, timeout: float = 120) -> Any:
    """Run the ES module `script` in `folder` with `args` (process.argv[2:]); answers the JSON
    it prints last. Fails the test with node's stderr when the script fails."""
    path = folder / "script.mjs"
    path.write_text(script)
    done = subprocess.run(["node", str(path), *args], cwd=folder, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:] or done.stdout[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
