"""The OpenAPI document describes what the API really answers: schemathesis fuzzes every
documented operation of a running gateway (valid and invalid requests, derandomized) and each
answer must be documented (status, content type, body schema, headers) and never a 5xx."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Gateway

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
MAX_EXAMPLES = 12
#: FastAPI's default 422 must not stand in for our own validation answers
DEFAULT_422 = "HTTPValidationError"


def _contract(gateway: Gateway, key: str, mode: GenerationMode) -> list[str]:
    """Fuzz every operation in `mode`; the failures, one line each."""
    schema = schemathesis.openapi.from_url(f"{gateway.base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}", "x-key": key}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:

        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=gateway.base_url, headers=headers, checks=CHECKS,
                                   timeout=30)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
        except (Exception, BaseExceptionGroup) as exc:  # a check failure or a FailureGroup
            failures.append(f"{operation.label}: {str(exc).strip().splitlines()[0:6]}")
    return failures


def test_openapi_documents_no_default_validation_error(gateway: Gateway) -> None:
    """Every error status is documented with its family's body, not FastAPI's default."""
    import httpx

    document = httpx.get(f"{gateway.base_url}/openapi.json").json()
    assert DEFAULT_422 not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status in ("401" if not path.startswith("/v1/flux") and path != "/v1/get_result"
                           else "403", "404", "422", "500", "503"):
                assert status in operation["responses"], (method, path, status)
    edit = document["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(edit) == {"multipart/form-data", "application/json"}
    files = document["paths"]["/replicate/v1/files"]["post"]["requestBody"]["content"]
    assert files["multipart/form-data"]["schema"]["required"] == ["content"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_openapi_contract(gateway: Gateway, mode: GenerationMode) -> None:
    _, key = gateway.create_key("contract")
    hypothesis.seed(0)
    failures = _contract(gateway, key, mode)
    assert not failures, "\n".join(failures)
