"""Frames reach the client byte for byte and as they arrive, from a scripted upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tera_proxy.app import create_app
from tera_proxy.config import parse_config
from tests.helpers import serve_app

FRAMES = [
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}],"prompt_token_ids":null}\n\n',
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" h\\u00e9"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":null}]}\n\n',
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop",'
    b'"stop_reason":null,"token_ids":null}]}\n\n',
    b"data: [DONE]\n\n",
]


class Scripted:
    """An upstream that sends FRAMES in awkward pieces, pausing between frames."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent_first = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        stream = b"".join(FRAMES)
        first = len(FRAMES[0])
        # First frame split mid-way, then the rest only once the test allows it.
        await resp.write(stream[:10])
        await resp.write(stream[10:first])
        self.sent_first.set()
        await self.gate.wait()
        for i in range(first, len(stream), 7):
            await resp.write(stream[i : i + 7])
        await resp.write_eof()
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Scripted]]:
    scripted = Scripted()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", scripted
    finally:
        scripted.gate.set()
        await runner.cleanup()


def config_for(url: str):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "health": {"enabled": False},
            "auth": {"enabled": False},
            "replicas": [{"name": "u", "url": url}],
            "models": [
                {
                    "id": "m",
                    "context_length": 4096,
                    "max_output_tokens": 256,
                    "input_price_per_million": 1.0,
                    "output_price_per_million": 2.0,
                    "replicas": ["u"],
                }
            ],
        }
    )


async def test_frames_forwarded_byte_for_byte_as_they_arrive(upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The first frame reaches the client before the upstream sends the rest, unchanged."""
    url, scripted = upstream
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    app = create_app(config_for(url), state_dir=tmp_path)
    async with serve_app(app) as base, aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-tera-request-id"]
            got = b""
            while len(got) < len(FRAMES[0]):
                got += await asyncio.wait_for(resp.content.readany(), 5)
            # The upstream is still holding the rest: the first frame was not buffered.
            assert got == FRAMES[0]
            scripted.gate.set()
            got += await asyncio.wait_for(resp.read(), 5)
    assert got == b"".join(FRAMES)
