"""The images answer through the oldest supported openai-python 1.x in strict mode (whose
`size` is a Literal of OpenAI's three sizes) and the installed, newest SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import Gateway

#: the oldest openai-python release still in use that we promise to keep working (1.x)
OLDEST = "1.109.1"

SCRIPT = """
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0,
                       _strict_response_validation=True)
out = {"version": openai.__version__}
for ratio in ("16:9", "1:1"):
    r = client.images.generate(model="flux-kontext-pro", prompt="a fox", response_format="url",
                               extra_body={"aspect_ratio": ratio})
    out[ratio] = {"size": r.size, "width": r.data[0].width, "height": r.data[0].height}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def oldest_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """openai==OLDEST (and `distro`) installed into a folder; its other dependencies are ours.
    Skips when PyPI cannot be reached."""
    target = tmp_path_factory.mktemp("openai-oldest")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             f"openai=={OLDEST}", "distro"],
            capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("pip timed out installing the oldest openai SDK")
    if done.returncode != 0:
        pytest.skip(f"cannot install openai=={OLDEST} (offline?): {done.stderr[-300:]}")
    return target


def _run(gw: Gateway, key: str, pythonpath: Path | None) -> dict[str, dict[str, object]]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", SCRIPT, f"{gw.base_url}/v1", key],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, dict[str, object]] = json.loads(done.stdout)
    return result


def _check(result: dict[str, dict[str, object]]) -> None:
    assert result["16:9"] == {"size": None, "width": 1392, "height": 752}
    assert result["1:1"] == {"size": "1024x1024", "width": 1024, "height": 1024}


def test_oldest_openai_sdk_strict_mode_parses_every_size(gateway: Gateway, api_key: str,
                                                         oldest_sdk: Path) -> None:
    result = _run(gateway, api_key, oldest_sdk)
    assert result["version"] == OLDEST  # really the old SDK, not the installed one
    _check(result)


def test_newest_openai_sdk_strict_mode_parses_every_size(gateway: Gateway,
                                                         api_key: str) -> None:
    result = _run(gateway, api_key, None)
    assert result["version"] == openai.__version__
    _check(result)
