"""`tera-proxy serve --server X`: the same app under Hypercorn, uvicorn and granian."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import openai
import pytest

from backends.sim import SimConfig, SimServer
from tests.e2e.conftest import MODEL

CONFIG = """
state_dir = "{state}"

[auth]
enabled = false

[server]
host = "127.0.0.1"
port = {port}

[health]
interval = 0.2

[[replicas]]
name = "r"
url = "{url}"

[[models]]
id = "{model}"
context_length = 8192
max_output_tokens = 512
input_price_per_million = 0.07
output_price_per_million = 0.25
replicas = ["r"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn", "granian"])
async def test_serve_under_each_server(server: str, tmp_path: Path) -> None:
    """Chat streamed and not works under each server, and SIGTERM stops it cleanly."""
    async with SimServer(SimConfig(models=(MODEL,)), port=0) as sim:
        port = free_port()
        config = tmp_path / "proxy.toml"
        config.write_text(CONFIG.format(port=port, url=sim.url, model=MODEL, state=tmp_path))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tera_proxy", "serve", "--config", str(config),
            "--server", server, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        try:
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-tera-x", max_retries=0)
            await wait_serving(client)
            resp = await client.chat.completions.create(model=MODEL, messages=[
                {"role": "user", "content": "hi"}], max_tokens=40)
            chunks = await client.chat.completions.create(model=MODEL, messages=[
                {"role": "user", "content": "hi"}], max_tokens=40, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            await client.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 15)
    assert resp.choices[0].message.content == text
    assert code == 0


async def wait_serving(client: openai.AsyncOpenAI) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1)
                return
            except (openai.APIConnectionError, openai.InternalServerError):
                await asyncio.sleep(0.1)
