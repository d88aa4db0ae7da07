"""Who may read metrics: an administrator, or a scraper holding METRICS_TOKEN."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from ollama_web.auth.dependencies import ADMIN, get_principal, requires
from ollama_web.core.config import Settings
from ollama_web.core.dependencies import SessionDep
from ollama_web.core.errors import ForbiddenError, NotFoundError


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def presents_metrics_token(request: Request, settings: Settings) -> bool:
    if settings.metrics_token is None:
        return False
    given = _bearer(request)
    expected = settings.metrics_token.get_secret_value()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@requires(ADMIN)
async def require_metrics_access(request: Request, session: SessionDep) -> None:
    """404 when METRICS_ENABLED=false; else the METRICS_TOKEN bearer or an admin (401/403)."""
    settings: Settings = request.app.state.settings
    if not settings.metrics_enabled:
        raise NotFoundError("Metrics are disabled (METRICS_ENABLED=false).")
    if presents_metrics_token(request, settings):
        return
    principal = await get_principal(request, session)
    if not principal.is_admin:
        raise ForbiddenError("Metrics require an administrator or the metrics token.")


MetricsAccess = Depends(require_metrics_access)
