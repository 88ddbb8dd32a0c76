"""Chat, tools, structured output, completions and the catalog through the proxy, served
by real vLLM (scripted and random tiny models) and read with the official client."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.vllm.conftest import SCRIPTED, TINY

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session")]

HI = [{"role": "user", "content": "Weather in Paris?"}]
REASONING = "Let me check the weather."
CONTENT = "Checking."
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def strict_tool(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A strict tool: vLLM constrains the arguments to its schema (short, closed)."""
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return {"type": "function", "function": {"name": name, "strict": True, "parameters": schema}}


STRICT_WEATHER = strict_tool(
    "get_weather",
    {"city": {"type": "string", "maxLength": 10}, "unit": {"type": "string", "enum": ["c", "f"]}},
)
STRICT_TIME = strict_tool("get_time", {"tz": {"type": "string", "enum": ["UTC", "CET"]}})


# The workers run the qwen3 reasoning parser: vLLM applies tool and schema constraints
# only once reasoning has ended, and the random model rarely ends it by itself. With
# thinking off the chat template closes the <think> block in the prompt.
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def extra(obj: Any, name: str) -> Any:
    """A field the OpenAI types do not declare (vLLM's `reasoning`)."""
    return (obj.model_extra or {}).get(name)


async def test_chat_splits_reasoning_from_content(client: openai.AsyncOpenAI) -> None:
    """Non-streaming: the scripted reply's thinking is in `reasoning`, the rest in content."""
    resp = await client.chat.completions.create(model=SCRIPTED, messages=HI, max_tokens=20)
    message = resp.choices[0].message
    assert extra(message, "reasoning") == REASONING
    assert message.content is not None and message.content.startswith(CONTENT)
    assert resp.usage is not None and resp.usage.completion_tokens == 8


async def test_chat_stream_splits_reasoning_from_content(client: openai.AsyncOpenAI) -> None:
    """Streaming: reasoning deltas and content deltas add up to the scripted reply."""
    stream = await client.chat.completions.create(
        model=SCRIPTED, messages=HI, max_tokens=20, stream=True
    )
    reasoning, content, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            reasoning += extra(choice.delta, "reasoning") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert reasoning == REASONING
    assert content.startswith(CONTENT)
    assert finish == "stop"


async def test_chat_stream_reports_usage_when_asked(client: openai.AsyncOpenAI) -> None:
    """stream_options.include_usage adds a final usage chunk with no choices."""
    stream = await client.chat.completions.create(
        model=SCRIPTED,
        messages=HI,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


async def test_tool_choice_auto_streams_a_get_weather_call(client: openai.AsyncOpenAI) -> None:
    """The scripted model's call, assembled from streamed deltas, ends with tool_calls."""
    stream = await client.chat.completions.create(
        model=SCRIPTED,
        messages=HI,
        max_tokens=20,
        stream=True,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c"}


async def test_tool_choice_auto_non_streaming_returns_the_call(
    client: openai.AsyncOpenAI,
) -> None:
    """Non-streaming auto tool choice: one parsed get_weather call, finish tool_calls."""
    resp = await client.chat.completions.create(
        model=SCRIPTED,
        messages=HI,
        max_tokens=20,
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "c"}


async def test_tool_choice_required_calls_a_strict_tool(client: openai.AsyncOpenAI) -> None:
    """`required` on the random model yields one call whose arguments fit the schema."""
    resp = await client.chat.completions.create(
        model=TINY,
        messages=HI,
        max_tokens=300,
        seed=1,
        tools=[STRICT_WEATHER, STRICT_TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        extra_body=NO_THINKING,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls or []) == 1
    call = (choice.message.tool_calls or [])[0]
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f")
    else:
        assert call.function.name == "get_time" and args["tz"] in ("UTC", "CET")


async def test_named_tool_choice_calls_that_tool(client: openai.AsyncOpenAI) -> None:
    """A named function is called with schema-valid arguments (finish `stop`, as vLLM)."""
    resp = await client.chat.completions.create(
        model=TINY,
        messages=HI,
        max_tokens=300,
        seed=4,
        tools=[STRICT_WEATHER, STRICT_TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        extra_body=NO_THINKING,
    )
    calls = resp.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments)["tz"] in ("UTC", "CET")


async def test_named_tool_choice_streams_header_then_arguments(
    client: openai.AsyncOpenAI,
) -> None:
    """Streamed named tool call: the name once, then argument pieces forming valid JSON."""
    stream = await client.chat.completions.create(
        model=TINY,
        messages=HI,
        max_tokens=300,
        seed=4,
        stream=True,
        tools=[STRICT_WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body=NO_THINKING,
    )
    names, arguments = [], ""
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                arguments += (delta.function.arguments or "") if delta.function else ""
    assert names == ["get_weather"]
    assert set(json.loads(arguments)) == {"city", "unit"}


async def test_json_schema_response_matches_the_schema(client: openai.AsyncOpenAI) -> None:
    """response_format json_schema: the content parses and has exactly the schema's keys."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    resp = await client.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "Give me a person"}],
        max_tokens=200,
        seed=1,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": schema},
        },
        extra_body=NO_THINKING,
    )
    person = json.loads(resp.choices[0].message.content or "")
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 150


async def test_completions_returns_text_of_the_requested_length(
    client: openai.AsyncOpenAI,
) -> None:
    """/v1/completions on the random model: max_tokens tokens of text, finish `length`."""
    resp = await client.completions.create(
        model=TINY, prompt="def main(", max_tokens=12, extra_body={"ignore_eos": True}
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].text
    assert resp.usage is not None and resp.usage.completion_tokens == 12


async def test_completions_stream_ends_with_finish_reason(client: openai.AsyncOpenAI) -> None:
    """Streamed /v1/completions: text pieces, then a chunk with finish `length`."""
    stream = await client.completions.create(
        model=TINY, prompt="def main(", max_tokens=12, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_models_lists_the_catalog(client: openai.AsyncOpenAI) -> None:
    """/v1/models lists the catalog ids, not the names the workers serve."""
    ids = [m.id async for m in client.models.list()]
    assert SCRIPTED in ids and TINY in ids
    assert "scripted" not in ids and "tiny" not in ids


async def test_response_names_the_catalog_model(client: openai.AsyncOpenAI) -> None:
    """The client sees the model id it asked for, not the worker's served name."""
    resp = await client.chat.completions.create(model=SCRIPTED, messages=HI, max_tokens=20)
    assert resp.model == SCRIPTED
