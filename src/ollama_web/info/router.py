"""`GET /info`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ollama_web import __version__
from ollama_web.core.config import Settings
from ollama_web.core.dependencies import CoreDep

router = APIRouter(tags=["health"])


def features(settings: Settings) -> dict[str, bool]:
    return {
        "rate_limiting": settings.rate_limit_enabled,
        "csrf_protection": settings.csrf_protection_enabled,
        "security_headers": settings.security_headers_enabled,
        "metrics": settings.metrics_enabled,
        "backups": settings.backup_enabled,
        "structured_logging": settings.structured_logging,
        "redis": settings.redis_url is not None,
        "chat_continue_on_disconnect": settings.chat_continue_on_disconnect,
    }


def public_settings(settings: Settings) -> dict[str, Any]:
    return {
        "database_backend": "sqlite" if settings.is_sqlite else "postgresql",
        "ollama_nodes": len(settings.ollama_url),
        "session_timeout_minutes": settings.session_timeout_minutes,
        "api_key_expiry_days": settings.api_key_expiry_days,
        "rate_limit_per_minute": settings.rate_limit_per_minute,
        "rate_limit_auth_per_minute": settings.rate_limit_auth_per_minute,
        "rate_limit_chat_per_minute": settings.rate_limit_chat_per_minute,
        "max_message_chars": settings.max_message_chars,
        "chat_disconnect_grace_seconds": settings.chat_disconnect_grace_seconds,
        "max_request_bytes": settings.max_request_bytes,
        "backup_retention_days": settings.backup_retention_days,
    }


@router.get("/info", summary="API information, enabled features and non-secret settings")
async def info(core: CoreDep) -> dict[str, Any]:
    settings = core.settings
    return {
        "name": "Ollama Web",
        "version": __version__,
        "environment": settings.environment.value,
        "uptime_seconds": round(core.uptime_seconds, 3),
        "features": features(settings),
        "settings": public_settings(settings),
    }
