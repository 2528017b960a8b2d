"""A fast HTTP/1.1 front for a service's tornado application: hot routes answered without tornado.

Tornado's HTTP server costs about 0.3 ms of CPU per request on the machines we measure on; a function
invocation should cost its own work plus little else. `HTTPFront` serves the service's port itself:
an asyncio protocol with httptools' parser (the C parser uvicorn uses) on uvloop's loop. A request
whose method and path a *fast route* claims is answered by that route's coroutine directly; every
other request is handed to the tornado `Application` unchanged (its handlers, error pages and access
log work as they do under tornado's own server; see `_TornadoExchange`).

What the front guarantees for both kinds of request:

- Keep-alive as the client asks (HTTP/1.0 only with `Connection: keep-alive`), pipelined requests
  answered in order, one at a time per connection; reading pauses while a connection has requests
  waiting, so a client cannot queue unbounded work.
- Bodies up to `max_body_size`: a larger `Content-Length` is a 413 before any of the body is read, a
  larger chunked body a 413 as soon as it passes the limit; `Expect: 100-continue` is answered. The
  request line and headers together at most `max_header_size` bytes (431 beyond), malformed
  requests a 400, connection upgrades (websockets) a 400: no service of ours serves one.
- Connections idle longer than `idle_timeout` are closed.

A fast route is `FastRoute(method, path_prefix, handler, body_limit)`; `handler(FrontRequest)` returns
a `FrontResponse`, or None to let tornado answer the request after all. `body_limit(path)`, if given,
is the largest body that path takes (a function's own payload limit), checked before the body is read
(None: `max_body_size`). An exception it raises becomes the same answer
a tornado handler's would (`stratolab.web.error_answer`, the one place errors become responses).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import httptools
from tornado import httputil, web
from tornado.concurrent import Future

log = logging.getLogger("stratolab.http")

DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_IDLE_TIMEOUT_S = 300.0
#: requests parsed but not yet answered on one connection before reading pauses (pipelining)
MAX_PIPELINED = 8
#: how long a refused client's remaining bytes are read and dropped before the connection closes
LINGER_S = 2.0
#: above this many bytes waiting to be sent on a connection, tornado handlers' flush() waits
WRITE_HIGH_WATER = 1024 * 1024


@dataclass
class FrontRequest:
    method: str
    #: the path as sent (percent-encoded), without the query string
    path: str
    query: str
    #: header names lower-cased; a repeated header keeps its last value
    headers: dict[str, str]
    body: bytes
    remote_ip: str


@dataclass
class FrontResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


FastHandler = Callable[[FrontRequest], Awaitable[FrontResponse | None]]


@dataclass(frozen=True)
class FastRoute:
    method: str
    prefix: str
    handler: FastHandler
    #: the largest body a path of this route takes, in bytes (None: the front's max_body_size)
    body_limit: Callable[[str], int | None] | None = None


def too_large(limit: int) -> FrontResponse:
    size = f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit} bytes"
    return error_response(413, f"the request body is larger than {size}")


class _Date:
    """The Date header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, email.utils.formatdate(now, usegmt=True).encode()
        return cls.value


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _safe_header(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"a header value holds a line break: {value[:60]!r}")
    return value


def encode_response(response: FrontResponse, keep_alive: bool, head: bool = False) -> bytes:
    """The bytes of a complete HTTP/1.1 answer (with Content-Length)."""
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}".encode(), b"Date: " + _Date.header()]
    for name, value in response.headers:
        lines.append(f"{name}: {_safe_header(value)}".encode("latin-1"))
    if response.status >= 200 and response.status not in (204, 304):
        lines.append(b"Content-Length: %d" % len(response.body))
    if not keep_alive:
        lines.append(b"Connection: close")
    head_bytes = b"\r\n".join(lines) + b"\r\n\r\n"
    return head_bytes if head or response.status in (204, 304) else head_bytes + response.body


def error_response(status: int, message: str) -> FrontResponse:
    import json

    return FrontResponse(status, json.dumps({"error": message}).encode(), [("Content-Type", "application/json")])


