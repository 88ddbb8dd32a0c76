"""Test helpers: a real Hypercorn server on loopback around any ASGI app."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from tera_proxy.app import App

ASGIApp = Callable[..., Awaitable[None]]


@asynccontextmanager
async def serve_app(app: Any, *, graceful_timeout: float = 5.0) -> AsyncIterator[str]:
    """Serve `app` with Hypercorn on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    await _wait_listening(port, task)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, graceful_timeout + 5)


async def _wait_listening(port: int, task: asyncio.Task[Any]) -> None:
    for _ in range(500):
        if task.done():
            task.result()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"server on port {port} did not start")


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    observe: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight into the ASGI app, no network: (status, headers, body).
    `observe` sees each message the app sends, at the moment it sends it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if observe is not None:
            await observe(message)
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    out = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), out


async def wait_ready(app: App, within: float = 10.0) -> None:
    """Wait until the app's prober made every model servable."""
    async with asyncio.timeout(within):
        while not app.ready():  # noqa: ASYNC110 - the pool has no event to await
            await asyncio.sleep(0.01)
