"""Alembic environment: runs on a connection handed over by `ollama_web.migrations.runner`."""

from __future__ import annotations

from alembic import context

from ollama_web.db import Base
from ollama_web.migrations.filters import include_object

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `ollama-web migrate`")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