class _Context:
    """What tornado's HTTPServerRequest reads from its connection's context."""

    def __init__(self, remote_ip: str):
        self.remote_ip = remote_ip
        self.protocol = "http"
        self.trusted_downstream: set[str] = set()


class _Message:
    __slots__ = ("url", "headers", "header_bytes", "body", "body_size", "method", "version", "keep_alive",
                 "refused", "queued", "limit")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        #: an answer decided while parsing (413, 431): sent instead of handling the request
        self.refused: FrontResponse | None = None
        self.queued = False
        #: the largest body this request may have
        self.limit = 0


class HTTPFront:
    """Serve `app` (a tornado Application) on a port, with `fast_routes` answered directly."""

    def __init__(self, app: web.Application, fast_routes: tuple[FastRoute, ...] = (),
                 max_body_size: int = 64 * 1024 * 1024, max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S):
        self.app = app
        self.fast_routes = list(fast_routes)
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None

    def fast_route(self, method: str, path: str) -> FastRoute | None:
        for route in self.fast_routes:
            if method == route.method and path.startswith(route.prefix):
                return route
        return None

    def body_limit(self, method: str, path: str) -> int:
        route = self.fast_route(method, path)
        limit = route.body_limit(path) if route is not None and route.body_limit is not None else None
        return self.max_body_size if limit is None else min(limit, self.max_body_size)

    async def listen(self, port: int, address: str = "") -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host=address or None, port=port,
                                               reuse_address=True, backlog=1024)
        return self.server

    async def close(self) -> None:
        """Stop accepting; finish the requests in progress; close idle connections."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, front: HTTPFront):
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.message: _Message | None = None
        self.queue: deque[_Message] = deque()
        self.worker: asyncio.Task | None = None
        self.remote_ip = ""
        self.closed = False
        self.closing = False
        self.paused = False
        #: a refusal is queued: what else arrives is not read
        self.refusing = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.close_callbacks: list[Callable[[], None]] = []
        self.idle_handle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.remote_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.front.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        if self.idle_handle:
            self.idle_handle.cancel()
        self.can_write.set()
        for callback in self.close_callbacks:
            try:
                callback()
            except Exception:
                log.exception("a connection-close callback failed")
        self.close_callbacks.clear()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.refusing:
            return
        if self.idle_handle:
            self.idle_handle.cancel()
            self.idle_handle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse_now(400, "connection upgrades (websockets) are not served here")
        except httptools.HttpParserError as e:
            self._refuse_now(400, f"malformed HTTP request: {e}")

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.message = _Message()

    def on_url(self, url: bytes) -> None:
        m = self.message
        assert m is not None
        m.url += url
        m.header_bytes += len(url)
        if m.header_bytes > self.front.max_header_size and m.refused is None:
            m.refused = error_response(414, "the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        m = self.message
        assert m is not None
        m.header_bytes += len(name) + len(value) + 4
        if m.header_bytes > self.front.max_header_size:
            if m.refused is None:
                m.refused = error_response(431, f"the request's headers are larger than "
                                                f"{self.front.max_header_size} bytes")
            return
        m.headers.append((name, value))

    def on_headers_complete(self) -> None:
        m = self.message
        assert m is not None
        m.method = self.parser.get_method().decode("latin-1")
        m.version = self.parser.get_http_version()
        m.keep_alive = self.parser.should_keep_alive()
        if self.parser.should_upgrade() and m.refused is None:
            m.refused = error_response(400, "connection upgrades (websockets) are not served here")
        if m.refused is not None:
            self._answer_refusal(m)
            return
        length = expect = None
        for name, value in m.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = value
            elif lowered == b"expect":
                expect = value
        m.limit = self.front.body_limit(m.method, m.url.decode("latin-1").partition("?")[0])
        if length is not None:
            try:
                over = int(length) > m.limit
            except ValueError:
                over = False  # the parser refuses it
            if over:
                m.refused = too_large(m.limit)
                self._answer_refusal(m)
                return
        if expect is not None and expect.lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        m = self.message
        assert m is not None
        if m.refused is not None:
            return
        m.body_size += len(body)
        if m.body_size > m.limit:
            m.refused = too_large(m.limit)
            m.body.clear()
            self._answer_refusal(m)
            return
        m.body.append(body)

    def on_message_complete(self) -> None:
        m, self.message = self.message, None
        assert m is not None
        if m.queued:
            return
        self.queue.append(m)
        if len(self.queue) >= MAX_PIPELINED and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._answer_queued())

    # --- answering -------------------------------------------------------------------------------

    async def _answer_queued(self) -> None:
        try:
            while self.queue and not self.closed:
                m = self.queue.popleft()
                if (self.paused and not self.refusing and len(self.queue) < MAX_PIPELINED // 2
                        and self.transport is not None):
                    self.transport.resume_reading()
                    self.paused = False
                keep_alive = await self._answer(m)
                if m.refused is not None:
                    self._close_lingering()
                    return
                if not keep_alive:
                    self._close()
                    return
                if not self.can_write.is_set():
                    await self.can_write.wait()
        finally:
            self.worker = None
            if self.closing and not self.queue:
                self._close()
            elif not self.closed:
                self._arm_idle()

    async def _answer(self, m: _Message) -> bool:
        """Answer one request; whether the connection stays open."""
        if m.refused is not None:
            self._write(encode_response(m.refused, keep_alive=False))
            return False
        url = m.url.decode("latin-1")
        path, _, query = url.partition("?")
        keep_alive = m.keep_alive and not self.closing
        route = self.front.fast_route(m.method, path)
        if route is not None:
            handler = route.handler
            request = FrontRequest(m.method, path, query, {n.decode("latin-1").lower(): v.decode("latin-1")
                                                           for n, v in m.headers},
                                   b"".join(m.body), self.remote_ip)
            started = time.perf_counter()
            try:
                response = await handler(request)
            except Exception as exc:
                response = _exception_response(exc, request)
            if response is not None:
                _log_access(request, response.status, started)
                try:
                    data = encode_response(response, keep_alive, head=m.method == "HEAD")
                except ValueError as exc:
                    data = encode_response(_exception_response(exc, request), keep_alive)
                self._write(data)
                return keep_alive
        exchange = _TornadoExchange(self, m, keep_alive)
        return await exchange.run()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _refuse_now(self, status: int, message: str) -> None:
        """A request the parser cannot go on with: answer it after those before it, then close."""
        if self.refusing:
            return
        m = self.message or _Message()
        self.message = None
        if not m.queued:
            m.refused = error_response(status, message)
            self._answer_refusal(m)

    def _answer_refusal(self, m: _Message) -> None:
        """Queue `m`'s refusal now, without waiting for its body: it is answered after the requests
        before it, then the connection closes; nothing more of what this client sends is read."""
        m.queued = True
        m.keep_alive = False
        self.refusing = True
        self.queue.append(m)
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._answer_queued())

    def _arm_idle(self) -> None:
        if self.closed:
            return
        if self.idle_handle:
            self.idle_handle.cancel()
        self.idle_handle = asyncio.get_running_loop().call_later(self.front.idle_timeout, self._close)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _close_lingering(self) -> None:
        """Close after a refusal while the client may still be sending: closing with unread data
        would reset the connection and could destroy the answer before the client reads it. So: end
        our side, read and drop what still comes for a moment, then close."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self.refusing = True
        if self.paused:
            transport.resume_reading()
            self.paused = False
        asyncio.get_running_loop().call_later(LINGER_S, self._close)

    def close_when_idle(self) -> None:
        self.closing = True
        if self.worker is None and not self.queue and self.message is None:
            self._close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


