"""Non-streaming /v1/chat/completions and /v1/completions over HTTP, per wire version."""

from __future__ import annotations

import aiohttp
import pytest

from backends.sim import SimServer
from tests.sim.helpers import TOOLS, SimFactory, chat, post


@pytest.mark.parametrize(
    ("version", "present", "absent"),
    [
        ("0.11.0", {"reasoning_content"}, {"reasoning"}),
        ("0.13.0", {"reasoning", "reasoning_content"}, set()),
        ("0.16.0", {"reasoning"}, {"reasoning_content"}),
    ],
)
async def test_message_reasoning_fields_per_version(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str, present: set[str],
    absent: set[str],
) -> None:  # fmt: skip
    """The message carries the reasoning under the names its version used."""
    async with make_sim(wire_version=version, reasoning_tokens=2) as sim:
        _, body = await post(http, sim, chat())
    message = body["choices"][0]["message"]
    assert {k: message[k] for k in present} == dict.fromkeys(present, " consider recall")
    assert not absent & message.keys()


@pytest.mark.parametrize(("version", "has_key"), [("0.23.0", True), ("0.24.0", False)])
async def test_empty_tool_calls_list_until_0_24(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str, has_key: bool
) -> None:
    """`tool_calls: []` is sent on messages without calls through 0.23, dropped after."""
    async with make_sim(wire_version=version) as sim:
        _, body = await post(http, sim, chat())
    assert ("tool_calls" in body["choices"][0]["message"]) is has_key


async def test_usage_counts_prompt_words_and_all_generated_tokens(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """prompt = words + 4 per message; completion = think tags + reasoning + answer."""
    async with make_sim(reasoning_tokens=3, output_tokens=5) as sim:
        _, body = await post(http, sim, chat("one two three"))
    usage = body["usage"]
    assert list(usage)[:3] == ["prompt_tokens", "total_tokens", "completion_tokens"]
    counts = (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert counts == (7, 10, 17)


@pytest.mark.parametrize(
    ("version", "details"), [("0.25.0", "absent"), ("0.29.0", {"reasoning_tokens": 6})]
)
async def test_reasoning_token_details_from_0_29(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str, details: object
) -> None:
    """completion_tokens_details.reasoning_tokens appears from 0.29 with a reasoning parser."""
    async with make_sim(wire_version=version) as sim:
        _, body = await post(http, sim, chat())
    assert body["usage"].get("completion_tokens_details", "absent") == details


async def test_answer_is_deterministic_words_and_stops(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """The answer is the fixed word list, output_tokens long, finish_reason stop."""
    async with make_sim(output_tokens=3) as sim:
        _, body = await post(http, sim, chat())
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (" alpha beta gamma", "stop")


async def test_max_tokens_cut_reports_length(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """max_tokens below the natural length: finish_reason length, that many tokens."""
    async with make_sim(reasoning_tokens=2) as sim:
        _, body = await post(http, sim, chat(max_tokens=4))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


async def test_cut_inside_reasoning_leaves_content_null(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Cut before the answer starts: content null, reasoning partial (as on real vLLM)."""
    async with make_sim(reasoning_tokens=6) as sim:
        _, body = await post(http, sim, chat(max_tokens=3))
    message = body["choices"][0]["message"]
    assert (message["content"], message["reasoning"]) == (None, " consider recall")


async def test_model_echoes_the_first_served_name(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """A request to an alias is answered with the served name, like vLLM."""
    async with make_sim(models=("main", "alias")) as sim:
        _, body = await post(http, sim, {**chat(), "model": "alias"})
    assert body["model"] == "main"


async def test_id_comes_from_x_request_id(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """The X-Request-Id header becomes the response id, chatcmpl- prefixed."""
    _, body = await post(http, sim, chat(), headers={"X-Request-Id": "abc123"})
    assert body["id"] == "chatcmpl-abc123"


async def test_ids_are_random_per_request_without_header(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """Without X-Request-Id each response gets a fresh 16-hex id."""
    ids = {(await post(http, sim, chat()))[1]["id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == len("chatcmpl-") + 16 for i in ids)


async def test_n_choices_are_indexed(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """n=3 gives three choices indexed 0..2 and triple completion tokens."""
    _, body = await post(http, sim, chat(n=3, max_tokens=2))
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 6


async def test_json_schema_response_is_a_matching_document(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """response_format json_schema: content parses to the schema's example value."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["city", "age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    _, body = await post(http, sim, chat(response_format=fmt))
    assert body["choices"][0]["message"]["content"] == '{"city":"Paris","age":1}'


async def test_nonstreaming_tool_call_has_json_arguments(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """An auto tool call: content null, one call with hermes-style JSON arguments."""
    _, body = await post(http, sim, chat(tools=TOOLS))
    message = body["choices"][0]["message"]
    call = message["tool_calls"][0]
    assert (message["content"], body["choices"][0]["finish_reason"]) == (None, "tool_calls")
    assert call["id"].startswith("chatcmpl-tool-") and len(call["id"]) == 14 + 16
    assert call["function"] == {
        "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}',
    }  # fmt: skip


async def test_without_parsers_reasoning_and_tools_are_inline_text(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """parsers=False: <think> and hermes <tool_call> text stay in content."""
    async with make_sim(parsers=False, reasoning_tokens=1) as sim:
        _, body = await post(http, sim, chat(tools=TOOLS))
    message = body["choices"][0]["message"]
    assert message["content"] == (
        '<think> consider</think><tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris", "unit": "c"}}\n</tool_call>'
    )
    assert (message["reasoning"], body["choices"][0]["finish_reason"]) == (None, "stop")


async def test_completions_default_to_16_tokens(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """/v1/completions: cmpl- id, text_completion, vLLM's default max_tokens of 16."""
    async with make_sim(output_tokens=40) as sim:
        _, body = await post(http, sim, {"model": "m", "prompt": "def f("}, "/v1/completions")
    assert (body["object"], body["id"][:5]) == ("text_completion", "cmpl-")
    assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (
        16,
        "length",
    )


async def test_models_lists_each_served_name_with_context(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """/v1/models: one entry per served name, owned_by vllm, max_model_len, permission."""
    async with make_sim(models=("a", "b"), max_model_len=2048) as sim:
        async with http.get(sim.url + "/v1/models") as resp:
            body = await resp.json()
    assert [m["id"] for m in body["data"]] == ["a", "b"]
    first = body["data"][0]
    assert (first["owned_by"], first["max_model_len"], first["root"]) == ("vllm", 2048, "a")
    assert first["permission"][0]["object"] == "model_permission"


async def test_recorded_requests_keep_headers_and_bodies(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """sim.stats.requests holds what the client sent, headers case-insensitive."""
    await post(http, sim, chat("hi"), headers={"X-Request-Id": "r1"})
    last = sim.stats.last_request
    assert last is not None
    assert (last.path, last.headers["x-request-id"], last.json["messages"][0]["content"]) == (
        "/v1/chat/completions", "r1", "hi",
    )  # fmt: skip


async def test_fast_mode_counts_without_recording(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """fast=True skips request recording but still counts requests."""
    async with make_sim(fast=True) as sim:
        await post(http, sim, chat(max_tokens=1))
    assert (sim.stats.requests_total, len(sim.stats.requests)) == (1, 0)
