"""The deployment validations check files, tools and the proxy path, not the database:
tests here that need the app run it on SQLite only."""

from __future__ import annotations

import pytest


@pytest.fixture
def db_backend() -> str:
    return "sqlite"
