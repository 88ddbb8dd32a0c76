"""/metrics, /health and /version reflect the simulator's real state."""

from __future__ import annotations

import contextlib

import aiohttp

from backends.sim import SimServer
from tests.sim.helpers import SimFactory, chat, post

LONG_STREAM = chat(stream=True, ignore_eos=True, max_tokens=1000)


async def scrape(http: aiohttp.ClientSession, sim: SimServer) -> dict[str, float]:
    """Metric lines as {name{labels}: value}."""
    async with http.get(sim.url + "/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


LABELS = '{engine="0",model_name="m"}'


async def test_running_and_waiting_follow_max_num_seqs(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """With max_num_seqs=1, two open streams show as 1 running and 1 waiting."""
    async with (
        make_sim(max_num_seqs=1, token_delay=0.01) as sim,
        contextlib.AsyncExitStack() as stack,
    ):
        for _ in range(2):
            await stack.enter_async_context(
                http.post(sim.url + "/v1/chat/completions", json=LONG_STREAM)
            )
        await sim.wait_for(lambda s: s.running == 1 and s.waiting == 1)
        metrics = await scrape(http, sim)
    assert metrics["vllm:num_requests_running" + LABELS] == 1.0
    assert metrics["vllm:num_requests_waiting" + LABELS] == 1.0
    assert 0 < metrics["vllm:kv_cache_usage_perc" + LABELS] < 1


async def test_idle_server_reports_zero_load(sim: SimServer, http: aiohttp.ClientSession) -> None:
    """After requests finish, running, waiting and KV usage are back to 0."""
    await post(http, sim, chat(max_tokens=2))
    metrics = await scrape(http, sim)
    gauges = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
    assert [metrics[f"vllm:{name}{LABELS}"] for name in gauges] == [0, 0, 0]


async def test_counters_count_tokens_and_finish_reasons(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """Token counters and request_success_total{finished_reason} follow finished requests."""
    await post(http, sim, chat("a b", max_tokens=3))
    await post(http, sim, chat("a b"))
    metrics = await scrape(http, sim)
    reason = 'vllm:request_success_total{engine="0",finished_reason="%s",model_name="m"}'
    assert (metrics[reason % "length"], metrics[reason % "stop"]) == (1, 1)
    assert metrics["vllm:prompt_tokens_total" + LABELS] == 12
    assert metrics["vllm:generation_tokens_total" + LABELS] == 3 + 32


async def test_old_versions_use_gpu_cache_usage_name(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """<=0.10 exposes vllm:gpu_cache_usage_perc; 0.9 has no kv_cache_usage_perc yet."""
    async with make_sim(wire_version="0.9.2") as sim:
        metrics = await scrape(http, sim)
    assert "vllm:gpu_cache_usage_perc" + LABELS in metrics
    assert "vllm:kv_cache_usage_perc" + LABELS not in metrics


async def test_version_endpoint_reports_the_wire_version(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """GET /version answers {"version": wire_version}."""
    async with make_sim(wire_version="0.13.0") as sim, http.get(sim.url + "/version") as resp:
        assert await resp.json() == {"version": "0.13.0"}
