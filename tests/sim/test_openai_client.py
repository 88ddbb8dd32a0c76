"""The official openai client against the simulator: what real SDK users will see."""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI, BadRequestError

from backends.sim import SimServer
from tests.sim.helpers import TOOLS, SimFactory

MESSAGES: Any = [{"role": "user", "content": "Weather in Paris?"}]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}


def client(sim: SimServer, key: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=sim.url + "/v1", api_key=key, max_retries=0)


async def test_openai_nonstreaming_chat(sim: SimServer) -> None:
    """The SDK parses the non-streaming body: content, reasoning extra field, usage."""
    async with client(sim) as oai:
        done = await oai.chat.completions.create(model="m", messages=MESSAGES)
    message = done.choices[0].message
    assert message.content is not None and message.content.startswith(" alpha")
    assert getattr(message, "reasoning", None) is not None
    assert done.usage is not None and done.usage.completion_tokens == 32


async def test_openai_stream_assembles_tool_call(sim: SimServer) -> None:
    """Streamed header + argument fragments assemble into one call with valid JSON."""
    name, arguments, finish = "", "", None
    async with client(sim) as oai:
        stream = await oai.chat.completions.create(
            model="m", messages=MESSAGES, tools=TOOLS, stream=True
        )
        async for chunk in stream:
            choice = chunk.choices[0]
            for call in choice.delta.tool_calls or []:
                assert call.function is not None
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (name, arguments) == ("get_weather", '{"city": "Paris", "unit": "c"}')
    assert finish == "tool_calls"


async def test_openai_named_tool_stream_finishes_stop_on_0_32(make_sim: SimFactory) -> None:
    """A named tool_choice stream ends with finish_reason stop (as observed on 0.32)."""
    async with make_sim(wire_version="0.32.0") as sim, client(sim) as oai:
        stream = await oai.chat.completions.create(
            model="m", messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, stream=True
        )
        reasons = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert reasons[-1] == "stop"


async def test_openai_usage_chunk_only_with_include_usage(sim: SimServer) -> None:
    """The SDK sees usage on the last chunk only when stream_options asks for it."""
    async with client(sim) as oai:
        plain = await oai.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, max_tokens=2
        )
        plain_usage = [c.usage async for c in plain]
        asked = await oai.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, max_tokens=2,
            stream_options={"include_usage": True},
        )  # fmt: skip
        asked_usage = [c.usage async for c in asked]
    assert plain_usage == [None] * len(plain_usage)
    assert asked_usage[-1] is not None and asked_usage[-1].total_tokens == 9


async def test_openai_sees_a_400_for_a_bad_temperature(sim: SimServer) -> None:
    """Validation errors reach the SDK as BadRequestError with vLLM's message."""
    async with client(sim) as oai:
        with pytest.raises(BadRequestError, match="temperature must be non-negative"):
            await oai.chat.completions.create(model="m", messages=MESSAGES, temperature=-1)


async def test_openai_completions_stream(sim: SimServer) -> None:
    """The legacy completions stream concatenates to the word list."""
    async with client(sim) as oai:
        stream = await oai.completions.create(model="m", prompt="x", max_tokens=3, stream=True)
        text = "".join([c.choices[0].text async for c in stream])
    assert text == " alpha beta gamma"
