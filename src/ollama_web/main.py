"""`uvicorn ollama_web.main:app`: the application is built on first access, not at import."""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            from ollama_web.core.directories import prepare_directories_or_exit
            from ollama_web.core.startup import load_settings_or_exit
            from ollama_web.metrics.environment import export_multiprocess_dir

            # Invalid configuration, or a directory that cannot be used: the CLI's one-line
            # message and exit status 78.
            settings = load_settings_or_exit()
            prepare_directories_or_exit(settings)
            export_multiprocess_dir(settings)  # before the app imports prometheus-client
            from ollama_web.app import create_app

            _app = create_app(settings)
        return _app
    raise AttributeError(name)
