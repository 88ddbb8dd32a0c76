"""Whatever vLLM version or parser set-up a replica runs, the client sees one answer."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from backends.sim import SimConfig, SimServer
from tera_proxy.app import create_app
from tera_proxy.config import parse_config
from tests.helpers import serve_app, wait_ready

MODEL = "Qwen/Qwen3-8B"
VERSIONS = ["0.11.0", "0.13.0", "0.16.0", "0.33.0"]
USER = [{"role": "user", "content": "What's the weather in Paris?"}]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]


@asynccontextmanager
async def proxied(version: str, parsers: bool, field: str = "reasoning") -> AsyncIterator[Any]:
    """One simulator replica of `version`, with or without parsers, behind the proxy."""
    profile: dict[str, Any] = {"reasoning_field": field}
    if not parsers:
        profile.update(parse_reasoning="think", parse_tools="hermes")
    async with AsyncExitStack() as stack:
        sim = await stack.enter_async_context(SimServer(
            SimConfig(models=(MODEL,), wire_version=version, parsers=parsers), port=0))
        config = parse_config({
            "replicas": [{"name": "r", "url": sim.url}],
            "health": {"interval": 0.2},
            "auth": {"enabled": False},
            "models": [{"id": MODEL, "context_length": 8192, "max_output_tokens": 1024,
                        "input_price_per_million": 0.1, "output_price_per_million": 0.2,
                        "replicas": ["r"], "rewrite": profile}],
        })
        state = stack.enter_context(tempfile.TemporaryDirectory())
        app = create_app(config, state_dir=Path(state))
        url = await stack.enter_async_context(serve_app(app))
        await wait_ready(app)
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-tera-x", max_retries=0)
        stack.push_async_callback(client.close)
        yield client


async def answer(client: openai.AsyncOpenAI, stream: bool, tools: bool) -> dict[str, Any]:
    """The client's view: reasoning, content, tool calls, finish reason, usage."""
    extra: dict[str, Any] = {"tools": TOOLS} if tools else {}
    if not stream:
        resp = await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=200, **extra)
        msg = resp.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]
        extras = msg.model_extra or {}
        return {"reasoning": extras.get("reasoning"), "content": msg.content or "",
                "calls": calls, "finish": resp.choices[0].finish_reason,
                "usage": (resp.usage.prompt_tokens, resp.usage.completion_tokens),
                "keys": sorted(k for k in extras if "reasoning" in k)}
    chunks = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=200, stream=True,
        stream_options={"include_usage": True}, **extra)
    reasoning, content, finish, usage = "", "", None, None
    calls: dict[int, list[str]] = {}
    keys: set[str] = set()
    async for chunk in chunks:
        if chunk.usage:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            extras = delta.model_extra or {}
            keys |= {k for k in extras if "reasoning" in k}
            reasoning += extras.get("reasoning") or ""
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                entry = calls.setdefault(tc.index, ["", ""])
                entry[0] += (tc.function and tc.function.name) or ""
                entry[1] += (tc.function and tc.function.arguments) or ""
            finish = choice.finish_reason or finish
    return {"reasoning": reasoning or None, "content": content,
            "calls": [(n, json.loads(a)) for n, a in calls.values()], "finish": finish,
            "usage": usage, "keys": sorted(keys)}


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
async def test_same_answer_for_every_version_and_setup(tools: bool) -> None:
    """Every wire version, with and without replica parsers, streamed or not: one answer."""
    seen: dict[str, dict[str, Any]] = {}
    for version in VERSIONS:
        for parsers in (True, False):
            async with proxied(version, parsers) as client:
                for stream in (False, True):
                    view = await answer(client, stream, tools)
                    seen[f"{version} parsers={parsers} stream={stream}"] = view
    reference = seen["0.33.0 parsers=True stream=False"]
    assert reference["reasoning"] and reference["keys"] == ["reasoning"]
    if tools:
        assert reference["calls"] == [("get_weather", {"city": "Paris"})]
        assert reference["finish"] == "tool_calls"
    else:
        assert reference["content"] and reference["calls"] == []
    different = {k: v for k, v in seen.items() if v != reference}
    assert different == {}, (reference, different)


async def test_reasoning_content_profile() -> None:
    """A model whose profile says reasoning_content gets exactly that field."""
    async with proxied("0.16.0", True, field="reasoning_content") as client:
        view = await answer(client, False, False)
        streamed = await answer(client, True, False)
    assert view["keys"] == ["reasoning_content"] and streamed["keys"] == ["reasoning_content"]


async def test_usage_frame_only_when_asked() -> None:
    """The proxy always asks for usage, but the client gets it only if it asked too."""
    async with proxied("0.16.0", True) as client:
        chunks = await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=20, stream=True)
        usages = [c.usage async for c in chunks if c.usage]
    assert usages == []


async def test_client_sees_the_catalog_id_not_the_served_name(tmp_path: Path) -> None:
    """A replica serving the model under another name answers with the catalog id."""
    async with SimServer(SimConfig(models=("served-alias",)), port=0) as sim:
        config = parse_config({
            "replicas": [{"name": "r", "url": sim.url}],
            "health": {"interval": 0.2},
            "auth": {"enabled": False},
            "models": [{"id": MODEL, "served_name": "served-alias", "context_length": 8192,
                        "max_output_tokens": 1024, "input_price_per_million": 0.1,
                        "output_price_per_million": 0.2, "replicas": ["r"]}],
        })
        app = create_app(config, state_dir=tmp_path)
        async with serve_app(app) as url:
            await wait_ready(app)
            async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c:
                resp = await c.chat.completions.create(model=MODEL, messages=USER, max_tokens=8)
                chunks = await c.chat.completions.create(
                    model=MODEL, messages=USER, max_tokens=8, stream=True,
                    stream_options={"include_usage": True})
                models = {chunk.model async for chunk in chunks}
    assert resp.model == MODEL
    assert models == {MODEL}
