"""A replica started without --reasoning-parser and --tool-call-parser (the sidecar case):
the proxy splits <think> and extracts hermes <tool_call> itself, and the client sees what
a replica with parsers gives."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.vllm.conftest import BARE, SCRIPTED
from tests.vllm.test_chat import HI, REASONING, WEATHER_TOOL, extra

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session")]


async def view(client: openai.AsyncOpenAI, model: str, stream: bool, tools: bool) -> dict[str, Any]:
    """What the client assembles: reasoning, content, calls, finish reason, token count."""
    kwargs: dict[str, Any] = {"tools": [WEATHER_TOOL]} if tools else {}
    if not stream:
        resp = await client.chat.completions.create(
            model=model, messages=HI, max_tokens=20, **kwargs
        )
        msg = resp.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]
        assert resp.usage is not None
        return {"reasoning": extra(msg, "reasoning"), "content": msg.content or "",
                "calls": calls, "finish": resp.choices[0].finish_reason,
                "completion_tokens": resp.usage.completion_tokens}
    chunks = await client.chat.completions.create(
        model=model, messages=HI, max_tokens=20, stream=True,
        stream_options={"include_usage": True}, **kwargs)
    reasoning, content, finish, tokens = "", "", None, None
    parts: dict[int, list[str]] = {}
    async for chunk in chunks:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            reasoning += extra(choice.delta, "reasoning") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = parts.setdefault(d.index, ["", ""])
                entry[0] += (d.function and d.function.name) or ""
                entry[1] += (d.function and d.function.arguments) or ""
    calls = [(name, json.loads(args)) for name, args in parts.values()]
    return {"reasoning": reasoning or None, "content": content, "calls": calls,
            "finish": finish, "completion_tokens": tokens}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_bare_replica_reasoning_matches(client: openai.AsyncOpenAI, stream: bool) -> None:
    """Without a reasoning parser on the replica, reasoning still arrives in `reasoning`."""
    bare = await view(client, BARE, stream, tools=False)
    parsed = await view(client, SCRIPTED, stream, tools=False)
    assert bare["reasoning"] == parsed["reasoning"] == REASONING
    assert bare == parsed


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_bare_replica_tool_call_matches(client: openai.AsyncOpenAI, stream: bool) -> None:
    """Without a tool parser on the replica, the client still gets the get_weather call."""
    bare = await view(client, BARE, stream, tools=True)
    parsed = await view(client, SCRIPTED, stream, tools=True)
    assert bare["calls"] == [("get_weather", {"city": "Paris", "unit": "c"})]
    assert bare["finish"] == "tool_calls"
    assert bare == parsed
