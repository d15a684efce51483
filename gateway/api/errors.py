"""Exception -> HTTP answer, in one table. Errors that would fail again carry
`x-should-retry: false`. The body style depends on the route family:

* the OpenAI envelope `{"error": {"message", "type", "param", "code"}}` everywhere by default;
* under `/replicate/`, Replicate's RFC 7807-style `{"title", "detail", "status"}` (input errors
  as 422, as Replicate answers them);
* FastAPI's `{"detail": ...}` on routes declared with `route_class=DetailErrorRoute` (the
  BFL-style API, whose clients read `detail`, as BFL itself answers). There a missing or bad
  key is 403 (BFL answers 403 "Not authenticated - Invalid Authentication"), and invalid input
  is 422 with the FastAPI list `{"detail": [{"loc", "msg", "type"}]}` (BFL's
  `HTTPValidationError`); every other error keeps its status with `{"detail": "<message>"}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import TimeoutError as SqlPoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing.errors import (
    BillingError,
    IdempotencyInProgress,
    IdempotencyMismatch,
    InsufficientFunds,
    InvalidKey,
    KeyForbidden,
)
from billing.errors import RateLimited as KeyRateLimited
from gateway import errors as ge
from gateway.api.key_first import key_error
from gateway.storage.base import StorageError

log = logging.getLogger(__name__)

Family = Literal["openai", "replicate", "detail"]
#: path prefix -> route family whose error body is not the OpenAI envelope
FAMILIES: dict[str, Family] = {"/replicate/": "replicate"}
#: Replicate-style titles by status (RFC 7807 `title`)
TITLES = {400: "Bad request", 401: "Unauthenticated", 402: "Insufficient credit",
          403: "Forbidden", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
          413: "Payload too large", 415: "Unsupported media type",
          422: "Input validation failed", 429: "Request was throttled",
          500: "Internal server error", 502: "Upstream error", 503: "Service unavailable",
          504: "Gateway timeout"}

#: exception class -> (status, OpenAI error type); the first matching class wins (MRO order)
STATUS: dict[type[Exception], tuple[int, str]] = {
    ge.ContentPolicy: (400, "invalid_request_error"),
    ge.PayloadTooLarge: (413, "invalid_request_error"),
    ge.UnsupportedMedia: (415, "invalid_request_error"),
    ge.InvalidRequest: (400, "invalid_request_error"),
    ge.AuthenticationError: (401, "authentication_error"),
    ge.PermissionDenied: (403, "permission_error"),
    ge.NotFound: (404, "invalid_request_error"),
    ge.Conflict: (409, "conflict_error"),
    ge.Unprocessable: (422, "invalid_request_error"),
    ge.RateLimited: (429, "rate_limit_error"),
    ge.UpstreamError: (502, "upstream_error"),
    ge.ServiceUnavailable: (503, "service_unavailable"),
    ge.Timeout: (504, "timeout_error"),
    ge.Interrupted: (503, "service_unavailable"),
    InvalidKey: (401, "authentication_error"),
    KeyForbidden: (403, "permission_error"),
    InsufficientFunds: (402, "insufficient_quota"),
    KeyRateLimited: (429, "rate_limit_error"),
    IdempotencyInProgress: (409, "conflict_error"),
    IdempotencyMismatch: (422, "invalid_request_error"),
    BillingError: (400, "invalid_request_error"),
    StorageError: (503, "service_unavailable"),  # the file store is unreachable: try later
}
CODES: dict[type[Exception], str] = {
    InvalidKey: "invalid_api_key",
    KeyForbidden: "permission_denied",
    InsufficientFunds: "insufficient_quota",
    KeyRateLimited: "rate_limit_exceeded",
    IdempotencyInProgress: "idempotency_key_in_use",
    IdempotencyMismatch: "idempotency_key_reused",
}


class DetailErrorRoute(APIRoute):
    """A route whose errors are rendered FastAPI/BFL-style (`{"detail": ...}`); use it as an
    APIRouter's `route_class`."""


def detail_style(request: Request) -> bool:
    """Whether `request` was routed to a `DetailErrorRoute`."""
    return family_of(request) == "detail"


#: detail style: exception class -> status, where it differs from STATUS (first MRO match)
DETAIL_STATUS: dict[type[Exception], int] = {
    ge.ContentPolicy: 400,
    ge.PayloadTooLarge: 413,
    ge.InvalidRequest: 422,
    ge.AuthenticationError: 403,
    InvalidKey: 403,
}
#: detail style: statuses whose body is FastAPI's validation list
_VALIDATION_LIST = 422


def envelope(message: str, type_: str, param: str | None = None,
             code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_for(exc: Exception) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "server_error"


def error_body(exc: Exception) -> dict[str, Any]:
    """The OpenAI error envelope for a gateway or billing error; any other exception is
    described as a generic server error (its text is not shown to clients)."""
    status, type_ = status_for(exc)
    if isinstance(exc, StorageError):  # never show storage internals (paths, buckets)
        return envelope("The file store is unavailable right now; try again later.",
                        "service_unavailable", None, "storage_unavailable")
    if status == 500 and not isinstance(exc, ge.GatewayError | BillingError):
        return envelope("The server had an error while processing your request.",
                        "server_error", None, "internal_error")
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None)
    if code is None:
        code = next((CODES[c] for c in type(exc).__mro__ if c in CODES), None)
    return envelope(message, type_, param, code)


