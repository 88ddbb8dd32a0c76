"""vLLM's refusals: status, body shape per version, and where in a stream they appear."""

from __future__ import annotations

import aiohttp
import pytest

from backends.sim import SimServer
from tests.sim.helpers import SimFactory, chat, post


@pytest.mark.parametrize(
    ("version", "body"),
    [
        (
            "0.9.2",
            {
                "object": "error",
                "message": "The model `nope` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            },
        ),
        (
            "0.32.0",
            {
                "error": {
                    "message": "The model `nope` does not exist. Valid aliases: m.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            },
        ),
    ],
)
async def test_unknown_model_404_body_per_version(
    make_sim: SimFactory, http: aiohttp.ClientSession, version: str, body: dict[str, object]
) -> None:
    """<=0.9 answers the flat error object; later versions nest it under "error"."""
    async with make_sim(wire_version=version) as sim:
        status, got = await post(http, sim, {**chat(), "model": "nope"})
    assert (status, got) == (404, body)


async def test_malformed_json_is_bad_request_type(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """Broken JSON: 400 whose type is the HTTP phrase "Bad Request", as FastAPI's handler."""
    async with http.post(sim.url + "/v1/chat/completions", data=b'{"model":"m","messages":') as r:
        body = await r.json()
    assert (r.status, body["error"]["type"], body["error"]["code"]) == (400, "Bad Request", 400)


async def test_missing_messages_is_bad_request(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """A chat request without messages names the field in param."""
    status, body = await post(http, sim, {"model": "m"})
    assert (status, body["error"]["param"]) == (400, "body.messages")


@pytest.mark.parametrize(("field", "value"), [("temperature", -1), ("temperature", 2.5),
                                              ("top_p", 0), ("top_p", 1.5)])  # fmt: skip
async def test_sampling_values_out_of_range_are_400(
    sim: SimServer, http: aiohttp.ClientSession, field: str, value: float
) -> None:
    """temperature outside [0, 2] and top_p outside (0, 1] are BadRequestError."""
    status, body = await post(http, sim, chat("Hello", **{field: value}))
    assert (status, body["error"]["type"], body["error"]["param"]) == (
        400,
        "BadRequestError",
        field,
    )


async def test_prompt_too_long_is_400(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    """A prompt of at least max_model_len tokens is refused with vLLM's message."""
    async with make_sim(max_model_len=20) as sim:
        status, body = await post(http, sim, chat("word " * 30))
    assert status == 400 and body["error"]["param"] == "input_tokens"
    assert "your prompt contains 34 input tokens" in body["error"]["message"]


async def test_max_tokens_over_budget_is_400_up_to_0_15(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """On <=0.15, prompt + max_tokens beyond max_model_len is a 400."""
    async with make_sim(wire_version="0.15.0", max_model_len=100) as sim:
        status, body = await post(http, sim, chat(max_tokens=99))
    assert status == 400
    assert body["error"]["message"].startswith("'max_tokens' or 'max_completion_tokens' is too")


async def test_max_tokens_over_budget_is_clamped_from_0_16(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """On >=0.16 the same request is clamped to max_model_len - prompt and succeeds."""
    async with make_sim(wire_version="0.16.0", max_model_len=100, output_tokens=200) as sim:
        status, body = await post(http, sim, chat("hi", max_tokens=99))
    assert (status, body["usage"]["completion_tokens"]) == (200, 95)


async def test_max_tokens_above_context_is_400_on_0_32(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """max_tokens larger than max_model_len itself is refused (t_13 transcript)."""
    status, body = await post(http, sim, chat(max_tokens=100000, stream=True))
    assert (status, body["error"]["param"]) == (400, "max_tokens")


async def test_api_key_required_on_v1_only(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """--api-key guards /v1/* with a bare {"error":"Unauthorized"}; /health stays open."""
    async with make_sim(api_key="k") as sim:
        status, body = await post(http, sim, chat())
        ok, _ = await post(http, sim, chat(), headers={"Authorization": "Bearer k"})
        async with http.get(sim.url + "/health") as health:
            health_status = health.status
    assert (status, body, ok, health_status) == (401, {"error": "Unauthorized"}, 200, 200)


LONG = chat(stream=True, ignore_eos=True, max_tokens=1000)
DUP = {"X-Request-Id": "dup"}


async def test_duplicate_request_id_is_400_on_0_13(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """<=0.13: reusing an in-flight X-Request-Id fails with "already running"."""
    async with make_sim(wire_version="0.13.0", token_delay=0.01) as sim:
        async with http.post(sim.url + "/v1/chat/completions", json=LONG, headers=DUP) as first:
            await first.content.readline()
            status, body = await post(http, sim, chat(), headers=DUP)
    assert (status, body["error"]["message"]) == (400, "Request id chatcmpl-dup already running.")


async def test_duplicate_request_id_streams_an_error_frame_on_0_13(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Streaming, the duplicate gets a 200, one error frame and [DONE]."""
    async with make_sim(wire_version="0.13.0", token_delay=0.01) as sim:
        async with http.post(sim.url + "/v1/chat/completions", json=LONG, headers=DUP) as first:
            await first.content.readline()
            status, frames = await post(http, sim, chat(stream=True), headers=DUP)
    assert (status, frames[-1], frames[0]["error"]["code"]) == (200, "[DONE]", 400)


async def test_duplicate_request_id_is_accepted_from_0_14(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """>=0.14 accepts the reused id (the engine suffixes it)."""
    async with make_sim(wire_version="0.14.0", token_delay=0.01) as sim:
        async with http.post(sim.url + "/v1/chat/completions", json=LONG, headers=DUP) as first:
            await first.content.readline()
            status, _ = await post(http, sim, chat(), headers=DUP)
    assert status == 200
