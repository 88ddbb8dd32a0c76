"""The proxy through a real Hypercorn server, driven by the official openai client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.e2e.conftest import MODEL, Stack

USER = [{"role": "user", "content": "What's the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]


def auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.client.api_key}"}


def chats(sim: Any) -> list[Any]:
    """The chat requests a simulator received (warm-ups are completions)."""
    return [r for r in sim.stats.requests if r.path == "/v1/chat/completions"]


def last_upstream(stack: Stack) -> dict:
    """The newest request any simulator received, as JSON with its headers."""
    recorded = [r for s in stack.sims for r in s.stats.requests]
    return max(recorded, key=lambda r: r.at).to_dict()


async def test_chat_non_streaming(stack: Stack) -> None:
    """A chat completion comes back in OpenAI's shape with usage and a request id."""
    raw = await stack.client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=32
    )
    resp = raw.parse()
    assert raw.http_response.headers["x-tera-request-id"]
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens > 0


async def test_chat_streaming(stack: Stack) -> None:
    """A streamed chat yields reasoning then content and ends cleanly."""
    stream = await stack.client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=32, stream=True
    )
    reasoning, content, finish = "", "", None
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning", None) or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning and content
    assert finish in ("stop", "length")


async def test_stream_ends_with_done(stack: Stack) -> None:
    """The raw SSE stream ends with data: [DONE]."""
    body = {"model": MODEL, "messages": USER, "max_tokens": 8, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(
        f"{stack.url}/v1/chat/completions", json=body, headers=auth(stack)
    ) as resp:
        text = await resp.read()
    assert text.endswith(b"data: [DONE]\n\n")


async def test_completions_streaming_and_not(stack: Stack) -> None:
    """/v1/completions works streamed and not."""
    resp = await stack.client.completions.create(model=MODEL, prompt="Once upon", max_tokens=8)
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    stream = await stack.client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=8, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == resp.choices[0].text


async def test_models_list_and_retrieve(stack: Stack) -> None:
    """The client lists the catalog and retrieves a model whose id has a slash."""
    ids = [m.id async for m in stack.client.models.list()]
    assert MODEL in ids
    model = await stack.client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.model_extra is not None and model.model_extra["max_output_tokens"] == 4096


async def test_tool_call_round_trip(stack: Stack) -> None:
    """The model calls get_weather; the tool result goes back; a final answer follows."""
    first = await stack.client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, max_tokens=256
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    final = await stack.client.chat.completions.create(
        model=MODEL,
        messages=[
            *USER,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C, partly cloudy"},
        ],
        max_tokens=32,
    )
    assert final.choices[0].message.content
    sent = last_upstream(stack)["body"]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "18C, partly cloudy"}


async def test_streamed_tool_call_assembles(stack: Stack) -> None:
    """Streamed tool-call deltas assemble into one call with valid JSON arguments."""
    stream = await stack.client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, max_tokens=256, stream=True
    )
    name, args, finish = "", "", None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            name += (tc.function and tc.function.name) or ""
            args += (tc.function and tc.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert json.loads(args)["city"] == "Paris"
    assert finish == "tool_calls"


async def test_response_format_json_schema(stack: Stack) -> None:
    """response_format json_schema reaches the replica and the answer parses."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    spec = {"name": "person", "strict": True, "schema": schema}
    fmt = {"type": "json_schema", "json_schema": spec}
    resp = await stack.client.chat.completions.create(
        model=MODEL, messages=USER, response_format=fmt, max_tokens=128  # type: ignore[arg-type]
    )
    data = json.loads(resp.choices[0].message.content or "")
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)
    assert last_upstream(stack)["body"]["response_format"] == fmt


async def test_upstream_request_shape(stack: Stack) -> None:
    """The replica gets its own key, never the client's, a default max_tokens, extras kept."""
    await stack.client.chat.completions.create(
        model=MODEL,
        messages=USER,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1},
        seed=7,
        extra_headers={"OpenAI-Organization": "org-x", "OpenAI-Project": "p", "Connection": "x"},
    )
    sent = last_upstream(stack)
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["authorization"] == "Bearer replica-secret"
    assert stack.client.api_key not in json.dumps(sent)
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert sent["body"]["max_tokens"] == 4096
    assert (sent["body"]["top_k"], sent["body"]["min_p"], sent["body"]["seed"]) == (5, 0.1, 7)


async def test_client_max_tokens_kept(stack: Stack) -> None:
    """A client's max_completion_tokens is kept and no max_tokens is added."""
    await stack.client.chat.completions.create(
        model=MODEL, messages=USER, max_completion_tokens=12
    )
    body = last_upstream(stack)["body"]
    assert body["max_completion_tokens"] == 12 and "max_tokens" not in body


async def test_bad_request_raises_bad_request_error(stack: Stack) -> None:
    """A 400 raises BadRequestError with the seeds' type and the request id header."""
    with pytest.raises(openai.BadRequestError) as info:
        await stack.client.chat.completions.create(model=MODEL, messages=USER, temperature=5)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.code == "invalid_value"
    assert info.value.response.headers["x-tera-request-id"]


async def test_max_tokens_above_max_output(stack: Stack) -> None:
    """max_tokens above the model's max output is a 400, nothing reaches a replica."""
    with pytest.raises(openai.BadRequestError) as info:
        await stack.client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5000)
    assert info.value.code == "max_tokens_too_large"
    assert sum(len(chats(s)) for s in stack.sims) == 0


