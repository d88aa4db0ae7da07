"""DATABASE_URL as each driver reads it: SQLAlchemy's async drivers (`to_async_database_url`,
which also refuses what no driver would take) and asyncpg's connection arguments
(`asyncpg_url_and_arguments`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:  # SQLAlchemy is imported when a URL is read, not with the settings
    from sqlalchemy.engine import URL

ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
DATABASE_URL_FORMS = "use sqlite:///path/to/file.db or postgresql://user:password@host:5432/name"
# libpq's sslmode words, which asyncpg's `ssl` accepts as they are.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# DATABASE_URL's other libpq parameters that are understood: asyncpg reads these from a
# DSN only (`asyncpg_url_and_arguments` hands them to it as one), and connect_timeout is
# its `timeout`.
LIBPQ_DSN_PARAMETERS = (
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "ssl_min_protocol_version",
    "target_session_attrs",
    "application_name",
)
LIBPQ_PARAMETERS = ("sslmode", *LIBPQ_DSN_PARAMETERS, "connect_timeout")
# SQLAlchemy's asyncpg dialect reads these itself: host (a Unix socket's directory, or
# hosts to try in turn), port, and the statement cache (0 behind PgBouncer's transaction mode).
URL_PARAMETERS = (*LIBPQ_PARAMETERS, "host", "port", "prepared_statement_cache_size")


def to_async_database_url(database_url: str) -> str:
    """DATABASE_URL for SQLAlchemy's async drivers: sqlite -> sqlite+aiosqlite, postgresql
    or postgres -> postgresql+asyncpg, libpq's `sslmode=` -> asyncpg's `ssl=` (the same
    words); the other libpq parameters in LIBPQ_PARAMETERS are kept for
    `asyncpg_url_and_arguments`. Any other database, driver or parameter is a ValueError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number, often a
        # password's unencoded ':' or '@': the message must not repeat part of it
        raise ValueError(
            f"is not a database URL (percent-encode @ : / # in a password); {DATABASE_URL_FORMS}"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    async_driver = ASYNC_DRIVERS.get(backend)
    if async_driver is None or driver not in ("", async_driver.partition("+")[2]):
        raise ValueError(f"unsupported database or driver {url.drivername!r}; {DATABASE_URL_FORMS}")
    if async_driver == "sqlite+aiosqlite":
        return url.set(drivername=async_driver).render_as_string(hide_password=False)
    query = dict(url.query)
    modes = [query.pop(name) for name in ("sslmode", "ssl") if name in query]
    if modes:
        if len(modes) > 1 or modes[0] not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}, given once")
        query["ssl"] = modes[0]
    _check_libpq_parameters(query)
    url = url.set(drivername=async_driver, query=query)
    return url.render_as_string(hide_password=False)


def _check_libpq_parameters(query: dict[str, str | tuple[str, ...]]) -> None:
    """Refuse what asyncpg would fail on when connecting (an unknown keyword, a parameter
    given twice, a timeout that is no number), naming only the parameter."""
    for name, value in query.items():
        if name == "ssl":
            continue
        if name not in URL_PARAMETERS:
            raise ValueError(
                f"parameter {name!r} is not understood; use {', '.join(URL_PARAMETERS)}"
            )
        if not isinstance(value, str) and name not in ("host", "port"):
            raise ValueError(f"parameter {name!r} is given more than once")
    cache_size = query.get("prepared_statement_cache_size")
    if cache_size is not None and not (str(cache_size).isdigit() and str(cache_size).isascii()):
        raise ValueError("prepared_statement_cache_size must be a whole number, 0 or more")
    timeout = query.get("connect_timeout")
    if timeout is not None:
        try:
            seconds = float(str(timeout))
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < float("inf"):
            raise ValueError("connect_timeout must be a number of seconds above 0")


def asyncpg_url_and_arguments(async_url: str) -> tuple[URL, dict[str, Any]]:
    """asyncpg reads libpq's parameters other than sslmode (the CA of a managed server's
    certificate, a client certificate, ...) only from a DSN, and takes connect_timeout as
    `timeout`: as keyword arguments they would fail every connection. They go to it as a
    DSN of their own, which its keyword arguments (the rest of the URL) complete."""
    from sqlalchemy.engine import make_url

    url = make_url(async_url)
    query = dict(url.query)
    in_dsn = {name: query.pop(name) for name in LIBPQ_DSN_PARAMETERS if name in query}
    connect_args: dict[str, Any] = {}
    if in_dsn:
        connect_args["dsn"] = f"postgresql://?{urlencode(in_dsn)}"
    timeout = query.pop("connect_timeout", None)
    if timeout is not None:
        connect_args["timeout"] = float(str(timeout))
    return url.set(query=query), connect_args