def stream_error_event(exc: Exception) -> str:
    """An error after an SSE stream has started: `data: {"error": {...}}` (the openai SDKs
    raise APIError with its message)."""
    return f"data: {json.dumps(error_body(exc))}\n\n"


def detail_status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in DETAIL_STATUS:
            return DETAIL_STATUS[cls]
    return status_for(exc)[0]


def detail_body(exc: Exception, status: int) -> dict[str, Any]:
    """`{"detail": ...}` for a gateway or billing error: FastAPI's validation list for 422,
    else the message (a generic text for unexpected exceptions)."""
    inner = error_body(exc)["error"]
    message = str(inner["message"])
    if isinstance(exc, ge.AuthenticationError | InvalidKey):
        message = f"Not authenticated - {message}"
    if status == _VALIDATION_LIST:
        loc = ["body", inner["param"]] if inner["param"] else ["body"]
        return {"detail": [{"loc": loc, "msg": message,
                            "type": inner["code"] or "value_error"}]}
    return {"detail": message}


def family_of(request: Request) -> Family:
    """The route family of a request (which error body it gets)."""
    if isinstance(request.scope.get("route"), DetailErrorRoute):
        return "detail"
    path = request.url.path
    return next((f for prefix, f in FAMILIES.items() if path.startswith(prefix)), "openai")


def replicate_body(status: int, detail: str) -> dict[str, Any]:
    return {"title": TITLES.get(status, "Error"), "detail": detail, "status": status}


def _render(status: int, body: dict[str, Any], family: Family) -> tuple[int, dict[str, Any]]:
    """`(status, body)` for `family`, from the OpenAI-envelope answer `body`."""
    if family != "replicate":
        return status, body
    if status == 400 and body["error"]["code"] not in ("content_policy_violation",):
        status = 422  # Replicate answers invalid input with 422
    return status, replicate_body(status, body["error"]["message"])


def error_response(exc: Exception, family: Family = "openai") -> JSONResponse:
    """The HTTP answer for a gateway or billing error, in `family`'s error body."""
    status = detail_status_for(exc) if family == "detail" else status_for(exc)[0]
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    for name, value in (getattr(exc, "headers", None) or {}).items():  # e.g. x-ratelimit-*
        headers[name.lower()] = value
    retryable = status in (408, 409, 429, 503) or bool(getattr(exc, "retryable", False))
    if getattr(exc, "never_retry", False):
        retryable = False
    headers["x-should-retry"] = "true" if retryable else "false"
    if family == "detail":
        body = detail_body(exc, status)
    else:
        status, body = _render(status, error_body(exc), family)
    return JSONResponse(body, status_code=status, headers=headers)


def _without_offset(err: dict[str, Any]) -> dict[str, Any]:
    """A validation error as shown: a JSON syntax error's `loc` holds a byte offset, not a
    field, so it names none (OpenAI `param: null`, BFL `loc: ["body"]`)."""
    if err.get("type") != "json_invalid":
        return err
    reason = (err.get("ctx") or {}).get("error") or "syntax error"
    return {**err, "loc": ("body",), "msg": f"The request body is not valid JSON: {reason}."}


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, family_of(request))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        refused = await key_error(request)
        if refused is not None:  # no key, no word about the body
            return error_response(refused, family_of(request))
        errors = [_without_offset(e) for e in exc.errors()]
        if detail_style(request):  # FastAPI's own body, without echoing the input back
            errors = [{k: v for k, v in e.items() if k not in ("input", "url")}
                      for e in errors]
            return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422,
                                headers={"x-should-retry": "false"})
        err = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header")]
        param = ".".join(loc) or None
        message = f"Invalid {param}: {err.get('msg')}" if param else str(err.get("msg"))
        code = "invalid_json" if err.get("type") == "json_invalid" else None
        return error_response(ge.InvalidRequest(message, param=param, code=code),
                              family_of(request))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        # the exception's own headers are kept: a 405 names the allowed methods (`Allow`)
        headers = {**(exc.headers or {}), "x-should-retry": "false"}
        if detail_style(request):
            return JSONResponse({"detail": exc.detail}, status_code=status, headers=headers)
        type_ = "invalid_request_error" if status < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed",
                413: "request_too_large"}.get(status)
        status, body = _render(status, envelope(str(exc.detail), type_, None, code),
                               family_of(request))
        return JSONResponse(body, status_code=status, headers=headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        if detail_style(request):
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500,
                                headers={"x-should-retry": "false"})
        # not retried by SDKs: a creating call may already have made (and billed) a job
        status, body = _render(500, envelope(
            "The server had an error while processing your request.", "server_error", None,
            "internal_error"), family_of(request))
        return JSONResponse(body, status_code=status, headers={"x-should-retry": "false"})

    async def database_busy(request: Request, exc: Exception) -> JSONResponse:
        # the pool had no connection within `database.pool_timeout`: overload, not a bug
        log.warning("database pool exhausted (%s): answering 503", type(exc).__name__)
        return error_response(ge.ServiceUnavailable(
            "The gateway is overloaded right now; retry shortly.", code="overloaded",
            retry_after=1), family_of(request))

    app.add_exception_handler(SqlPoolTimeout, database_busy)
    app.add_exception_handler(ge.GatewayError, gateway_error)
    app.add_exception_handler(BillingError, gateway_error)
    app.add_exception_handler(StorageError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
