"""Client disconnects are counted as aborts within a second, streaming or not."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from backends.sim import SimServer
from tests.sim.helpers import SimFactory, chat, post

LONG_STREAM = chat(stream=True, ignore_eos=True, max_tokens=1000)


async def test_stream_disconnect_is_an_abort(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Closing a stream mid-way records one abort with that request's id."""
    async with make_sim(token_delay=0.01) as sim:
        headers = {"X-Request-Id": "gone"}
        async with http.post(
            sim.url + "/v1/chat/completions", json=LONG_STREAM, headers=headers
        ) as r:
            await r.content.readline()
            r.close()
        await sim.wait_for(lambda s: s.aborted_total == 1, timeout=1)
    assert (list(sim.stats.aborted_ids), sim.stats.completed_total) == (["chatcmpl-gone"], 0)


async def test_nonstreaming_disconnect_is_an_abort(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """A client timing out while the answer is generated is an abort; the slot frees."""
    async with make_sim(ttft=5.0) as sim:
        with pytest.raises(asyncio.TimeoutError):
            await post(http, sim, chat(), timeout=aiohttp.ClientTimeout(total=0.2))
        await sim.wait_for(lambda s: s.aborted_total == 1 and s.running == 0, timeout=1)


async def test_hung_request_abort_is_counted(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """hang: no answer ever; the client giving up is counted as an abort."""
    sim.faults.hang = True
    task = asyncio.ensure_future(post(http, sim, chat()))
    await sim.wait_for(lambda s: s.inflight == 1)
    task.cancel()
    await sim.wait_for(lambda s: s.aborted_total == 1 and s.inflight == 0, timeout=1)
    assert task.cancelled()


async def test_complete_stream_is_not_an_abort(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """A client that reads to [DONE] and leaves is a completion, not an abort."""
    await post(http, sim, chat(stream=True))
    await sim.wait_for(lambda s: s.inflight == 0)
    assert (sim.stats.completed_total, sim.stats.aborted_total) == (1, 0)


async def test_wait_for_times_out_with_the_stats(sim: SimServer) -> None:
    """wait_for raises TimeoutError naming the stats when the condition never holds."""
    with pytest.raises(TimeoutError, match="SimStats"):
        await sim.wait_for(lambda s: s.aborted_total == 1, timeout=0.05)
