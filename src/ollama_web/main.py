"""`uvicorn ollama_web.main:app`: the application is built on first access, not at import."""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            from ollama_web.app import create_app

            _app = create_app()
        return _app
    raise AttributeError(name)
