"""Ending asyncio tasks for good at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

RECANCEL_SECONDS = 0.1
"""A cancelled task that has not ended by then is cancelled again."""


async def cancel_until_ended(
    tasks: Iterable[asyncio.Task[Any]], what: str, bound: float, logger: logging.Logger
) -> None:
    """Cancel `tasks`, again every RECANCEL_SECONDS until they end (`bound` seconds at most).

    Once is not enough under Python 3.11: its asyncio.wait_for drops a cancel that lands as
    the call it waits for completes (fixed in 3.12), and redis-py sends every command through
    it (`Connection.send_packed_command`, with a socket timeout set). The task goes on as if
    never cancelled: the relay's listener cancelled as it subscribed, right after the start,
    then listened for good, and the shutdown waited for it (a server whose port was taken
    hung, and SIGTERM could not end it). A task still running after `bound` is left, said in
    the log.
    """
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    pending = set(tasks)
    while pending and (remaining := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_SECONDS, remaining))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: nothing to log for a task that ended either way
    if pending:
        logger.warning("%s did not end within %.0f s of shutdown; left", what, bound)
