"""`/health`, `/health/live`, `/health/ready` — public, never rate-limited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ollama_web.core.dependencies import CoreDep
from ollama_web.health.service import HEALTHY, UNHEALTHY, check_database, health_report

router = APIRouter(tags=["health"])


# HEAD too, as on every GET route (middleware/head.py): uptime checkers probe with it.
@router.get(
    "/health",
    summary="Health of every component",
    responses={
        503: {
            "description": "The server is unhealthy (e.g. the database is down): the same "
            "report, with status `unhealthy`",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def health(request: Request, core: CoreDep) -> JSONResponse:
    report = await health_report(request.app, core)
    return JSONResponse(report, status_code=503 if report["status"] == UNHEALTHY else 200)


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, Any]:
    return {"status": "alive"}


@router.get("/health/ready", summary="Readiness: the database answers (Ollama not needed)")
async def ready(core: CoreDep) -> JSONResponse:
    database = await check_database(core)
    ready_now = database["status"] == HEALTHY
    return JSONResponse(
        {"status": "ready" if ready_now else "not_ready", "database": database},
        status_code=200 if ready_now else 503,
    )
