"""The bare passthrough peer: Starlette + one shared aiohttp session, nothing else.

    .venv/bin/python bench/peers_bare/app.py --upstream http://127.0.0.1:9000 \\
        --server hypercorn|uvicorn [--host 127.0.0.1] [--port 8090]

POST /v1/chat/completions and /v1/completions forward the request body unchanged to the same
path on the upstream and hand its answer back: an SSE answer streamed chunk by chunk as it
arrives (StreamingResponse over `resp.content.iter_any()`), anything else read whole and
returned. No parsing, no auth, no accounting: it is the baseline the issue calls "bare
Starlette+aiohttp", which tera-proxy on the same server is compared against.

Both servers run on uvloop, as `tera-proxy serve` does: uvicorn with httptools, hypercorn
through `uvloop.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

# Hop-by-hop and framing headers the server sets itself.
_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def make_app(upstream: str) -> Starlette:
    upstream = upstream.rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300),
            auto_decompress=False,
        )
        state["session"] = session
        try:
            yield
        finally:
            await session.close()

    async def forward(request: Request) -> Response:
        body = await request.body()
        resp = await state["session"].post(
            upstream + request.url.path,
            data=body,
            headers={"Content-Type": request.headers.get("content-type", "application/json")},
        )
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}
        if resp.content_type == "text/event-stream":

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()

            return StreamingResponse(relay(), status_code=resp.status, headers=headers)
        try:
            data = await resp.read()
        finally:
            resp.release()
        return Response(data, status_code=resp.status, headers=headers)

    routes = [
        Route("/v1/chat/completions", forward, methods=["POST"]),
        Route("/v1/completions", forward, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _serve_hypercorn(app: Any, host: str, port: int) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    hc = Config()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = "-"
    hc.graceful_timeout = 1.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, hc, shutdown_trigger=stop.wait)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/peers_bare/app.py", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--upstream", required=True, help="base URL of the upstream, without /v1")
    ap.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    a = ap.parse_args(argv)
    app = make_app(a.upstream)
    print(
        f"bare passthrough on http://{a.host}:{a.port} ({a.server}) -> {a.upstream}",
        file=sys.stderr,
        flush=True,
    )
    if a.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            app,
            host=a.host,
            port=a.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        return 0
    import uvloop

    uvloop.run(_serve_hypercorn(app, a.host, a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
