"""`uvicorn ollama_web.main:app`: the application is built on first access, not at import."""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            from ollama_web.app import create_app
            from ollama_web.core.startup import load_settings_or_exit

            # Invalid configuration: the CLI's one-line message and exit status 78.
            _app = create_app(load_settings_or_exit())
        return _app
    raise AttributeError(name)
