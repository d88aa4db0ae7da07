"""uvicorn's httptools protocol with the limits a server facing clients needs.

uvicorn reads a request's head (request line and headers) with no limit of size, count or
time: one client could send a header of hundreds of MiB (all kept in memory, then answered
200), a million tiny headers (~100 bytes of memory each), or open connections and send
nothing, or a byte of header a second, holding them forever. `ollama-web serve` runs this
protocol instead (uvicorn's `http` option; `--http` on its command line), which

- answers 431 `REQUEST_HEADERS_TOO_LARGE` and closes once the request line and headers
  exceed MAX_HEAD_BYTES, or the headers number more than MAX_HEADERS (nginx allows 32 KiB;
  Apache 100 headers);
- closes a connection whose request head is not complete HEAD_TIMEOUT_SECONDS after its
  first byte, or after the connection opened (or the previous answer ended): silently when
  nothing of a request came, else with 408 `REQUEST_TIMEOUT`;
- closes, with 408, a request whose body stops arriving for BODY_IDLE_TIMEOUT_SECONDS,
  as nginx's `client_body_timeout`, or arrives slower than BODY_MIN_RATE bytes a second
  once its first BODY_TIMEOUT_SECONDS are spent (each BODY_MIN_RATE bytes received buy
  one more second, as Apache's mod_reqtimeout `body=60,MinRate=500`): a byte every 59 s
  would otherwise hold a connection for days. Time the application leaves the body
  unread does not count;
- aborts a connection whose client takes nothing of an answer for SEND_STALL_SECONDS
  (its unsent bytes do not go down; checked while the socket is full): an answer waiting
  for a client that does not read stays in memory, 9 MB for a large conversation, 119 MB
  for a long answer's replay, for as long as the client keeps the connection (nginx's
  `send_timeout`). A slow client that reads is never cut: only no progress counts.

Answers are the API's error shape, with the security headers every response carries
(middleware/security_headers.py: the API's, less HSTS, which needs to know the request came
over HTTPS) and the server's `date`. The request id is new: no application saw the request;
it is sent as `X-Request-ID` too, and the refusal has its line in access.log (method `-`,
route `<unmatched>`, the peer's address: no proxy header was read).

It also sends each response's head with the first piece of its body, in one write: uvicorn
writes the head as soon as the application starts its response, then every body chunk on
its own, so each answer took two `send` calls and woke its client twice (`_HeadHold`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ollama_web.core.errors import encode_error
from ollama_web.middleware.request_context import log_access_line
from ollama_web.middleware.security_headers import security_headers

logger = logging.getLogger("ollama_web.http")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_SECONDS = 30.0
BODY_IDLE_TIMEOUT_SECONDS = 60.0
BODY_TIMEOUT_SECONDS = 60.0
BODY_MIN_RATE = 500
LINGER_SECONDS = 2.0
SEND_STALL_SECONDS = 60.0
SEND_CHECKS = 6
"""How many times, in SEND_STALL_SECONDS, a full socket's unsent bytes are looked at."""

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _HeadHold:
    """A response's transport (uvicorn's `RequestResponseCycle.transport`) that holds the
    response head back until the first body chunk, then writes both at once. A head with no
    chunk in the same step of the loop (an application that answers slowly, or never) goes
    out on its own at the end of that step; so does one before the connection closes."""

    __slots__ = ("_head", "_loop", "_transport", "_written")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._written = False
        """The head was written (or held): later writes are body chunks."""

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif self._written or data == _CONTINUE:
            self._transport.write(data)
        else:
            self._written = True
            self._head = data
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request that was answered."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS
    head_timeout_seconds = HEAD_TIMEOUT_SECONDS
    body_idle_timeout_seconds = BODY_IDLE_TIMEOUT_SECONDS
    body_timeout_seconds = BODY_TIMEOUT_SECONDS
    body_min_rate = BODY_MIN_RATE

    _body_deadline = 0.0
    """When the body must have ended at the least rate (moved on by what arrives)."""

    _timer: asyncio.TimerHandle | None = None
    _refused = False
    _head_bytes = 0
    _header_count = 0
    _in_request = False
    """A byte of the current request has come (a timeout then deserves an answer)."""
    _in_body = False
    _ends = 0
    """Heads and messages that ended: the bytes after them may start a new head."""
    _head_bytes_received = 0
    """Bytes received since the last head or message ended (none ended in them)."""
    _hold: _HeadHold | None = None
    """The transport of the latest request's response (`_HeadHold`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_send_watch()
        super().connection_lost(exc)

    # -- a client that takes nothing of its answer

    send_stall_seconds = SEND_STALL_SECONDS
    _send_watch: asyncio.TimerHandle | None = None
    _unsent = 0
    _sent_last_at = 0.0

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_watch is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._sent_last_at = self.loop.time()
            self._watch_send()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_watch()

    def _watch_send(self) -> None:
        self._send_watch = self.loop.call_later(
            self.send_stall_seconds / SEND_CHECKS, self._check_send
        )

    def _stop_send_watch(self) -> None:
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None

    def _check_send(self) -> None:
        self._send_watch = None
        # Closing (the answer ended: a keep-alive or head timeout) is no reason to stop: a
        # closing transport still holds what it has to send, until it is sent.
        unsent, now = self.transport.get_write_buffer_size(), self.loop.time()
        if not unsent:
            return
        if unsent < self._unsent:
            self._unsent, self._sent_last_at = unsent, now
        elif now - self._sent_last_at >= self.send_stall_seconds:
            logger.info(
                "closed a connection from %s: its client took nothing of its answer for %.0f s "
                "(%d bytes unsent)",
                f"{self.client[0]}:{self.client[1]}" if self.client else "-",
                now - self._sent_last_at,
                unsent,
            )
            self.transport.abort()
            return
        self._watch_send()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, except that a request refused by a callback is not a parse error."""
        if self._refused:
            return
        if self._in_body:
            self._body_deadline += len(data) / self.body_min_rate
            self._arm_body()
        self._unset_keepalive_if_required()
        ends_before = self._ends
        try:
            self.parser.feed_data(data)
            if self._ends != ends_before:
                self._head_bytes_received = 0
            elif not self._in_body:
                # httptools hands over a header only once its line ends: count what came.
                self._head_bytes_received += len(data)
                if self._head_bytes_received > self.max_head_bytes:
                    self._refuse_head()
        except httptools.HttpParserError:
            if not self._refused:  # a HeadRefused comes out of httptools wrapped as one
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # ----------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._header_count = 0
        self._in_request = True
        if self._timer is None:  # a pipelined request: the clock runs from its first byte
            self._arm(self.head_timeout_seconds)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), headers=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, headers=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._flush_head()  # a response under way (this request is pipelined) goes out first
        self._ends += 1
        self._disarm()
        self._in_body = True
        self._body_deadline = self.loop.time() + self.body_timeout_seconds
        self._arm_body()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:  # not an upgrade: a response to come, its task not run yet
            self._hold = _HeadHold(self.transport, self.loop)
            cycle.transport = self._hold  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        """Bytes that are not HTTP/1.1: the API's error shape, as for 408 and 431 (uvicorn
        answers text); a response under way keeps its place before this one."""
        self._refuse(400, "BAD_REQUEST", "The request is not valid HTTP/1.1.", {})

    def _flush_head(self) -> None:
        if self._hold is not None:
            self._hold.flush()

    def on_message_complete(self) -> None:
        self._ends += 1
        self._disarm()
        self._in_body = False
        self._in_request = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn's keep-alive timer closes an idle connection, but any byte cancels it:
        # the head must still be complete in time.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm(self.head_timeout_seconds)

    # ----------------------------------------------------------- limits

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._header_count += headers
        if self._head_bytes > self.max_head_bytes or self._header_count > self.max_headers:
            self._refuse_head()
            raise HeadRefused

    def _refuse_head(self) -> None:
        self._refuse(
            431,
            "REQUEST_HEADERS_TOO_LARGE",
            "The request line and headers are too large.",
            {"max_bytes": self.max_head_bytes, "max_headers": self.max_headers},
        )

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _arm_body(self) -> None:
        """The body's timer: idle for too long, or behind its least rate, whichever first."""
        remaining = self._body_deadline - self.loop.time()
        self._arm(max(0.0, min(self.body_idle_timeout_seconds, remaining)))

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._refused:
            return
        cycle = self.cycle
        if self._in_body:
            if self.flow.read_paused:
                # Not the client's doing: the application has not read what came yet.
                self._body_deadline = self.loop.time() + self.body_timeout_seconds
                self._arm_body()
                return
            if cycle.response_started:
                # Answered before the body was read: end the connection after the answer.
                cycle.keep_alive = False
                return
            cycle.disconnected = True  # the application's receive() ends
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # An answer is still being sent; a request pipelined behind it is late: the
            # connection ends after that answer.
            cycle.keep_alive = False
            return
        elif not self._in_request:
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, "REQUEST_TIMEOUT", "The request was not received in time.", {})

    def _refuse(self, status: int, code: str, message: str, details: dict[str, int]) -> None:
        self._refused = True
        self._disarm()
        self._flush_head()
        request_id = uuid.uuid4().hex
        body = encode_error(code, message, details, request_id)
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
        headers += security_headers(headers, hsts=False)
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        head += b"".join(b"%s: %s\r\n" % header for header in headers)
        self.transport.write(head + b"\r\n" + body)
        client = self.client[0] if self.client else "-"
        log_access_line("-", "<unmatched>", status, 0.0, request_id, "-", client)
        # Closing with unread input would reset the connection, and the client might never
        # read the answer: stop sending, discard what still comes for a moment, then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
