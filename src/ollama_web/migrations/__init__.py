"""Alembic migrations shipped inside the package, and the code that runs them."""