async def test_unknown_model_raises_not_found(stack: Stack) -> None:
    """An unknown model raises NotFoundError with type model_not_found."""
    with pytest.raises(openai.NotFoundError) as info:
        await stack.client.chat.completions.create(model="nope/nope", messages=USER)
    assert info.value.type == "model_not_found"
    assert "/v1/models" in info.value.message


async def test_replica_400_is_mapped(stack: Stack) -> None:
    """A replica's own 400 (prompt too long) reaches the client as invalid_request_error."""
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(openai.BadRequestError) as info:
        await stack.client.chat.completions.create(model=MODEL, messages=long, max_tokens=8)
    assert info.value.type == "invalid_request_error"
    assert "context length" in info.value.message


async def test_exhausted_retries_give_500(stack: Stack) -> None:
    """When every replica answers 500, the client gets one 500 after max_attempts tries."""
    for sim in stack.sims:
        sim.faults.error_rate = 1.0
    with pytest.raises(openai.InternalServerError) as info:
        await stack.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 500
    assert info.value.type == "server_error"
    assert sum(len(chats(s)) for s in stack.sims) == stack.app.config.upstream.max_attempts


async def test_no_replica_gives_503_with_retry_after(stack: Stack) -> None:
    """When no replica can be reached, the client gets 503 with Retry-After."""
    for replica in stack.app.pool.replicas.values():
        replica.url = "http://127.0.0.1:9"
    with pytest.raises(openai.InternalServerError) as info:
        await stack.client.chat.completions.create(model=MODEL, messages=USER)
    assert info.value.status_code == 503
    assert info.value.type == "service_unavailable"
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_retry_uses_a_fresh_upstream_id(stack: Stack) -> None:
    """A 5xx from one replica is retried on the other with a distinct X-Request-Id."""
    await stack.client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16)
    home = next(s for s in stack.sims if len(chats(s)) == 1)
    other = next(s for s in stack.sims if s is not home)
    home.faults.fail_next = 1
    resp = await stack.client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16)
    assert resp.choices[0].message.content
    assert (len(chats(home)), len(chats(other))) == (2, 1)
    ids = [r.headers["x-request-id"] for s in stack.sims for r in chats(s)]
    assert len(set(ids)) == 3


async def test_not_offered_endpoint_via_client(stack: Stack) -> None:
    """Embeddings are not offered: NotFoundError saying so."""
    with pytest.raises(openai.NotFoundError) as info:
        await stack.client.embeddings.create(model=MODEL, input="x")
    assert "not offered" in info.value.message


async def test_speech_is_relayed_unchanged(stack: Stack) -> None:
    """Speech audio comes back byte for byte as the replica sent it."""
    resp = await stack.client.audio.speech.create(model=MODEL, voice="alloy", input="Hello there")
    audio = resp.content
    async with aiohttp.ClientSession() as s, s.post(
        f"{stack.sims[0].url}/v1/audio/speech",
        json={"model": MODEL, "voice": "alloy", "input": "Hello there"},
        headers={"Authorization": "Bearer replica-secret"},
    ) as direct:
        assert await direct.read() == audio
    assert len(audio) > 0


async def test_error_after_first_byte_becomes_error_frame(stack: Stack) -> None:
    """A replica dying mid-stream gives the client an error frame, not a hang."""
    for sim in stack.sims:
        sim.faults.die_after_frames = 3
    stream = await stack.client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=64, stream=True
    )
    got = 0
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            got += 1
    assert got >= 1
    assert "incomplete" in info.value.message


async def test_vllm_stream_error_frame_is_passed_on(stack: Stack) -> None:
    """vLLM's own in-stream error frame reaches the client in the seeds' shape."""
    for sim in stack.sims:
        sim.faults.stream_error_after = 2
    body = {"model": MODEL, "messages": USER, "max_tokens": 64, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(
        f"{stack.url}/v1/chat/completions", json=body, headers=auth(stack)
    ) as resp:
        text = await resp.read()
    frames = [f for f in text.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    error = json.loads(frames[-2][len(b"data: ") :])["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == "server_error"


async def test_disconnect_mid_stream_aborts_upstream(one: Stack) -> None:
    """Closing a stream makes the replica record an abort within one second."""
    sim = one.sims[0]
    body = {"model": MODEL, "messages": USER, "max_tokens": 400, "stream": True}
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{one.url}/v1/chat/completions", json=body, headers=auth(one))
        await resp.content.readany()
        resp.close()
    completed = sim.stats.completed_total
    await sim.wait_for(lambda st: st.aborted_total >= 1, timeout=1.0)
    assert sim.stats.completed_total == completed


async def test_disconnect_non_streaming_aborts_upstream(one: Stack) -> None:
    """A client leaving a non-streaming request makes the replica record an abort."""
    sim = one.sims[0]
    body = {"model": MODEL, "messages": USER, "max_tokens": 400}
    async with aiohttp.ClientSession() as s:
        task = asyncio.ensure_future(
            s.post(f"{one.url}/v1/chat/completions", json=body, headers=auth(one))
        )
        await sim.wait_for(lambda st: st.inflight >= 1, timeout=2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await sim.wait_for(lambda st: st.aborted_total >= 1, timeout=1.0)
