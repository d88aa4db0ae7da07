"""Typed resources built by the lifespan and handed out through dependencies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ollama_web.core.config import Settings
from ollama_web.core.db import SlowQueryRecorder
from ollama_web.core.sqlite_inline import InlineSQLite

SOLE_SERVER_SINCE = "sole_server_since"
"""An app state attribute: when this process found itself its database's only server
(SQLite; set by backups.lifespan as it takes the server locks), or None."""


@dataclass
class CoreState:
    settings: Settings
    secret_key: str
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    slow_queries: SlowQueryRecorder
    # The hot statements' own connection on a SQLite file (see core/sqlite_inline.py).
    inline: InlineSQLite | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic
