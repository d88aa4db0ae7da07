"""`/docs` and `/redoc` with assets from the `fastapi_offline` package and this folder."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from ollama_web.core.errors import NotFoundError

router = APIRouter(include_in_schema=False)

_VENDOR = Path(fastapi_offline.__file__).resolve().parent / "static"
_OWN = Path(__file__).resolve().parent / "static"
_ASSETS = {
    "swagger-ui-bundle.js": _VENDOR / "swagger-ui-bundle.js",
    "swagger-ui.css": _VENDOR / "swagger-ui.css",
    "redoc.standalone.js": _VENDOR / "redoc.standalone.js",
    "favicon.png": _VENDOR / "favicon.png",
    "swagger-init.js": _OWN / "swagger-init.js",
}

_SWAGGER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Ollama Web API</title>
<link rel="icon" href="/docs/static/favicon.png">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-init.js"></script>
</body></html>"""

_REDOC = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Ollama Web API</title>
<link rel="icon" href="/docs/static/favicon.png"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/docs/static/redoc.standalone.js"></script>
</body></html>"""


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(_SWAGGER)


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return HTMLResponse(_REDOC)


@router.get("/docs/static/{name}")
async def docs_asset(name: str) -> FileResponse:
    path = _ASSETS.get(name)
    if path is None:
        raise NotFoundError("No such documentation asset.")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
