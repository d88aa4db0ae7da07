"""The `ollama-web` command: serve, migrate, and the commands each domain registers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ollama_web import __version__
from ollama_web.core.config import MAX_WORKERS, Settings
from ollama_web.core.startup import (
    EXIT_BROKEN_PIPE,
    load_settings_or_exit,
    run_database_command,
)

SHUTDOWN_MARGIN_SECONDS = 5
APP = "ollama_web.main:app"
HTTP_PROTOCOL = "ollama_web.core.http_guard:GuardedHttpToolsProtocol"

# Modules exposing `register(subparsers)`; each adds its own subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "ollama_web.auth.cli",
    "ollama_web.backups.cli",
)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ollama_web.core.directories import prepare_directories_or_exit
    from ollama_web.metrics.environment import export_multiprocess_dir

    settings = load_settings_or_exit()
    # Before anything starts (the migration, the workers): a DATA_DIR or LOG_DIR that
    # cannot be used is one line and exit 78.
    prepare_directories_or_exit(settings)
    # The workers inherit it; prometheus-client reads it from the environment at import.
    export_multiprocess_dir(settings)
    workers = None if args.reload else _given(args.workers, settings.workers)
    if workers is not None:
        # The workers read it (their settings): with several, they count rate limits together.
        os.environ["WORKERS"] = str(workers)
    if workers is not None and workers > 1 and settings.migrate_on_startup:
        # Once, here, before the workers start: each would otherwise try it at once. A
        # database that cannot be reached is one line and exit 3, as for `migrate`.
        from ollama_web.migrations.runner import upgrade_settings

        def migrate() -> int:
            asyncio.run(upgrade_settings(settings))
            return 0

        if status := run_database_command(settings, migrate):
            return status
    else:
        from ollama_web.migrations.startup import begin_early_migration, check_schema_before_serving

        def check() -> int:  # a schema this version cannot use: one line and exit 3
            check_schema_before_serving(settings)
            return 0

        if status := run_database_command(settings, check):
            return status
        if workers == 1 and settings.migrate_on_startup:
            # This process is the server: a new database gets its schema while it starts.
            begin_early_migration(settings)
    # Open streams end by SHUTDOWN_GRACE_SECONDS (their answers stored interrupted); a
    # little more for those final writes before uvicorn cancels what is left.
    grace = math.ceil(settings.shutdown_grace_seconds) + SHUTDOWN_MARGIN_SECONDS
    options: dict[str, Any] = {
        "host": args.host or settings.host,
        "port": _given(args.port, settings.port),
        "workers": workers,
        "reload": args.reload,
        "loop": "auto",
        # httptools with limits on the request head's size and the time clients take.
        "http": HTTP_PROTOCOL,
        # The app itself believes X-Forwarded-For only from TRUSTED_PROXIES.
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        "timeout_graceful_shutdown": grace,
    }
    if workers is not None and workers > 1:
        return _supervise(uvicorn.Config(APP, **options))
    uvicorn.run(APP, **options)  # exits 3 itself when the server fails to start
    return 0


def _supervise(config: Any) -> int:
    """What `uvicorn.run` does for N workers, and the exit status it drops: its supervisor
    stops when a worker fails to start (its lifespan raised: an unusable secret key file,
    say) but returns normally, and a service manager would take the stop for a clean one
    (systemd's Restart=on-failure would not restart it, nor report it failed). 3, as for
    one worker."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


def _given(flag: int | None, setting: int) -> int:
    return setting if flag is None else flag


def _int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from low to high (the range the setting accepts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _migrate(args: argparse.Namespace) -> int:
    settings = load_settings_or_exit()
    return run_database_command(settings, lambda: _migrate_database(settings, args.status))


def _migrate_database(settings: Settings, status_only: bool) -> int:
    from ollama_web.migrations.runner import status_for_settings, upgrade_settings

    if status_only:
        status = asyncio.run(status_for_settings(settings))
        print(f"current: {status.current or '(empty database)'}")
        print(f"head:    {status.head}")
        if status.up_to_date:
            print("up to date")
            return 0
        print("pending: " + ", ".join(status.pending))
        return 1
    before = asyncio.run(upgrade_settings(settings))
    if before.up_to_date:
        print(f"already up to date at {before.head}")
    else:
        print(f"upgraded {before.current or '(empty database)'} -> {before.head}")
        print("applied: " + ", ".join(before.pending))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-web", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ollama-web {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default: HOST or 127.0.0.1)")
    serve.add_argument(
        "--port", type=_int_range(1, 65535), help="port, 1-65535 (default: PORT or 8000)"
    )
    serve.add_argument(
        "--workers",
        type=_int_range(1, MAX_WORKERS),
        help=f"worker processes, 1-{MAX_WORKERS} (default: WORKERS or 1)",
    )
    serve.add_argument("--reload", action="store_true", help="reload on code changes (dev)")
    serve.set_defaults(handler=_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest")
    migrate.add_argument(
        "--status", action="store_true", help="show revisions; exit 1 if migrations are pending"
    )
    migrate.set_defaults(handler=_migrate)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
        sys.stdout.flush()  # a reader that left shows here, while we can still answer it
    except BrokenPipeError:
        # `ollama-web users list | head`: stop quietly with a shell's status for SIGPIPE.
        # Python flushes stdout again at exit; pointed at /dev/null, that flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return result


if __name__ == "__main__":
    sys.exit(main())
