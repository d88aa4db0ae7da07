"""Shapes of the gateway's admin route."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class NodeState(BaseModel):
    url: str
    status: Literal["up", "down"]
    version: str | None = None
    latency_ms: float | None = Field(None, description="last probe or listing round trip")
    in_flight: int = Field(description="generations streaming from this node now")
    requests_total: int
    failures_total: int
    consecutive_failures: int
    backoff_seconds: float = Field(description="seconds before routing tries the node again")
    last_error: str | None = None
    last_error_at: str | None = None
    last_ok_at: str | None = None
    models_count: int | None = Field(None, description="null until the node was listed")
    loaded_models: list[str] = Field(default_factory=list)


class NodeStateList(BaseModel):
    nodes: list[NodeState]
