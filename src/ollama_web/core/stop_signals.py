"""Telling the app that the server was asked to stop, when it is asked.

uvicorn answers SIGTERM or SIGINT by closing its listeners and waiting for open requests to
end; the app hears nothing until its lifespan shuts down, after those requests ended or were
cancelled. An event stream ends only when its answer does, so the app must learn of the stop
while the streams are still open: `on_stop_signal` runs a callback in the event loop at each
stop signal, after the handler in place (the server's own) has taken it.

Nothing is installed unless a server handles those signals (its handler is a method of an
object): not under a test runner, nor in a thread other than the main one.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHAINED = "_ollama_web_stop_signal"


def on_stop_signal(callback: Callable[[int], None]) -> Callable[[], None]:
    """Call `callback(n)` in the running loop at the n-th stop signal; returns a function
    that takes the handlers out again (where nobody replaced them since)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    received = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        previous[signum](signum, frame)
        loop.call_soon_threadsafe(callback, received)

    setattr(handle, CHAINED, True)
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        # A server's (uvicorn.Server.handle_exit), or one of ours chained onto it.
        if inspect.ismethod(handler) or getattr(handler, CHAINED, False):
            previous[signum] = handler
            signal.signal(signum, handle)

    def remove() -> None:
        """Lifespans end in the reverse order they started: each finds its own in place."""
        for signum, handler in previous.items():
            if signal.getsignal(signum) is handle:
                signal.signal(signum, handler)

    return remove
