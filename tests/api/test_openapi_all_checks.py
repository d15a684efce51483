"""Issue 17 item 7: schemathesis with every check (`--checks all`: server errors, status codes,
content types, bodies and headers as documented, schema-invalid requests refused
(`negative_data_rejection`), schema-valid ones accepted (`positive_data_acceptance`), methods
a path does not have answered 405 with `Allow`, ...) against a PostgreSQL-backed gateway, with
a key, in its coverage phase (boundary and invalid values of every field) and its fuzzing phase,
positive and negative, deterministic so it is repeatable.

It runs the schemathesis CLI, as an operator would, with tests/api/contract_hooks.py for the
document's custom formats. Skipped without FLUXGATE_TEST_PG_URL, like the other PG tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import start_gateway

#: test cases per operation in the fuzzing phase (the coverage phase has its own count)
MAX_EXAMPLES = 8
ROOT = Path(__file__).resolve().parents[2]


def test_every_schemathesis_check_passes_on_postgres(tmp_path: Path, pg_database: str) -> None:
    gateway = start_gateway(tmp_path / "data", database_url=pg_database)
    try:
        _, key = gateway.create_key("contract")
        command = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{gateway.base_url}/openapi.json",
            "--checks", "all", "--phases", "coverage,fuzzing", "--mode", "all",
            "--generation-deterministic", "--max-examples", str(MAX_EXAMPLES),
            "--header", f"Authorization: Bearer {key}", "--header", f"x-key: {key}",
            "--request-timeout", "30", "--no-color", "--workers", "2",
        ]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.contract_hooks",
               "PYTHONPATH": str(ROOT)}
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600, check=False)  # 22 operations, a busy machine
    finally:
        gateway.stop()
    report = run.stdout + run.stderr
    found = [line for line in report.splitlines()
             if line.startswith(("____", "- ST")) or "Invalid component" in line]
    assert run.returncode == 0, "\n".join(found) + "\n" + report[-6000:]
    tested = re.search(r"Tested: (\d+)", report)
    assert tested and int(tested.group(1)) >= 18, report[-2000:]  # every documented operation
