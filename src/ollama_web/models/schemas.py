"""Shapes of the `/api/models` routes (documented in the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ollama_web.ollama.names import MAX_NAME_CHARS


class NodeReport(BaseModel):
    url: str
    status: Literal["up", "down"]
    error: str | None = None


class ModelSummary(BaseModel):
    name: str = Field(description="`name:tag` as the first node holding it spells it")
    model: str
    size: int | None = Field(None, description="bytes")
    digest: str | None = None
    modified_at: str | None = Field(None, description="RFC 3339 as the node reported it")
    format: str | None = None
    family: str | None = None
    families: list[str] = Field(default_factory=list)
    parameter_size: str | None = None
    quantization_level: str | None = None
    context_length: int | None = None
    embedding_length: int | None = None
    capabilities: list[str] = Field(default_factory=list)
    nodes: list[str] = Field(description="URLs of the reachable nodes that hold this model")


class ModelList(BaseModel):
    models: list[ModelSummary]
    nodes: list[NodeReport] = Field(description="Every configured node; down ones with why")


class NodeTest(BaseModel):
    url: str
    reachable: bool
    status: Literal["up", "down"]
    version: str | None = None
    latency_ms: float | None = None
    error: str | None = None


class ConnectionTest(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="`degraded`: some node is down")
    reachable: int
    total: int
    nodes: list[NodeTest]


class RunningModel(BaseModel):
    name: str
    model: str
    node: str
    size: int | None = None
    size_vram: int | None = Field(None, description="bytes in VRAM; < size means partly on CPU")
    expires_at: str | None = None
    context_length: int | None = None
    digest: str | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None


class RunningList(BaseModel):
    models: list[RunningModel]
    nodes: list[NodeReport]


class ModelDetails(BaseModel):
    name: str
    node: str = Field(description="The node that answered")
    format: str | None = None
    family: str | None = None
    families: list[str] = Field(default_factory=list)
    parameter_size: str | None = None
    quantization_level: str | None = None
    architecture: str | None = None
    parameter_count: int | None = None
    context_length: int | None = None
    embedding_length: int | None = None
    capabilities: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Modelfile parameters; repeated keys (stop) as lists"
    )
    template: str | None = None
    system: str | None = None
    license: str | None = None
    modified_at: str | None = None


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, examples=["llama3.2:1b"])
    node: str | None = Field(
        None, description="URL of the node to pull onto; default: the first reachable node"
    )


class PullCancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, examples=["llama3.2:1b"])
    node: str | None = Field(None, description="Only the pull onto this node (its URL)")


class PullCancelled(BaseModel):
    model: str
    node: str | None
    cancelled: int = Field(description="Pulls of this model this server process ended")
    processes_told: int = Field(
        description="Other server processes told to end theirs (all of them with REDIS_URL; "
        "else those of this host)"
    )


class PullProgressEvent(BaseModel):
    """`event: progress` data."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    percent: float | None = None
