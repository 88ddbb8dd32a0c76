"""The upstream HTTP/1.1 client against raw loopback servers whose bytes the test writes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tera_proxy.config import UpstreamConfig
from tera_proxy.pool import Replica
from tera_proxy.upstream import (
    HIGH_WATER,
    ConnectFailed,
    Response,
    StreamBroken,
    Upstream,
    UpstreamTimeout,
    chunks,
)

GUARD = 5.0  # no test may run longer than this, whatever the client does
MIB = 1024 * 1024
PATH = "/v1/chat/completions"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


# -- a raw HTTP/1.1 server -----------------------------------------------------------------


@dataclass
class Request:
    line: str
    names: list[str]  # header names in order, lower-case
    headers: dict[str, str]
    body: bytes


class Conn:
    """One accepted connection, seen from the server."""

    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = len(server.conns)
        self.requests: list[Request] = []

    async def request(self) -> Request | None:
        """The next request's head and body; None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *lines = head[:-4].decode("latin-1").split("\r\n")
        names: list[str] = []
        headers: dict[str, str] = {}
        for raw in lines:
            name, _, value = raw.partition(":")
            names.append(name.strip().lower())
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(line, names, headers, body)
        self.requests.append(request)
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Handler = Callable[[Conn], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.conns: list[Conn] = []
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = Conn(self, reader, writer)
        self.conns.append(conn)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # reported by close()
            self.errors.append(exc)
        finally:
            writer.close()
            self.tasks.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.conns:
            conn.writer.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
        await asyncio.sleep(0)
        assert not self.errors, self.errors


def response(body: bytes, *, status: int = 200, headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
        % (status, len(body), headers)
    ) + body


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answering(body: bytes = b'{"ok":true}') -> Handler:
    """Answers every request on the connection with `body`, keeping it alive."""

    async def handle(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(response(body))

    return handle


def replica(url: str, api_key: str | None = None) -> Replica:
    return Replica("r1", url, frozenset({"m"}), api_key=api_key)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


@pytest.fixture
async def make_upstream() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    made: list[Upstream] = []

    async def make(**overrides: Any) -> Upstream:
        fields: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 2.0, **overrides}
        upstream = Upstream(UpstreamConfig(**fields))
        await upstream.start()
        made.append(upstream)
        return upstream

    try:
        yield make
    finally:
        for upstream in made:
            await upstream.close()


async def post(upstream: Upstream, server: Server, rid: str = "r-1") -> Response:
    return await upstream.post(replica(server.url), PATH, BODY, rid)


async def fetch(upstream: Upstream, server: Server, rid: str = "r-1") -> bytes:
    """One request read to its end and released."""
    resp = await post(upstream, server, rid=rid)
    try:
        return await resp.read()
    finally:
        resp.release()


# -- bodies ---------------------------------------------------------------------------------


async def test_content_length_body_and_head(serve, make_upstream) -> None:
    """Status, content type and lower-cased headers parsed; the body read whole."""
    payload = b'{"id":"cmpl-1","choices":[]}'
    server = await serve(answering(payload))
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert resp.headers["content-length"] == str(len(payload))
            assert await resp.read() == payload
            assert resp.eof
            assert await resp.readany() == b""
        finally:
            resp.release()

        async def teapot(conn: Conn) -> None:
            await conn.request()
            await conn.send(response(b"short", status=418, headers=b"X-Replica-Id: Abc\r\n"))

        other = await serve(teapot)
        resp = await post(upstream, other)
        try:
            assert resp.status == 418
            assert resp.headers["x-replica-id"] == "Abc"
            assert await resp.read(3) == b"sho"
        finally:
            resp.close()


async def test_chunked_body_in_pieces(serve, make_upstream) -> None:
    """Each chunk is handed on as it arrives; together they are the body exactly."""
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n", b"data: [DONE]\n\n"]
    received = asyncio.Queue[None]()

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(CHUNKED_HEAD)
        for piece in pieces:
            await asyncio.sleep(0.01)
            await conn.send(chunk(piece))
            await received.get()  # the client has this piece before the next is sent
        await conn.send(b"0\r\n\r\n")
        await conn.request()

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            assert resp.headers["transfer-encoding"] == "chunked"
            assert not resp.eof
            got: list[bytes] = []
            async for data in chunks(resp):
                got.append(data)
                received.put_nowait(None)
            assert got == pieces
            assert b"".join(got) == b"".join(pieces)
            assert resp.eof
            assert await resp.readany() == b""
        finally:
            resp.release()


async def test_body_delimited_by_close(serve, make_upstream) -> None:
    """No Content-Length, not chunked: the body ends when the server closes, no error."""

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        await asyncio.sleep(0.02)
        await conn.send(b"second part")
        conn.writer.close()

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            assert await resp.read() == b"first part, second part"
            assert resp.eof
            assert not resp.keep_alive
        finally:
            resp.release()
        resp = await post(upstream, server)  # the closed connection was not pooled
        resp.close()
        assert len(server.conns) == 2


# -- keep-alive -----------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(serve, make_upstream) -> None:
    """Five requests, each read and released, go over one TCP connection."""
    server = await serve(answering(b'{"n":1}'))
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        for i in range(5):
            assert await fetch(upstream, server, rid=f"r-{i}") == b'{"n":1}'
    assert len(server.conns) == 1
    assert [r.headers["x-request-id"] for r in server.conns[0].requests] == [
        f"r-{i}" for i in range(5)
    ]


async def test_idle_connection_closed_by_server_is_replaced(serve, make_upstream) -> None:
    """The server drops the kept-alive connection; the client sends on it before it
    notices, and the request goes through on a fresh connection."""
    server = await serve(answering())
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        await fetch(upstream, server)
        server.conns[0].writer.close()
        # No await between the server's close and the send: the client cannot have
        # seen the close yet and writes onto the dead connection.
        resp = await post(upstream, server, rid="r-2")
        try:
            assert resp.status == 200
            assert await resp.read() == b'{"ok":true}'
        finally:
            resp.release()
    assert len(server.conns) == 2
    assert [r.headers["x-request-id"] for r in server.conns[1].requests] == ["r-2"]


async def test_replica_restart_drops_every_idle_connection(serve, make_upstream) -> None:
    """Three kept-alive connections die together (the replica restarted): the next request
    goes through on one new connection, and the other dead ones are not tried."""

    async def handle(conn: Conn) -> None:
        while await conn.request() is not None:
            if conn.index < 3 and len(conn.requests) == 2:
                return  # the restarted replica: the request dies with the connection
            await conn.send(response(b'{"ok":true}'))

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        held = [await post(upstream, server, rid=f"r-{i}") for i in range(3)]
        for resp in held:
            await resp.read()
            resp.release()
        assert len(server.conns) == 3
        assert await fetch(upstream, server, rid="after") == b'{"ok":true}'
    # One dead connection was tried, then a new one; the two other idle ones were dropped.
    assert len(upstream._origins[server.url].idle) == 1
    assert len(server.conns) == 4
    assert sum(len(c.requests) for c in server.conns[:3]) == 4
    assert [r.headers["x-request-id"] for r in server.conns[3].requests] == ["after"]


async def test_reused_connection_closed_without_answer_is_retried(serve, make_upstream) -> None:
    """The server takes the request on the reused connection and closes it without a
    byte of answer: the client sends it again on a new connection."""

    async def handle(conn: Conn) -> None:
        while await conn.request() is not None:
            if conn.index == 0 and len(conn.requests) == 2:
                return  # closes without replying
            await conn.send(response(b'{"ok":true}'))

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        await fetch(upstream, server, rid="r-1")
        assert await fetch(upstream, server, rid="r-2") == b'{"ok":true}'
    assert len(server.conns) == 2
    assert [len(c.requests) for c in server.conns] == [2, 1]
    assert server.conns[1].requests[0].body == BODY
    assert server.conns[1].requests[0].headers["x-request-id"] == "r-2"


async def test_unread_response_is_not_reused(serve, make_upstream) -> None:
    """release() of a response not read to its end closes the connection."""
    first_closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(response(b'{"long":"' + b"x" * 1000 + b'"}'))
        if not first_closed.done():
            first_closed.set_result(conn.index)

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        await asyncio.sleep(0.05)  # the whole body has arrived, unread
        resp.release()
        await fetch(upstream, server)
        assert await asyncio.wait_for(first_closed, 1.0) == 0  # the server saw it end
    assert len(server.conns) == 2


async def test_max_connections_queues_the_second_request(serve, make_upstream) -> None:
    """With one connection allowed, a second request waits for the first's release,
    then goes over the same connection."""
    server = await serve(answering())
    upstream = await make_upstream(max_connections=1)
    async with asyncio.timeout(GUARD):
        first = await post(upstream, server, rid="a")
        second = asyncio.create_task(post(upstream, server, rid="b"))
        try:
            await asyncio.sleep(0.05)
            assert not second.done()
            assert len(server.requests) == 1
            assert await first.read() == b'{"ok":true}'
            first.release()
            resp = await second
            assert await resp.read() == b'{"ok":true}'
            resp.release()
        finally:
            first.close()
            if not second.done():
                second.cancel()
    assert len(server.conns) == 1
    assert [r.headers["x-request-id"] for r in server.conns[0].requests] == ["a", "b"]


async def test_cancelled_waiter_passes_its_slot_on(serve, make_upstream) -> None:
    """A queued request cancelled just after being handed the free connection slot must
    not take the slot with it: the next queued request proceeds."""
    server = await serve(answering())
    upstream = await make_upstream(max_connections=1)
    async with asyncio.timeout(GUARD):
        first = await post(upstream, server, rid="a")
        second = asyncio.create_task(post(upstream, server, rid="b"))
        third = asyncio.create_task(post(upstream, server, rid="c"))
        try:
            await asyncio.sleep(0.05)
            assert not second.done() and not third.done()
            await first.read()
            first.release()  # hands the slot to `second`...
            second.cancel()  # ...which is cancelled (its client left) before it runs
            done, _ = await asyncio.wait({third}, timeout=1.0)
            assert third in done, "the third request still waits for a slot nobody holds"
            resp = third.result()
            assert await resp.read() == b'{"ok":true}'
            resp.release()
        finally:
            first.close()
            for task in (second, third):
                task.cancel()
            await asyncio.gather(second, third, return_exceptions=True)


# -- failures -------------------------------------------------------------------------------


async def test_refused_connection_is_connect_failed(make_upstream) -> None:
    """Nothing listening on the port: ConnectFailed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        with pytest.raises(ConnectFailed) as info:
            await upstream.post(replica(f"http://127.0.0.1:{port}"), PATH, BODY, "r-1")
    assert type(info.value) is ConnectFailed


async def test_fresh_connection_closed_before_answer_is_connect_failed(
    serve, make_upstream
) -> None:
    """A new connection closed before any response byte fails at once, without retries."""

    async def handle(conn: Conn) -> None:
        await conn.request()  # and close without a word

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        with pytest.raises(ConnectFailed) as info:
            await post(upstream, server)
    assert type(info.value) is ConnectFailed
    assert len(server.conns) == 1


async def test_no_response_head_times_out(serve, make_upstream) -> None:
    """The server never answers: UpstreamTimeout after read_timeout, not a hang."""

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.reader.read()  # silent until the client goes

    server = await serve(handle)
    upstream = await make_upstream(read_timeout=0.2)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(GUARD):
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await post(upstream, server)
        took = loop.time() - started
    assert 0.15 <= took < 1.0


async def test_body_stalling_midway_times_out(serve, make_upstream) -> None:
    """A body that stops arriving: readany raises UpstreamTimeout."""

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)
        await conn.reader.read()

    server = await serve(handle)
    upstream = await make_upstream(read_timeout=0.2)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            assert await resp.readany() == b"y" * 10
            started = loop.time()
            with pytest.raises(UpstreamTimeout):
                await resp.readany()
            assert loop.time() - started < 1.0
        finally:
            resp.close()


async def test_body_cut_short_is_stream_broken(serve, make_upstream) -> None:
    """Content-Length 100, 10 bytes, then the connection closes: StreamBroken."""

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            with pytest.raises(StreamBroken):
                await resp.read()
        finally:
            resp.close()


# -- the request ----------------------------------------------------------------------------


async def test_request_on_the_wire(serve, make_upstream) -> None:
    """Request line, Host, Content-Type, Content-Length, X-Request-Id and the body exact;
    Authorization only when the replica has a key."""
    server = await serve(answering())
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        for api_key in (None, "sk-secret"):
            resp = await upstream.post(replica(server.url, api_key), PATH, BODY, "req-42")
            await resp.read()
            resp.release()
    plain, keyed = server.requests
    for request in (plain, keyed):
        assert request.line == f"POST {PATH} HTTP/1.1"
        assert request.headers["host"] == f"127.0.0.1:{server.port}"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["content-length"] == str(len(BODY))
        assert request.headers["x-request-id"] == "req-42"
        assert request.body == BODY
    assert sorted(plain.names) == ["content-length", "content-type", "host", "x-request-id"]
    assert sorted(keyed.names) == [
        "authorization", "content-length", "content-type", "host", "x-request-id"
    ]  # fmt: skip
    assert keyed.headers["authorization"] == "Bearer sk-secret"


async def test_url_path_prefix_is_kept(serve, make_upstream) -> None:
    """A replica URL with a path sends the request under that path."""
    server = await serve(answering())
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        for url in (f"{server.url}/prefix", f"{server.url}/prefix/"):
            resp = await upstream.post(replica(url), PATH, BODY, "r-1")
            await resp.read()
            resp.release()
    assert [r.line for r in server.requests] == ["POST /prefix/v1/chat/completions HTTP/1.1"] * 2


# -- flow control and cancellation ----------------------------------------------------------


def large_body() -> list[bytes]:
    return [bytes([i]) * (64 * 1024) for i in range(64)]  # 4 MiB, each block distinct


async def test_back_pressure_bounds_buffered_body(serve, make_upstream) -> None:
    """A reader that does not read stops the socket reads: what is buffered stays bounded,
    and reading on yields every byte."""
    blocks = large_body()

    async def handle(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(CHUNKED_HEAD)
        for block in blocks:
            conn.writer.write(chunk(block))
        conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()
        await conn.reader.read()

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            await asyncio.sleep(0.2)
            buffered = sum(len(p) for p in resp.pieces)
            assert 0 < buffered < MIB
            await asyncio.sleep(0.1)
            assert sum(len(p) for p in resp.pieces) == buffered  # reading has stopped
            body = b"".join([data async for data in chunks(resp)])
            assert len(body) == 4 * MIB
            assert body == b"".join(blocks)
        finally:
            resp.close()


async def test_read_whole_body_larger_than_high_water(serve, make_upstream) -> None:
    """read() with no limit returns a body larger than the pause threshold."""
    body = b"w" * (HIGH_WATER * 4)

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(body))
        await conn.reader.read()

    server = await serve(handle)
    upstream = await make_upstream(read_timeout=0.5)
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            assert len(await resp.read()) == len(body)
        finally:
            resp.close()


async def test_cancelled_read_then_close_closes_the_connection(serve, make_upstream) -> None:
    """A reader cancelled mid-body, then close(): the server sees the connection end."""
    eof: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        eof.set_result(await conn.reader.read(100))

    server = await serve(handle)
    upstream = await make_upstream()
    async with asyncio.timeout(GUARD):
        resp = await post(upstream, server)
        try:
            assert await resp.readany() == b"data: one\n\n"
            reading = asyncio.create_task(resp.readany())
            await asyncio.sleep(0.05)
            assert not reading.done()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            assert reading.cancelled()
        finally:
            resp.close()
        assert await asyncio.wait_for(eof, 1.0) == b""
