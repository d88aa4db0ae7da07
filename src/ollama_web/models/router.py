"""`/api/models`: the models of every node, node tests, details, running models, pull, delete.

Names in paths may contain `/` and `:` (`hf.co/user/model:Q4_K_M`), hence `{name:path}`;
they are validated against Ollama's grammar before any upstream call (invalid → 422). The
fixed paths `/api/models/test` and `/api/models/running` are declared first, so a model
literally named `test` is reached as `/api/models/test:latest`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from ollama_web.auth.dependencies import AdminPrincipal, CurrentPrincipal
from ollama_web.core.dependencies import SettingsDep
from ollama_web.core.errors import NotFoundError
from ollama_web.models.schemas import (
    ConnectionTest,
    ModelDetails,
    ModelList,
    PullCancelled,
    PullCancelRequest,
    PullRequest,
    RunningList,
)
from ollama_web.models.service import model_details, pull_sse, running_entry
from ollama_web.ollama.dependencies import GatewayDep
from ollama_web.ollama.errors import OllamaUnavailableError

router = APIRouter(prefix="/api/models", tags=["models"])

Responses = dict[int | str, dict[str, Any]]
_UNAVAILABLE: Responses = {503: {"description": "No Ollama node is reachable (OLLAMA_UNAVAILABLE)"}}
_NOT_FOUND: Responses = {404: {"description": "No reachable node has the model (MODEL_NOT_FOUND)"}}
_INVALID: Responses = {422: {"description": "Invalid model name (VALIDATION_ERROR)"}}


@router.get("", response_model=ModelList, summary="List available models", responses=_UNAVAILABLE)
async def list_models(principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    """Models of all reachable nodes merged by `name:tag`, with the nodes holding each.
    Cached for OLLAMA_HEALTH_CACHE_SECONDS and refreshed after a pull or delete."""
    models, reports = await gateway.list_models()
    return {"models": models, "nodes": [report.as_dict() for report in reports]}


@router.get(
    "/test", response_model=ConnectionTest, summary="Test Ollama connection", responses=_UNAVAILABLE
)
async def test_connection(principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    """For each node: reachable, version, latency, error. All down → 503 with the nodes in
    `details.nodes`."""
    results = await gateway.test_nodes()
    nodes = [{**result, "reachable": result["status"] == "up"} for result in results]
    reachable = sum(1 for node in nodes if node["reachable"])
    if not reachable:
        raise OllamaUnavailableError("No Ollama node is reachable.", details={"nodes": nodes})
    status = "ok" if reachable == len(nodes) else "degraded"
    return {"status": status, "reachable": reachable, "total": len(nodes), "nodes": nodes}


@router.get(
    "/running",
    response_model=RunningList,
    summary="Models loaded in memory, per node",
    responses=_UNAVAILABLE,
)
async def running_models(principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    pairs, reports = await gateway.running_models()
    return {
        "models": [running_entry(url, entry) for url, entry in pairs],
        "nodes": [report.as_dict() for report in reports],
    }


@router.post(
    "/pull",
    summary="Pull a model (admin; Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`event: progress` {status, digest, total, completed, percent} "
            '…, then `event: done` {status: "success"} or `event: error` '
            "{error, message, details}. Admins pulling the same model share one pull.",
            "content": {"text/event-stream": {}},
        },
        **_UNAVAILABLE,
        **_INVALID,
    },
)
async def pull_model(
    body: PullRequest, principal: AdminPrincipal, gateway: GatewayDep, settings: SettingsDep
) -> StreamingResponse:
    pull = await gateway.pull_model(body.name, node_url=body.node)
    return StreamingResponse(
        pull_sse(pull, settings.sse_keepalive_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/pull/cancel",
    response_model=PullCancelled,
    summary="Cancel a pull (admin): its streams end with a PULL_CANCELLED error event",
    description="Closes the pull's upstream, which cancels it in Ollama (what it downloaded "
    "stays: pulling again resumes). Every server process ends its pulls of the model: with "
    "REDIS_URL on every host, without it (or while Redis is down) on this one (through "
    "DATA_DIR/pull-cancels/).",
    responses={
        404: {"description": "No pull of this model is running (PULL_NOT_RUNNING)"},
        **_INVALID,
    },
)
async def cancel_pull(
    body: PullCancelRequest, principal: AdminPrincipal, gateway: GatewayDep
) -> PullCancelled:
    cancelled, told, node = await gateway.cancel_pull(body.name, node_url=body.node)
    if not cancelled and not told:
        raise NotFoundError(
            "No pull of this model is running.",
            code="PULL_NOT_RUNNING",
            details={"model_name": body.name},
        )
    return PullCancelled(model=body.name, node=node, cancelled=cancelled, processes_told=told)


@router.get(
    "/{name:path}",
    response_model=ModelDetails,
    summary="Model details (parameters, template, capabilities, context length)",
    responses={**_NOT_FOUND, **_UNAVAILABLE, **_INVALID},
)
async def model_info(name: str, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    shown = await gateway.show_model(name)
    return model_details(shown.name, shown.node_url, shown.info)


@router.delete(
    "/{name:path}",
    status_code=204,
    summary="Delete a model (admin) from every node holding it, or from `node`",
    responses={**_NOT_FOUND, **_UNAVAILABLE, **_INVALID},
)
async def delete_model(
    name: str,
    principal: AdminPrincipal,
    gateway: GatewayDep,
    node: str | None = Query(None, description="Only this node (its URL)"),
) -> Response:
    await gateway.delete_model(name, node_url=node)
    return Response(status_code=204)
