"""Refuse bodies over MAX_REQUEST_BYTES while they stream in, not after reading them all.

A body announced over the limit (`Content-Length`) is refused before a byte of it is read;
one that comes chunked is read up to the limit, then refused: 413 PAYLOAD_TOO_LARGE, with
`details: {"max_bytes": N}` either way.

A 413 answered before the body ended (these, and a route's own refusal of a body unread:
login's 64 KiB, `auth.dependencies.authenticate_before_body`) leaves the client sending.
Closing the connection then would reset it: the client's send fails (ECONNRESET) and most
clients (httpx, requests, a browser's fetch) report a network error, never reading the 413.
So, as nginx's lingering close does, the rest of the body is read and dropped chunk by
chunk (nothing is kept: the server holds no more than its read buffer) until it ends, the
client leaves, LINGER_SECONDS pass or LINGER_MIN_BYTES (twice the limit when that is more)
are dropped. The response's end waits for that (the server's `receive` gives nothing more
once a response has ended); then the connection closes (`Connection: close`: it is not
kept open to discard any amount). A client still sending past either bound is reset: the
bounds are what one refused request may cost. Behind nginx none of this happens: nginx
refuses a body over `client_max_body_size` itself.

Any other answer given before its body was read (a 401 before a body is read, a route
that takes none) is treated the same way when more than KEPT_UNREAD_BYTES of the body,
or an unknown amount, is left: the server would otherwise read and drop any amount of
it, the connection kept open, before the next request.

A route may take less than MAX_REQUEST_BYTES (login: 64 KiB, see
`auth.dependencies.route_body_limit`). The 413 tells the client the limit of the route it
called, whichever check refused the body first: a body announced over MAX_REQUEST_BYTES
is refused here, before routing, so the route is looked up for its 413 (each route's own
matching, ~2 us a route, only for a refused request); a chunked one reaches its route's
own limit first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.core.errors import BodyRejected, PayloadTooLargeError, encode_error
from ollama_web.core.routes import each_route

LINGER_SECONDS = 5.0
"""How long, at most, the rest of a refused body is read after its 413."""
LINGER_MIN_BYTES = 64 * 1024 * 1024
"""The least of a refused body's rest read and dropped after its 413 (at most: twice the
limit when that is more), enough for a body of several times MAX_REQUEST_BYTES' default."""
KEPT_UNREAD_BYTES = 64 * 1024
"""The most of a body an answer may leave unread (a 401 before it, a route that takes
none) with the connection kept open: the server reads and drops the rest before the next
request. Past it, or of unknown length, the rest is read and dropped within the bounds
of a 413's, and the connection closes."""
TOO_LARGE = "The request body is too large."
RouteBodyLimit = Callable[[Request], "int | None"]
"""`app.state.route_body_limit`: a routed request's own limit, None when it has none."""


def _announced_length(scope: Scope) -> int | None:
    """The body's `Content-Length`; None when it comes chunked, 0 when there is none."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0  # the server refused a bad one
        if name == b"transfer-encoding":
            return None
    return 0


class BodyTooLarge(BodyRejected):
    """Raised from `receive`: the app's handler renders it as the 413 of a body announced
    over the limit, `max_bytes` and all."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(PayloadTooLargeError(TOO_LARGE, details={"max_bytes": max_bytes}))
        self.max_bytes = max_bytes


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str((scope.get("state") or {}).get("request_id", ""))
        announced = _announced_length(scope)
        received = 0
        body_ended = False
        response_started = False
        lingering = False

        async def limited_receive() -> Message:
            nonlocal received, body_ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_ended = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLarge(self._limit_for(scope))
            else:  # the client left
                body_ended = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started, lingering
            if message["type"] == "http.response.start":
                response_started = True
                unread_over = announced is None or announced - received > KEPT_UNREAD_BYTES
                if not body_ended and (message["status"] == 413 or unread_over):
                    lingering = True
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            elif lingering and not message.get("more_body", False):
                message = {**message, "more_body": True}  # ended once the body is read
            await send(message)

        try:
            if announced is not None and announced > self.max_bytes:
                await self._reject(tracking_send, request_id, self._limit_for(scope))
            else:
                await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if not response_started:
                await self._reject(tracking_send, request_id, exc.max_bytes)
        if lingering:
            await self._discard_body(receive)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _limit_for(self, scope: Scope) -> int:
        """The limit a refused body is told: its route's own when that is smaller."""
        app = scope.get("app")
        limit_of: RouteBodyLimit | None = getattr(
            getattr(app, "state", None), "route_body_limit", None
        )
        if limit_of is None or app is None:
            return self.max_bytes
        for route in each_route(app.routes):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                served = getattr(route, "original_route", route)  # what the router puts
                limit = limit_of(Request({**scope, **child_scope, "route": served}))
                return self.max_bytes if limit is None else min(limit, self.max_bytes)
        return self.max_bytes

    async def _discard_body(self, receive: Receive) -> None:
        """Read the rest of a refused body and drop it, within the bounds (module doc)."""
        dropped, most = 0, max(LINGER_MIN_BYTES, 2 * self.max_bytes)
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while dropped <= most:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    dropped += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            return

    async def _reject(self, send: Send, request_id: str, limit: int) -> None:
        details = {"max_bytes": limit}
        body = encode_error("PAYLOAD_TOO_LARGE", TOO_LARGE, details, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
