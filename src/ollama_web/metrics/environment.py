"""PROMETHEUS_MULTIPROC_DIR from the settings (so from `.env` too) into the environment.

prometheus-client reads the variable from os.environ, once, when it is imported. `serve`
calls this before uvicorn starts the workers (they inherit the environment), and the app
calls it before it imports prometheus-client; so this module must not import it.
"""

from __future__ import annotations

import os

from ollama_web.core.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def export_multiprocess_dir(settings: Settings) -> None:
    directory = settings.prometheus_multiproc_dir
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)  # prometheus-client only writes into it
    os.environ[MULTIPROC_ENV] = str(directory.resolve())
