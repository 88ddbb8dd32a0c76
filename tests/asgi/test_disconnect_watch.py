"""The disconnect watch (app.until_disconnect), driven straight through the ASGI callable
with a hand-written receive/send pair that behaves like a server (uvicorn's semantics):
once the response is complete, or once the client has left, receive() answers
`http.disconnect`. The upstream is the simulator on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import structlog

from backends.sim import SimConfig, SimServer
from tera_proxy.app import WATCH_AFTER, App, create_app
from tera_proxy.config import parse_config
from tera_proxy.tenancy import Outcome, Ticket
from tests.sim.helpers import FAST, chat
from tests.tenancy.e2e_support import ledger_rows, request_lines

SLOW_DRAIN = 0.1  # seconds the fake server spends in the final send
TEST_BUDGET = 3.0  # seconds any one test may take


class FakeServer:
    """One HTTP request as an ASGI server presents it to the app.

    receive() hands over the request body once, then blocks until the response is
    complete or the client has left, and from then on answers `http.disconnect` at
    once (uvicorn reports the end of a sent response that way too). The final body
    message marks the response complete first, then spends `drain` seconds returning.
    """

    def __init__(self, body: bytes, *, drain: float = 0.0) -> None:
        self.body = body
        self.drain = drain
        self.delivered = False
        self.gone = asyncio.Event()  # receive() answers http.disconnect once set
        self.complete = False
        self.left_at: float | None = None
        self.sent: list[dict[str, Any]] = []
        self.final_send_done = False
        self.final_send_cancelled = False

    async def receive(self) -> dict[str, Any]:
        if not self.delivered:
            self.delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.left_at is not None:
            return  # uvicorn drops what is sent to a client that has left
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
            self.gone.set()
            try:
                await asyncio.sleep(self.drain)
            except asyncio.CancelledError:
                self.final_send_cancelled = True
                raise
            self.final_send_done = True

    def leave(self) -> None:
        """The client closes its connection."""
        self.left_at = time.monotonic()
        self.gone.set()

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def response_body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def scope(path: str = "/v1/chat/completions") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def proxy_config(sim_url: str) -> dict[str, Any]:
    return {
        "auth": {"enabled": False},
        "health": {"enabled": False},  # the replica is READY from the start
        "upstream": {"connect_timeout": 1.0, "read_timeout": 5.0, "max_attempts": 1},
        "ledger": {"flush_interval": 0.05},
        "replicas": [{"name": "r0", "url": sim_url}],
        "models": [
            {
                "id": "m",
                "context_length": 8192,
                "max_output_tokens": 64,
                "input_price_per_million": 0.07,
                "output_price_per_million": 0.25,
                "replicas": ["r0"],
            }
        ],
    }


class Outcomes:
    """Every outcome the app settles a request with (first settle call per ticket)."""

    def __init__(self, app: App) -> None:
        self.settled: list[Outcome] = []
        original = app.tenancy.settle

        async def settle(ticket: Ticket, outcome: Outcome) -> None:
            if not ticket.settled:
                self.settled.append(outcome)
            await original(ticket, outcome)

        app.tenancy.settle = settle  # type: ignore[method-assign]


@asynccontextmanager
async def proxied(
    state_dir: Path, *, ttft: float
) -> AsyncIterator[tuple[App, SimServer, Outcomes]]:
    """A simulator answering after `ttft` seconds and the app in front of it, started."""
    async with SimServer(SimConfig(**{**FAST, "ttft": ttft}), port=0) as sim:
        app = create_app(parse_config(proxy_config(sim.url)), state_dir=state_dir)
        outcomes = Outcomes(app)
        await app.startup()
        try:
            yield app, sim, outcomes
        finally:
            await app.shutdown()


BODY = orjson.dumps(chat(max_tokens=4))


async def test_final_send_end_is_not_a_disconnect(tmp_path: Path) -> None:
    """A server reporting http.disconnect while the last body message is still being
    sent (the response is complete) does not make the request a client disconnect."""
    server = FakeServer(BODY, drain=SLOW_DRAIN)
    async with asyncio.timeout(TEST_BUDGET):
        async with proxied(tmp_path, ttft=0.1) as (app, sim, outcomes):
            with structlog.testing.capture_logs() as logs:
                started = time.monotonic()
                await app(scope(), server.receive, server.send)
                elapsed = time.monotonic() - started
            # The watch was running when the answer came (ttft > WATCH_AFTER) and the
            # final send lasted long enough for the watcher to see the disconnect.
            assert elapsed >= 0.1 + SLOW_DRAIN
            assert server.status == 200
            assert orjson.loads(server.response_body)["object"] == "chat.completion"
            # The final send ran to its end: the request task was not cancelled in it.
            assert (server.final_send_done, server.final_send_cancelled) == (True, False)
            assert [(o.status, o.client_disconnected) for o in outcomes.settled] == [(200, False)]
            lines = request_lines(logs)
            assert [(e["status"], e["client_disconnected"]) for e in lines] == [(200, False)]
            # The upstream answer was read to its end: its connection is kept for reuse,
            # not closed as for a client that left.
            assert len(app.upstream._origins[sim.url].idle) == 1
            assert (sim.stats.completed_total, sim.stats.aborted_total) == (1, 0)
        rows = await ledger_rows(tmp_path / app.config.database.sqlite_path)
    assert [(r["status"], r["client_disconnected"]) for r in rows] == [(200, 0)]


async def run_until_abort(
    tmp_path: Path, leave_after: float, abort_within: float
) -> tuple[FakeServer, float, list[Outcome], list[dict[str, Any]]]:
    """A request whose upstream would take 2 s; the client leaves `leave_after` seconds
    in. Returns the server, seconds from leaving to the upstream abort, the settled
    outcomes and the request log lines."""
    server = FakeServer(BODY)
    async with proxied(tmp_path, ttft=2.0) as (app, sim, outcomes):
        with structlog.testing.capture_logs() as logs:
            call = asyncio.create_task(app(scope(), server.receive, server.send))
            await asyncio.sleep(leave_after)
            assert not call.done()
            server.leave()
            assert server.left_at is not None
            await sim.wait_for(lambda s: s.aborted_total == 1 and s.inflight == 0, abort_within)
            aborted_after = time.monotonic() - server.left_at
            await asyncio.wait_for(call, abort_within)
        assert (sim.stats.requests_total, sim.stats.completed_total) == (1, 0)
        assert server.sent == []  # nothing was sent to a client that had left
    rows = await ledger_rows(tmp_path / app.config.database.sqlite_path)
    assert [(r["status"], r["client_disconnected"]) for r in rows] == [(499, 1)]
    return server, aborted_after, outcomes.settled, request_lines(logs)


async def test_disconnect_after_watch_start_aborts_upstream(tmp_path: Path) -> None:
    """A client leaving 0.15 s into a 2 s generation: the upstream request is aborted
    within 0.5 s and the request is recorded as a client disconnect."""
    async with asyncio.timeout(TEST_BUDGET):
        _, aborted_after, settled, lines = await run_until_abort(tmp_path, 0.15, 0.5)
    assert aborted_after < 0.5
    assert [(o.status, o.client_disconnected) for o in settled] == [(499, True)]
    assert [(e["status"], e["client_disconnected"]) for e in lines] == [(499, True)]


async def test_disconnect_before_watch_start_is_noticed(tmp_path: Path) -> None:
    """A client leaving 0.01 s in, before the watch starts: noticed once it starts, the
    upstream aborted within WATCH_AFTER + 0.5 s."""
    assert WATCH_AFTER > 0.01
    async with asyncio.timeout(TEST_BUDGET):
        _, aborted_after, settled, lines = await run_until_abort(
            tmp_path, 0.01, WATCH_AFTER + 0.5
        )
    assert aborted_after < WATCH_AFTER + 0.5
    assert [(o.status, o.client_disconnected) for o in settled] == [(499, True)]
    assert [(e["status"], e["client_disconnected"]) for e in lines] == [(499, True)]
