"""`fluxgate worker` refuses a folder it cannot serve in one line, before loading anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.conftest import ROOT
from worker.families import FAMILIES, ModelDirError, capped, detect

# one pytest-xdist process runs every worker test: the tiny pipelines are built once
pytestmark = pytest.mark.xdist_group("worker")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "worker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_folder_without_a_pipeline_is_refused(tmp_path: Path) -> None:
    done = run("--model-path", str(tmp_path), "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"fluxgate worker: {tmp_path}: no model_index.json (point --model-path at a diffusers "
        "pipeline folder, see the README)"]
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    done = run("--model-path", str(tmp_path), "--device", "cpu")
    assert done.returncode == 2 and "'FluxPipeline' is not one the worker runs" in done.stderr


def test_listening_beyond_loopback_needs_a_secret(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "FluxKontextPipeline"}))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "worker", "--model-path",
                           str(tmp_path), "--host", "0.0.0.0", "--secret-env", "NO_SUCH_VAR_X"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "set NO_SUCH_VAR_X" in done.stderr


@pytest.mark.parametrize(("pipeline", "asked", "rendered"), [
    ("FluxKontextPipeline", (1920, 1080), (1392, 752)),  # the Kontext bucket for 16:9
    ("FluxKontextPipeline", (None, None), (1024, 1024)),
    ("Flux2Pipeline", (1000, 600), (992, 592)),  # FLUX.2: floored to multiples of 16
    ("Flux2KleinPipeline", (4096, 4096), (2048, 2048)),  # at most 4 MP
    ("Flux2KleinPipeline", (10, 10), (64, 64)),  # at least 64 px
])
def test_family_sizes(pipeline: str, asked: tuple[int | None, int | None],
                      rendered: tuple[int, int]) -> None:
    assert FAMILIES[pipeline].output_size(*asked) == rendered


def test_capped_keeps_ratio_in_multiples_of_16() -> None:
    assert capped((1392, 752), None) == (1392, 752)
    assert capped((1024, 1024), 256 * 256) == (256, 256)
    w, h = capped((1392, 752), 320 * 180)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 320 * 180


def test_detect_reads_model_index(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelDirError):
        detect(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline"}))
    assert detect(tmp_path).model == "flux-2-dev"
