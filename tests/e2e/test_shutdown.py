"""Shutting the proxy down lets in-flight requests finish."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from backends.sim import SimConfig, SimServer
from tera_proxy.app import create_app
from tests.e2e.conftest import MODEL, QWEN, proxy_config
from tests.helpers import serve_app, wait_ready


async def test_in_flight_stream_completes_during_shutdown(tmp_path: Path) -> None:
    """A stream running when shutdown starts still ends with [DONE]."""
    cfg = SimConfig(models=(MODEL, QWEN), api_key="replica-secret", token_delay=0.02)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40, "stream": True}
    async with SimServer(cfg, port=0) as sim, aiohttp.ClientSession() as s:
        app = create_app(proxy_config([sim.url]), state_dir=tmp_path)
        server = serve_app(app, graceful_timeout=10)
        url = await server.__aenter__()
        await wait_ready(app)
        resp = await s.post(f"{url}/v1/chat/completions", json=body)
        first = await resp.content.readany()
        closing = asyncio.ensure_future(server.__aexit__(None, None, None))
        rest = await asyncio.wait_for(resp.read(), 10)
        await closing
    assert first.startswith(b"data: ")
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert sim.stats.aborted_total == 0
