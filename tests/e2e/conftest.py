"""End-to-end fixtures: simulator replicas, the proxy on a real Hypercorn server, and
the official openai client pointed at it."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from backends.sim import SimConfig, SimServer
from tera_proxy.app import App, create_app
from tera_proxy.config import parse_config
from tests.helpers import serve_app, wait_ready

MODEL = "openai/gpt-oss-20b"
QWEN = "Qwen/Qwen3-8B"


@dataclass
class Stack:
    url: str
    app: App
    sims: list[Any]
    client: openai.AsyncOpenAI


def proxy_config(urls: list[str], *, auth: bool = False, **upstream: Any) -> Any:
    names = [f"r{i}" for i in range(len(urls))]
    model = {
        "context_length": 131072,
        "max_output_tokens": 4096,
        "input_price_per_million": 0.07,
        "output_price_per_million": 0.25,
        "replicas": names,
    }
    return parse_config(
        {
            "upstream": {"connect_timeout": 1.0, "read_timeout": 5.0, **upstream},
            "health": {"interval": 0.2, "timeout": 1.0},
            "auth": {"enabled": auth},
            "replicas": [
                {"name": n, "url": u, "api_key": "replica-secret"}
                for n, u in zip(names, urls, strict=True)
            ],
            "models": [{"id": MODEL, **model}, {"id": QWEN, **model}],
        }
    )


async def start_stack(
    n: int = 2, sim: dict[str, Any] | None = None, **upstream: Any
) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        sims = []
        for _ in range(n):
            cfg = SimConfig(models=(MODEL, QWEN), api_key="replica-secret", **(sim or {}))
            sims.append(await stack.enter_async_context(SimServer(cfg, port=0)))
        state = stack.enter_context(tempfile.TemporaryDirectory())
        config = proxy_config([s.url for s in sims], auth=True, **upstream)
        app = create_app(config, state_dir=Path(state))
        url = await stack.enter_async_context(serve_app(app))
        await wait_ready(app)
        key = await app.tenancy.keys.create("e2e")
        client = openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=key.secret, max_retries=0, timeout=10
        )
        stack.push_async_callback(client.close)
        yield Stack(url, app, sims, client)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async for s in start_stack():
        yield s


@pytest.fixture
async def one() -> AsyncIterator[Stack]:
    """A single replica with slow tokens, for disconnect tests."""
    async for s in start_stack(1, {"token_delay": 0.05, "output_tokens": 400}):
        yield s
