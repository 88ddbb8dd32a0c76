"""Streaming chat and completions over HTTP: frame sequence and per-version fields."""

from __future__ import annotations

import aiohttp
import pytest

from backends.sim import SimServer
from tests.sim.helpers import SimFactory, chat, chunks, deltas, post


async def test_stream_is_role_then_deltas_then_finish_then_done(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Role chunk with content "", reasoning and content deltas, {} finish, [DONE]."""
    async with make_sim(reasoning_tokens=1, output_tokens=2) as sim:
        status, frames = await post(http, sim, chat(stream=True))
    assert status == 200 and frames[-1] == "[DONE]"
    assert deltas(frames) == [
        {"role": "assistant", "content": ""},
        {"reasoning": " consider"},
        {"content": " alpha"},
        {"content": " beta"},
        {},
    ]
    finish = frames[-2]["choices"][0]
    assert (finish["finish_reason"], finish["stop_reason"]) == ("stop", None)


async def test_stream_content_type_is_event_stream(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """SSE responses carry vLLM's text/event-stream; charset=utf-8."""
    async with http.post(sim.url + "/v1/chat/completions", json=chat(stream=True)) as resp:
        await resp.read()
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"


@pytest.mark.parametrize(
    ("version", "reasoning_delta", "content_delta"),
    [
        ("0.11.0", {"reasoning_content": " consider"}, {"content": " alpha"}),
        (
            "0.13.0",
            {"reasoning": " consider", "reasoning_content": " consider"},
            {"content": " alpha", "reasoning_content": None},
        ),
        ("0.16.0", {"reasoning": " consider"}, {"content": " alpha"}),
    ],
)
async def test_delta_fields_per_version(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str,
    reasoning_delta: dict[str, object], content_delta: dict[str, object],
) -> None:  # fmt: skip
    """Reasoning deltas use each version's names; 0.11.1-0.15 add reasoning_content null."""
    async with make_sim(wire_version=version, reasoning_tokens=1, output_tokens=1) as sim:
        _, frames = await post(http, sim, chat(stream=True))
    assert deltas(frames)[1:3] == [reasoning_delta, content_delta]


async def test_length_cut_puts_last_token_on_the_finish_chunk(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """Cut by max_tokens, the final delta carries text and finish_reason length."""
    _, frames = await post(http, sim, chat(stream=True, max_tokens=3))
    last = chunks(frames)[-1]["choices"][0]
    assert (last["delta"], last["finish_reason"]) == ({"reasoning": " recall"}, "length")


async def test_usage_chunk_only_when_asked(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """No usage chunk by default; include_usage adds choices:[] + usage before [DONE]."""
    _, plain = await post(http, sim, chat(stream=True, max_tokens=3))
    options = {"include_usage": True}
    _, asked = await post(http, sim, chat(stream=True, max_tokens=3, stream_options=options))
    assert not any("usage" in f for f in plain if isinstance(f, dict))
    assert asked[-2]["choices"] == [] and asked[-2]["usage"]["completion_tokens"] == 3


async def test_continuous_usage_on_every_chunk(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """continuous_usage_stats puts a running usage on each chunk, 0 on the role chunk."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    _, frames = await post(http, sim, chat(stream=True, max_tokens=3, stream_options=options))
    counts = [f["usage"]["completion_tokens"] for f in frames if isinstance(f, dict)]
    assert counts == [0, 2, 3, 3]  # the hidden <think> tag lands with the first word


async def test_stream_options_without_stream_is_400(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """stream_options on a non-streaming request is rejected as vLLM's validator does."""
    status, body = await post(http, sim, chat(stream_options={"include_usage": True}))
    assert status == 400 and body["error"]["type"] == "Bad Request"
    assert "Stream options can only be defined when `stream=True`." in body["error"]["message"]


async def test_n_streams_one_choice_index_per_chunk(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """n=2: every chunk has exactly one choice; each index gets its own finish."""
    _, frames = await post(http, sim, chat(stream=True, n=2, max_tokens=3))
    indexes = [c["choices"][0]["index"] for c in chunks(frames)]
    assert all(len(c["choices"]) == 1 for c in chunks(frames))
    assert indexes == [0, 1, 0, 1, 0, 1]


async def test_tokens_per_chunk_groups_words(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """tokens_per_chunk=3 sends three words per content delta."""
    async with make_sim(reasoning=False, output_tokens=6, tokens_per_chunk=3) as sim:
        _, frames = await post(http, sim, chat(stream=True))
    assert [d.get("content") for d in deltas(frames)] == [
        "", " alpha beta gamma", " delta epsilon zeta", None,
    ]  # fmt: skip


async def test_fingerprint_on_finish_chunk_from_0_21(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """From 0.21 the finish chunk carries system_fingerprint vllm-<ver>-<hash8>."""
    async with make_sim(wire_version="0.32.0") as sim:
        _, frames = await post(http, sim, chat(stream=True, max_tokens=1))
    assert frames[-2]["system_fingerprint"].startswith("vllm-0.32.0-")


async def test_completions_stream_has_no_role_chunk(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """/v1/completions streams text chunks only, finish on the last, then [DONE]."""
    async with make_sim(wire_version="0.32.0") as sim:
        body = {"model": "m", "prompt": "x", "max_tokens": 2, "stream": True}
        _, frames = await post(http, sim, body, "/v1/completions")
    texts = [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks(frames)]
    assert texts == [(" alpha", None), (" beta", "length")] and frames[-1] == "[DONE]"


@pytest.mark.parametrize(("version", "has_null_usage"), [("0.20.0", True), ("0.21.0", False)])
async def test_completions_chunks_usage_null_until_0_21(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str, has_null_usage: bool
) -> None:
    """Completion chunks were dumped with every key ("usage":null) through 0.20."""
    async with make_sim(wire_version=version) as sim:
        body = {"model": "m", "prompt": "x", "max_tokens": 1, "stream": True}
        _, frames = await post(http, sim, body, "/v1/completions")
    assert ("usage" in frames[0]) is has_null_usage


async def test_completions_first_chunk_lists_prompt_ids_on_0_11_0(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """0.10.2-0.11.0 put the prompt token ids on the first completion chunk only."""
    async with make_sim(wire_version="0.11.0") as sim:
        body = {"model": "m", "prompt": "a b c", "max_tokens": 2, "stream": True}
        _, frames = await post(http, sim, body, "/v1/completions")
    ids = [c["choices"][0]["prompt_token_ids"] for c in chunks(frames)]
    assert ids == [[0, 1, 2], None]
