"""Injected faults, set in-process, over HTTP, and their effect on the wire."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from backends.sim import Faults, SimServer
from tests.sim.helpers import SimFactory, chat, post, sse


async def test_refused_until_listening(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    """start_listening_after: connections are refused, then /health answers 200."""
    async with make_sim(start_listening_after=0.3) as sim:
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(sim.url + "/health")
        await asyncio.wait_for(sim.listening.wait(), 2)
        async with http.get(sim.url + "/health") as resp:
            assert (resp.status, await resp.read()) == (200, b"")


async def test_error_rate_is_reproducible_with_a_seed(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """The same seed fails the same requests; error_rate 0.5 fails some but not all."""
    runs = []
    for _ in range(2):
        async with make_sim(faults=Faults(error_rate=0.5), seed=7, output_tokens=1) as sim:
            runs.append([(await post(http, sim, chat()))[0] for _ in range(12)])
    assert runs[0] == runs[1] and {200, 500} == set(runs[0])


async def test_error_status_503_uses_service_unavailable(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """error_status 503 answers 503 with a vLLM-shaped error body."""
    async with make_sim(faults=Faults(fail_next=1, error_status=503)) as sim:
        status, body = await post(http, sim, chat())
    assert (status, body["error"]["code"]) == (503, 503)


async def test_fail_next_fails_exactly_that_many(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """fail_next=2: two 500s with vLLM's InternalServerError body, then success."""
    sim.faults.fail_next = 2
    results = [await post(http, sim, chat(max_tokens=1)) for _ in range(3)]
    assert [s for s, _ in results] == [500, 500, 200]
    assert results[0][1]["error"]["type"] == "InternalServerError"


async def test_die_after_frames_cuts_without_done(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """die_after_frames=3: the client gets 3 frames, then the connection closes mid-body."""
    sim.faults.die_after_frames = 3
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(sim.url + "/v1/chat/completions", json=chat(stream=True)) as resp:
            async for data in resp.content.iter_any():
                received += data
    assert len(sse(received.decode())) == 3
    assert sim.stats.dropped_total == 1 and sim.stats.aborted_total == 0


async def test_stream_error_after_sends_error_frame_then_done(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """stream_error_after=2: two frames, vLLM's error frame (json.dumps spacing), [DONE]."""
    sim.faults.stream_error_after = 2
    async with http.post(sim.url + "/v1/chat/completions", json=chat(stream=True)) as resp:
        text = await resp.text()
    assert text.split("\n\n")[2] == (
        'data: {"error": {"message": "Internal server error", "type": "InternalServerError", '
        '"param": null, "code": 500}}'
    )
    assert sse(text)[3:] == ["[DONE]"]


async def test_engine_dead_fails_health_and_generation(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """engine_dead: /health 503 and generation 500."""
    sim.faults.engine_dead = True
    async with http.get(sim.url + "/health") as health:
        health_status = health.status
    status, _ = await post(http, sim, chat())
    assert (health_status, status) == (503, 500)


async def test_drop_connection_closes_without_response(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """drop_connection: the client sees the server disconnect, counted as dropped."""
    sim.faults.drop_connection = True
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, sim, chat())
    assert (sim.stats.dropped_total, sim.stats.aborted_total) == (1, 0)


async def test_slow_multiplies_delays(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    """slow=20 makes a 10 ms ttft request take at least 200 ms."""
    async with make_sim(ttft=0.01, output_tokens=1, faults=Faults(slow=20)) as sim:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await post(http, sim, chat())
        assert loop.time() - start >= 0.2


async def test_cold_ttft_delays_only_the_first_request(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """cold_ttft adds to the first generation request after start only."""
    async with make_sim(output_tokens=1, faults=Faults(cold_ttft=0.3)) as sim:
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(2):
            start = loop.time()
            await post(http, sim, chat())
            times.append(loop.time() - start)
    assert times[0] >= 0.3 > times[1]


async def test_http_control_merges_faults(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """POST /sim/faults merges into the live Faults object."""
    async with http.post(sim.url + "/sim/faults", json={"fail_next": 1}) as resp:
        assert resp.status == 200
    assert sim.faults.fail_next == 1


async def test_http_control_rejects_unknown_fault(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """An unknown fault name is a 400 and changes nothing."""
    async with http.post(sim.url + "/sim/faults", json={"hang": True, "nope": 1}) as resp:
        assert resp.status == 400
    assert sim.faults.hang is False


async def test_http_stats_and_reset(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """GET /sim/stats reports counts and requests; POST /sim/reset zeroes them."""
    await post(http, sim, chat(max_tokens=1), headers={"X-Request-Id": "s1"})
    async with http.get(sim.url + "/sim/stats") as resp:
        stats = await resp.json()
    async with http.post(sim.url + "/sim/reset") as resp:
        assert resp.status == 200
    assert (stats["requests_total"], stats["status_counts"]) == (1, {"200": 1})
    assert stats["requests"][0]["headers"]["x-request-id"] == "s1"
    assert (sim.stats.requests_total, len(sim.stats.requests)) == (0, 0)


async def test_refuse_for_over_http_restarts(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """POST {"refuse_for": s} answers, then refuses connections for s, then serves again."""
    async with http.post(sim.url + "/sim/faults", json={"refuse_for": 0.3}) as resp:
        assert resp.status == 200
    assert not sim.listening.is_set()
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(sim.url + "/health")
    await asyncio.wait_for(sim.listening.wait(), 2)
    status, _ = await post(http, sim, chat(max_tokens=1))
    assert status == 200


async def test_restart_drops_streams_in_flight(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """restart() cuts open streams (counted as dropped, not aborted) and listens again."""
    async with make_sim(token_delay=0.01) as sim:
        body = chat(stream=True, ignore_eos=True, max_tokens=1000)
        async with http.post(sim.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readline()
            await sim.restart()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        status, _ = await post(http, sim, chat(max_tokens=1))
    assert (status, sim.stats.dropped_total, sim.stats.aborted_total) == (200, 1, 0)