ACCESS_LOG = logging.getLogger("tornado.access")


def _log_access(request: FrontRequest, status: int, started: float) -> None:
    """Fast routes' access log, in tornado's format: a success at debug level (these are the hot
    path; services count them in their metrics), a 4xx a warning, a 5xx an error."""
    level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if ACCESS_LOG.isEnabledFor(level):
        ACCESS_LOG.log(level, "%d %s %s (%s) %.2fms", status, request.method,
                       request.path + ("?" + request.query if request.query else ""), request.remote_ip,
                       1000.0 * (time.perf_counter() - started))


def _exception_response(exc: Exception, request: FrontRequest) -> FrontResponse:
    import json

    from stratolab.web import error_answer

    status, body = error_answer(exc)
    if "error_id" in body:
        log.error("error %s answering %s %s", body["error_id"], request.method, request.path[:200], exc_info=exc)
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    if status == 401:
        headers.append(("WWW-Authenticate", 'token realm="stratolab"'))
    return FrontResponse(status, json.dumps(body).encode(), headers)


class _TornadoExchange(httputil.HTTPConnection):
    """One request handed to the tornado Application: tornado's side of an HTTP connection, written
    onto the front's transport. Bodies without a Content-Length are sent chunked (HTTP/1.1) or end
    with the connection (HTTP/1.0), as tornado's own server does."""

    def __init__(self, conn: _Connection, message: _Message, keep_alive: bool):
        self.conn = conn
        self.message = message
        self.keep_alive = keep_alive
        self.context = _Context(conn.remote_ip)
        self.chunking = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._close_callback: Callable[[], None] | None = None
        conn.close_callbacks.append(self._connection_closed)

    async def run(self) -> bool:
        m = self.message
        headers = httputil.HTTPHeaders()
        for name, value in m.headers:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        start_line = httputil.RequestStartLine(m.method, m.url.decode("latin-1"), f"HTTP/{m.version}")
        delegate = self.conn.front.app.start_request(self.conn, self)
        try:
            await _maybe(delegate.headers_received(start_line, headers))
            body = b"".join(m.body)
            if body:
                await _maybe(delegate.data_received(body))
            delegate.finish()
            await self.done
        finally:
            if self._connection_closed in self.conn.close_callbacks:
                self.conn.close_callbacks.remove(self._connection_closed)
        return self.keep_alive and not self.conn.closed

    def _connection_closed(self) -> None:
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            callback()
        if not self.done.done():
            self.done.set_result(None)

    # --- httputil.HTTPConnection -----------------------------------------------------------------

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def write_headers(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                      headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> Future[None]:
        assert isinstance(start_line, httputil.ResponseStartLine)
        code = start_line.code
        has_body = self.message.method != "HEAD" and code not in (204, 304) and code >= 200
        self.chunking = has_body and "Content-Length" not in headers and self.message.version == "1.1"
        if has_body and "Content-Length" not in headers and not self.chunking:
            self.keep_alive = False  # an HTTP/1.0 body without a length ends with the connection
        if self.chunking:
            headers["Transfer-Encoding"] = "chunked"
        if not self.keep_alive:
            headers["Connection"] = "close"
        elif self.message.version == "1.0":
            headers["Connection"] = "keep-alive"
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines.extend(f"{name}: {_safe_header(str(value))}" for name, value in headers.get_all())
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if chunk and has_body:
            data += self._chunk(chunk)
        self.conn._write(data)
        return self._written()

    def write(self, chunk: bytes) -> Future[None]:
        if chunk and self.message.method != "HEAD":
            self.conn._write(self._chunk(chunk))
        return self._written()

    def finish(self) -> None:
        if self.chunking:
            self.conn._write(b"0\r\n\r\n")
        if not self.done.done():
            self.done.set_result(None)

    def _chunk(self, chunk: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunking else chunk

    def _written(self) -> Future[None]:
        future: Future[None] = Future()
        if self.conn.can_write.is_set() or self.conn.closed:
            future.set_result(None)
        else:
            async def wait() -> None:
                await self.conn.can_write.wait()
                future.set_result(None)

            asyncio.get_running_loop().create_task(wait())
        return future


async def _maybe(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result

