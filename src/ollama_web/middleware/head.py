"""HEAD wherever GET is served (RFC 9110 9.3.2), answered exactly as GET would be.

A FastAPI route answers only the methods it declares: HEAD was 405 on nearly every GET
route (the docs, /metrics, the whole API). Rather than a second route (and a second OpenAPI
operation) for each, a HEAD request is handed to the routes as a GET, in a copy of its
scope; every layer outside this one (the access log, the metrics, the server itself) still
sees HEAD. Authentication, rate limiting (a read) and CSRF (a safe
method) apply as to the GET.

The response ends with its head: once `http.response.start` is sent, the body is ended at
once, and whatever the route sends after it is dropped (the server would drop it too: it
knows the request is a HEAD). Its direct path to the server (`SERVER_SEND`) goes through
here too. A route whose GET does more than build its answer can tell a HEAD by the mark
in the scope (`is_head`): the re-attach route of an answer's event stream answers the
stream's head without following the answer (a follower, even for a moment, counts as a
client of the answer: with CHAT_CONTINUE_ON_DISCONNECT=false its leaving restarts the
grace of an answer whose client left).

Innermost (just outside the routes), so what the router puts in the scope (`route`, which
the access log and the metrics name a request by) is copied back to the request's own.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.chat.sse import SERVER_SEND

HEAD_REQUEST = "ollama_web.head"
"""A scope key, True in the scope the routes see for a HEAD (whose method says GET)."""
_NOT_COPIED_BACK = frozenset({"method", SERVER_SEND, HEAD_REQUEST})


def is_head(scope: Scope) -> bool:
    """Whether the routed request (a GET to the routes) is a HEAD."""
    return HEAD_REQUEST in scope


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function: any other request goes to the app as it is, with no
        # frame of this layer held while its response streams.
        if scope["type"] == "http" and scope["method"] == "HEAD":
            return self._head(scope, receive, send)
        return self.app(scope, receive, send)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = {**scope, "method": "GET", HEAD_REQUEST: True}
        ended = False

        async def send_head_only(message: Message) -> None:
            nonlocal ended
            if ended:
                return
            if message["type"] == "http.response.start":
                ended = True
                _copy_back(inner, scope)
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        if SERVER_SEND in inner:
            inner[SERVER_SEND] = send_head_only
        try:
            await self.app(inner, receive, send_head_only)
        finally:
            _copy_back(inner, scope)


def _copy_back(inner: Scope, scope: Scope) -> None:
    for key, value in inner.items():
        if key not in _NOT_COPIED_BACK:
            scope[key] = value
