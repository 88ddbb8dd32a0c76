"""SimServer: the simulator's sockets and lifecycle, usable in-process from tests:

async with SimServer(SimConfig(models=("m",)), port=0) as sim:
    ...  # sim.url, sim.stats, sim.faults, await sim.wait_for(...)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine

from aiohttp import web

from backends.sim.app import SimApp
from backends.sim.config import Faults, SimConfig
from backends.sim.stats import SimStats


class SimServer:
    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        start_listening_after: float | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.faults = faults or Faults()
        self.app = SimApp(self.config, self.faults)
        self.app.on_refuse = self.refuse
        self.stats: SimStats = self.app.stats
        self.host = host
        self.port = port
        # Set while the socket listens; cleared during refuse_for / restart.
        self.listening = asyncio.Event()
        delay = self.faults.refuse_for if start_listening_after is None else start_listening_after
        self._first_delay = delay
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "listening" if self.listening.is_set() else "refusing"
        return f"<SimServer {self.url} {state} {self.config.wire!r} {self.stats!r}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the port now; listen now or after the configured delay (refused till then)."""
        self._runner = web.AppRunner(
            self.app.build(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        self._hold_port()
        if self._first_delay > 0:
            self._spawn(self._listen_after(self._first_delay))
        else:
            await self._listen()

    async def stop(self) -> None:
        self.app.closing.set()
        for task in list(self._tasks):
            task.cancel()
        self._close_listener()
        self._drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def refuse(self, seconds: float) -> None:
        """As when vLLM restarts: stop listening and drop every connection now; listen
        again after `seconds` (connections are refused meanwhile)."""
        self._close_listener()
        self._hold_port()
        self._drop_connections()
        self._spawn(self._listen_after(seconds))

    async def restart(self, refuse_for: float = 0.0) -> None:
        """refuse(refuse_for), returning once the server listens again."""
        self.refuse(refuse_for)
        await self.listening.wait()

    async def wait_for(
        self,
        predicate: Callable[[SimStats], bool],
        timeout: float = 2.0,  # noqa: ASYNC109 - the tests' idiom: sim.wait_for(pred, timeout=1)
    ) -> SimStats:
        """Wait until predicate(stats) holds; TimeoutError (with the stats) otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.stats):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"not true within {timeout}s: {self.stats!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stats.waiter(), remaining)
        return self.stats

    def _hold_port(self) -> None:
        """Bind without listening: the port is ours and connections are refused."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock

    async def _listen(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        assert self._sock is not None
        sock, self._sock = self._sock, None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._runner.server, sock=sock, backlog=1024)
        self.app.cold = True
        self.listening.set()

    async def _listen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._listen()

    def _close_listener(self) -> None:
        self.listening.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _drop_connections(self) -> None:
        for ex in self.app.live:
            ex.dropped = True
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else []:
            if handler.transport is not None:
                handler.transport.close()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
