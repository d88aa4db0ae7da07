"""Alembic environment: runs on a connection handed over by `ollama_web.migrations.runner`."""

from __future__ import annotations

from typing import Any

from alembic import context

from ollama_web.db import Base

target_metadata = Base.metadata


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # Full-text search objects are managed by hand in migrations, not by the models.
    return not (type_ == "table" and name is not None and name.startswith("messages_fts"))


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
