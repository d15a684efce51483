"""The gateway's exception tree. Only `gateway/api/errors.py` turns these into HTTP answers.

    GatewayError(message, param, code)
    ├── InvalidRequest          bad input (400)
    │   ├── ContentPolicy       refused by a safety filter (400, content_policy_violation)
    │   ├── PayloadTooLarge     (413)
    │   └── UnsupportedMedia    (415)
    ├── AuthenticationError     no or bad key (401)
    ├── PermissionDenied        the key may not do this (403)
    ├── NotFound                unknown model, job or file (404)
    ├── Conflict                (409)
    ├── Unprocessable           (422)
    ├── RateLimited             (429, retry_after)
    ├── UpstreamError           the upstream failed the job (502)
    ├── ServiceUnavailable      no channel can take the job now (503)
    └── Timeout                 the job did not finish in time (504)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's errors. `code` is a stable machine-readable string."""

    default_code: str | None = None
    retryable: bool = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after = retry_after


class InvalidRequest(GatewayError):
    default_code = "invalid_request"


class ContentPolicy(InvalidRequest):
    default_code = "content_policy_violation"


class PayloadTooLarge(InvalidRequest):
    default_code = "payload_too_large"


class UnsupportedMedia(InvalidRequest):
    default_code = "unsupported_media_type"


class AuthenticationError(GatewayError):
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    default_code = "permission_denied"


class NotFound(GatewayError):
    default_code = "not_found"


class Conflict(GatewayError):
    default_code = "conflict"


class Unprocessable(GatewayError):
    default_code = "unprocessable"


class RateLimited(GatewayError):
    default_code = "rate_limit_exceeded"
    retryable = True


class UpstreamError(GatewayError):
    default_code = "upstream_error"


class ServiceUnavailable(GatewayError):
    default_code = "service_unavailable"
    retryable = True


class Timeout(GatewayError):
    default_code = "timeout"


class Interrupted(GatewayError):
    """The gateway is stopping while the caller's job runs: the job goes on (another replica,
    or the next start, finishes and stores it), so a retry would make and charge it twice."""

    default_code = "interrupted"
    never_retry = True  # x-should-retry: false, whatever the status

    def __init__(self, job_ids: list[str]) -> None:
        named = ", ".join(job_ids)
        super().__init__(
            f"The gateway is restarting while your image is being made: job {named} keeps "
            "running and will be stored. Do not retry this request (the image would be made "
            "and charged again); retry with the same Idempotency-Key, or look the job up by "
            "its id.")
        self.job_ids = job_ids
        self.headers = {"x-fluxgate-job-id": named}


def not_ready(job_ids: list[str], *, draining: bool) -> GatewayError:
    """The error for a synchronous caller whose jobs are still running: Interrupted when the
    gateway is stopping, else Timeout (its wait ran out)."""
    if draining:
        return Interrupted(job_ids)
    return Timeout("The image is not ready yet; it keeps running and will be stored.",
                   code="timeout")
