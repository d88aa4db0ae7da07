"""`GET /api/admin/ollama/nodes`: per-node gateway state for administrators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ollama_web.auth.dependencies import AdminPrincipal
from ollama_web.ollama.dependencies import GatewayDep
from ollama_web.ollama.schemas import NodeStateList

router = APIRouter(prefix="/api/admin/ollama", tags=["admin"])


@router.get("/nodes", response_model=NodeStateList, summary="Ollama nodes: state (admin)")
async def list_nodes(principal: AdminPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    """Up/down, back-off, generations in flight, last error, latency, version and loaded
    models of every configured node (probed when the cached probe is stale)."""
    return {"nodes": await gateway.node_states()}
