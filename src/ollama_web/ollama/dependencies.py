"""`GatewayDep`: the running `OllamaGateway` for a route."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ollama_web.ollama.gateway import OllamaGateway


async def get_gateway(request: Request) -> OllamaGateway:
    return cast(OllamaGateway, request.app.state.gateway)


GatewayDep = Annotated[OllamaGateway, Depends(get_gateway)]
