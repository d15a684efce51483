"""GET /healthz and GET /v1/models."""

from __future__ import annotations

import hmac
import ipaddress
import os

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from gateway.api.deps import PrincipalDep, ServicesDep
from gateway.api.openapi import OPENAI_ERRORS
from gateway.api.schemas import ModelCard, ModelList
from gateway.errors import NotFound, PermissionDenied
from gateway.models import listed_models, resolve_model

router = APIRouter(responses=OPENAI_ERRORS)
_READY_TIMEOUT = 2.0  # seconds for the readiness check's SELECT 1
_CREATED = 1748736000  # 2025-06-01: the Kontext release month; stable for model pickers


@router.get("/healthz", include_in_schema=False)
async def healthz(services: ServicesDep) -> dict[str, object]:
    """Liveness: answered from memory only, never waiting on the database or behind jobs."""
    return {
        "status": "ok",
        "jobs_running": services.jobs.running,
        "rate_limits": {"backend": services.rate_limiter.backend,
                        "backend_errors": services.rate_limiter.backend_errors,
                        "fallbacks": services.rate_limiter.fallbacks},
        "channels": [{"name": c.name, "type": c.kind, "label": c.label,
                      "disabled": c.disabled_reason, "breaker": c.breaker.state}
                     for c in services.router.channels],
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics (gateway/metrics.py): with `metrics_token_env` set, for
    `Authorization: Bearer <its value>`; without, for loopback clients only."""
    var = services.settings.metrics_token_env
    token = os.environ.get(var) if var else None
    if var:
        sent = request.headers.get("authorization", "")
        if not token or not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise PermissionDenied("GET /metrics needs the metrics token.",
                                   code="metrics_forbidden")
    else:
        host = request.client.host if request.client else ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise PermissionDenied("GET /metrics is served to loopback clients only; set "
                                   "metrics_token_env to scrape it from elsewhere.",
                                   code="metrics_forbidden")
    await services.metrics.refresh(services)  # the database-wide gauges, read now
    return Response(generate_latest(services.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz", include_in_schema=False)
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: the database answers within `_READY_TIMEOUT` s (else 503, so a load balancer
    sends traffic elsewhere). Also reports the transactions the engine ended since start."""
    counts = {"transactions": services.transactions.commits,
              "rollbacks": services.transactions.rollbacks,
              "write_batches": services.jobs.writer.batches}
    if services.jobs.draining:  # a stop is under way: send traffic elsewhere
        return JSONResponse({"status": "stopping", "database": counts}, status_code=503,
                            headers={"retry-after": "2"})
    try:
        with anyio.fail_after(_READY_TIMEOUT):
            async with services.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready", with its class for operators
        return JSONResponse({"status": "unavailable", "database": {
            **counts, "error": type(exc).__name__}}, status_code=503,
            headers={"retry-after": "1"})
    return JSONResponse({"status": "ok", "database": counts,
                         "jobs_running": services.jobs.running})


def _cards(services: ServicesDep, allowed: tuple[str, ...] | None) -> list[ModelCard]:
    owner = {c.kind for c in services.router.channels}
    owned_by = "fluxgate-sandbox" if owner == {"sandbox"} else "black-forest-labs"
    catalogue = services.jobs.catalogue
    return [ModelCard(id=m, created=_CREATED, owned_by=owned_by,
                      capabilities=catalogue.spec(root).capabilities())
            for m, root in listed_models(services.router.models(),
                                         services.settings.model_aliases)
            if allowed is None or root in allowed]


@router.get("/v1/models")
async def list_models(principal: PrincipalDep, services: ServicesDep) -> ModelList:
    """The models this key may use, in OpenAI's shape."""
    return ModelList(data=_cards(services, principal.models))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, principal: PrincipalDep, services: ServicesDep) -> ModelCard:
    canonical = resolve_model(model_id, aliases=services.settings.model_aliases,
                              catalogue=services.jobs.catalogue)
    cards = _cards(services, principal.models)  # an alias's own card first, else its model's
    found = [c for c in cards if c.id == model_id] + [c for c in cards if c.id == canonical]
    if found:
        return found[0]
    raise NotFound(f"The model `{model_id}` does not exist or you do not have access to it.",
                   param="model", code="model_not_found")
