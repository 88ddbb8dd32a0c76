"""Tool calls over HTTP: delta shapes, forced choices, truncation, parser switches."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from backends.sim import SimServer
from tests.sim.helpers import TOOLS, SimFactory, chat, chunks, deltas, post

NAMED = {"type": "function", "function": {"name": "get_time"}}


def _tool_deltas(frames: list[Any]) -> list[dict[str, Any]]:
    return [d for d in deltas(frames) if "tool_calls" in d]


async def test_stream_header_then_argument_fragments(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """First tool delta: id, type, index, name and no arguments; then arguments only."""
    _, frames = await post(http, sim, chat(stream=True, tools=TOOLS))
    calls = [d["tool_calls"][0] for d in _tool_deltas(frames)]
    header, rest = calls[0], calls[1:]
    assert header["id"].startswith("chatcmpl-tool-") and "arguments" not in header["function"]
    assert (header["type"], header["index"], header["function"]["name"]) == (
        "function", 0, "get_weather",
    )  # fmt: skip
    assert all(c.keys() == {"index", "function"} for c in rest) and len(rest) > 2


async def test_forced_tool_deltas_carry_content_null(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """required/named choices stream {"content":null,"tool_calls":[...]} as on 0.32."""
    _, frames = await post(http, sim, chat(stream=True, tools=TOOLS, tool_choice="required"))
    assert all(d["content"] is None for d in _tool_deltas(frames))


async def test_named_choice_calls_the_named_function(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """A named tool_choice calls that function; content is "" and finish stop."""
    _, body = await post(http, sim, chat(tools=TOOLS, tool_choice=NAMED))
    message = body["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}
    assert (message["content"], body["choices"][0]["finish_reason"]) == ("", "stop")


async def test_tool_choice_none_answers_in_text(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """tool_choice none ignores the tools."""
    _, body = await post(http, sim, chat(tools=TOOLS, tool_choice="none"))
    assert body["choices"][0]["message"]["content"].startswith(" alpha")


@pytest.mark.parametrize(
    ("version", "finish"),
    [("0.11.0", "tool_calls"), ("0.29.0", "tool_calls"), ("0.33.0", "length")],
)
async def test_truncated_streamed_call_finish_per_version(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str, finish: str
) -> None:
    """A call cut by max_tokens: tool_calls up to 0.32 (#53269), length from 0.33."""
    async with make_sim(wire_version=version, reasoning=False) as sim:
        body = chat(stream=True, tools=TOOLS, tool_choice="required", max_tokens=3)
        _, frames = await post(http, sim, body)
    assert chunks(frames)[-1]["choices"][0]["finish_reason"] == finish


async def test_auto_tools_without_auto_tool_choice_is_400(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """auto_tool_choice=False: tools with the default choice get vLLM's startup-flag 400."""
    async with make_sim(auto_tool_choice=False) as sim:
        status, body = await post(http, sim, chat(tools=TOOLS))
    assert status == 400
    assert body["error"]["message"].startswith('"auto" tool choice requires')


async def test_without_parsers_stream_tool_call_as_content(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """parsers=False streams the hermes text as content deltas and finishes stop."""
    async with make_sim(parsers=False, reasoning=False) as sim:
        _, frames = await post(http, sim, chat(stream=True, tools=TOOLS))
    text = "".join(d.get("content") or "" for d in deltas(frames))
    assert text.startswith('<tool_call>\n{"name": "get_weather"') and text.endswith("</tool_call>")
    assert not _tool_deltas(frames)
    assert chunks(frames)[-1]["choices"][0]["finish_reason"] == "stop"


async def test_unknown_named_tool_is_400(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """A named tool_choice that is not among the tools is a BadRequestError."""
    choice = {"type": "function", "function": {"name": "nope"}}
    status, body = await post(http, sim, chat(tools=TOOLS, tool_choice=choice))
    assert (status, body["error"]["param"]) == (400, "tool_choice")
