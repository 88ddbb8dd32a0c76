"""The HTTP client side: a lean HTTP/1.1 keep-alive client on asyncio and httptools.

    UpstreamError                 nothing usable came back from the replica
    ├── ConnectFailed             refused, reset or closed before a response head
    ├── UpstreamTimeout           no byte within the read timeout
    └── StreamBroken              the response body ended early or broke

Why not aiohttp here: a proxied request needs one thing of a client (write a request head
and body in one go, parse the answer, keep the connection), and aiohttp's request and
response objects, payload registry, header multidicts and tracing cost more per request
than the whole rest of the proxy's own work. This client writes each request with one
`transport.write`, parses with llhttp (the C parser uvicorn uses), and hands the body on
in the pieces the socket gives. The health prober keeps its own aiohttp session.

The proxy never forwards the client's headers: it builds the replica's headers itself,
so hop-by-hop headers and the client's Authorization cannot reach a replica.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncGenerator
from typing import cast
from urllib.parse import urlsplit

import httptools

from tera_proxy.config import UpstreamConfig
from tera_proxy.pool import Replica

MAX_ERROR_BODY = 64 * 1024
# Reading from a replica pauses while this much of its body waits for a slow client
# (and resumes once the client has taken it).
HIGH_WATER = 256 * 1024
# An idle keep-alive connection older than this is closed instead of reused (vLLM's own
# server drops idle connections after 5 s; a reused one that was dropped is retried).
IDLE_TTL = 4.0


class UpstreamError(Exception):
    """Nothing usable came back from a replica; safe to retry if nothing was sent."""


class ConnectFailed(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class StreamBroken(UpstreamError):
    pass


class _Stale(ConnectFailed):
    """A reused keep-alive connection closed before any byte of the response."""


class Response:
    """One response being read; the httptools parser calls the `on_*` methods."""

    __slots__ = (
        "_buffered",
        "_chunked",
        "_conn",
        "_error",
        "_has_length",
        "_loop",
        "_name",
        "_timeout",
        "_unbounded",
        "_waiter",
        "content_type",
        "eof",
        "head",
        "headers",
        "keep_alive",
        "parser",
        "pieces",
        "status",
    )

    def __init__(self, conn: _Connection, name: str, timeout: float) -> None:
        self._conn = conn
        self._loop = conn.loop
        self._name = name
        self._timeout = timeout
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._buffered = 0
        # read() collects the whole body anyway: no pausing while it does.
        self._unbounded = False
        self._chunked = False
        self._has_length = False
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content_type = ""
        self.pieces: deque[bytes] = deque()
        self.head = False
        self.eof = False
        self.keep_alive = False

    # -- parser callbacks (called from data_received) --------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = text
        if key == "content-type":
            self.content_type = text
        elif key == "content-length":
            self._has_length = True
        elif key == "transfer-encoding":
            self._chunked = "chunked" in text.lower()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._unbounded:
            self._conn.pause()
        self._wake()

    def on_message_complete(self) -> None:
        self.eof = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- from the connection -----------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.eof:
            self._error = error
        self._wake()

    def _lost(self) -> None:
        """The connection closed under this response."""
        if self.eof:
            return
        if self.head and not self._has_length and not self._chunked:
            self.eof = True  # a body delimited by the connection's end
            self._wake()
        elif self.head:
            self._fail(StreamBroken(f"{self._name}: the response broke: connection closed"))
        elif self._conn.reused:
            self._fail(_Stale(f"{self._name}: the kept-alive connection was closed"))
        else:
            self._fail(ConnectFailed(f"{self._name}: the connection closed before a response"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self._fail(UpstreamTimeout(f"{self._name}: no response within the timeout"))

    async def _wait(self) -> None:
        self._waiter = waiter = self._loop.create_future()
        timer = self._loop.call_later(self._timeout, self._expire)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()

    # -- the reading side ----------------------------------------------------------------

    async def wait_head(self) -> None:
        while not self.head:
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self) -> bytes:
        pieces = self.pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def readany(self) -> bytes:
        """What has arrived of the body (waiting for some); b"" once it has ended.

        Data already buffered is returned after one pass of the event loop: a replica
        that generates faster than the client reads would otherwise keep this read and
        the write after it from ever suspending, and the server task that notices the
        client leaving would never run.
        """
        if self.pieces:
            await asyncio.sleep(0)
        while True:
            if self.pieces:
                return self._take()
            if self.eof:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self, limit: int | None = None) -> bytes:
        """The body to its end, or its first `limit` bytes."""
        self._unbounded = True
        self._conn.resume()
        while not self.eof and (limit is None or self._buffered < limit):
            if self._error is not None:
                raise self._error
            await self._wait()
        data = self._take() if self.pieces else b""
        return data if limit is None else data[:limit]

    def release(self) -> None:
        """Back to the pool when the response was read to its end; else closed."""
        conn = self._conn
        if self.eof and self.keep_alive and not self.pieces and conn.open:
            conn.give_back(self)
        else:
            conn.close()

    def close(self) -> None:
        self._conn.close()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "busy",
        "idle_since",
        "loop",
        "open",
        "origin",
        "reading",
        "response",
        "reused",
        "transport",
    )

    def __init__(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.open = False
        self.reused = False
        self.reading = True
        self.busy = False  # holds one of the client's connection slots
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            response.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(StreamBroken(f"{response._name}: unparsable response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.origin.dropped(self)
        if self.response is not None:
            self.response._lost()

    # Both idempotent: `reading` is the one record of whether the socket is paused.
    def pause(self) -> None:
        if self.transport is not None and self.reading:
            self.reading = False
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.reading and self.open:
            self.reading = True
            self.transport.resume_reading()

    def give_back(self, response: Response) -> None:
        if self.response is response:
            self.response = None
            self.origin.put(self)

    def close(self) -> None:
        was_open = self.open
        self.open = False
        if self.transport is not None:
            self.transport.close()
        if was_open:
            self.origin.dropped(self)


class _Origin:
    """One replica address: its idle connections and how to open a new one."""

    def __init__(self, client: Upstream, url: str) -> None:
        parts = urlsplit(url)
        self.client = client
        self.host = parts.hostname or "127.0.0.1"
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context()
        self.port = parts.port or (443 if self.ssl else 80)
        self.prefix = parts.path.rstrip("/").encode()
        self.authority = parts.netloc.encode("idna")
        self.idle: list[_Connection] = []
        self.heads: dict[tuple[str, str | None], bytes] = {}

    def head(self, path: str, api_key: str | None) -> bytes:
        """The constant part of a request head, built once per path."""
        head = self.heads.get((path, api_key))
        if head is None:
            lines = [
                b"POST " + self.prefix + path.encode() + b" HTTP/1.1",
                b"Host: " + self.authority,
                b"Content-Type: application/json",
            ]
            if api_key:
                lines.append(b"Authorization: Bearer " + api_key.encode())
            head = self.heads[(path, api_key)] = b"\r\n".join(lines) + b"\r\n"
        return head

    def drop_idle(self) -> None:
        for conn in self.idle[:]:
            conn.close()
        self.idle.clear()

    async def connect(self, *, fresh: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        while self.idle and not fresh:
            conn = self.idle.pop()
            if conn.open and loop.time() - conn.idle_since < IDLE_TTL:
                conn.reused = True
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.client.config.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"{self.host}:{self.port}: connect timed out") from exc
        except OSError as exc:
            raise ConnectFailed(f"{self.host}:{self.port}: {type(exc).__name__}") from exc
        return conn

    def put(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)
        self.client._unbusy(conn)

    def dropped(self, conn: _Connection) -> None:
        if conn.busy:
            self.client._unbusy(conn)
            return
        try:
            self.idle.remove(conn)
        except ValueError:
            pass


class Upstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._origins: dict[str, _Origin] = {}
        self._busy = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False
        for origin in self._origins.values():
            origin.drop_idle()

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = _Origin(self, url)
        return origin

    async def _slot(self) -> None:
        while self._busy >= self.config.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # woken, then cancelled: the next in line goes
                elif waiter in self._waiting:
                    self._waiting.remove(waiter)
                raise
        self._busy += 1

    def _unbusy(self, conn: _Connection) -> None:
        if conn.busy:
            conn.busy = False
            self._slot_free()

    def _slot_free(self) -> None:
        self._busy -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiting and self._busy < self.config.max_connections:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def post(self, replica: Replica, path: str, body: bytes, request_id: str) -> Response:
        """Send the request; return once the response head has arrived."""
        if not self._started:
            raise RuntimeError("Upstream.start() was not awaited")
        origin = self._origin(replica.url)
        head = origin.head(path, replica.api_key) + (
            b"Content-Length: %d\r\nX-Request-Id: %s\r\n\r\n" % (len(body), request_id.encode())
        )
        for fresh in (False, True):
            await self._slot()
            try:
                conn = await origin.connect(fresh=fresh)
            except BaseException:
                self._slot_free()
                raise
            conn.busy = True
            response = Response(conn, replica.name, self.config.read_timeout)
            conn.response = response
            try:
                assert conn.transport is not None
                conn.transport.write(head + body)
                await response.wait_head()
                return response
            except _Stale:
                # The replica dropped it while idle (restarted, or its keep-alive ran out):
                # the other idle ones are as old or older. A new connection is next.
                conn.close()
                origin.drop_idle()
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable: a new connection is never stale")


async def chunks(resp: Response) -> AsyncGenerator[bytes, None]:
    """The body as it arrives, in whatever pieces the socket gives."""
    while True:
        data = await resp.readany()
        if not data:
            return
        yield data
