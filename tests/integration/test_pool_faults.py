"""The pool under the simulator's faults: what a client sees when replicas misbehave."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from backends.sim import SimConfig, SimServer
from tera_proxy.app import App, create_app
from tests.e2e.conftest import MODEL, QWEN, proxy_config
from tests.helpers import serve_app, wait_ready

USER = [{"role": "user", "content": "hello"}]


@dataclass
class Pool:
    app: App
    sims: list[SimServer]
    client: openai.AsyncOpenAI


@asynccontextmanager
async def pool_of(
    n: int, sim: dict[str, Any] | None = None, *, cold: int | None = None, **upstream: Any
) -> AsyncIterator[Pool]:
    """n simulator replicas behind the proxy (prober every 0.1 s); `cold` starts late."""
    async with AsyncExitStack() as stack:
        sims = []
        for i in range(n):
            # Each replica its own fault RNG seed: failures must not be correlated.
            opts = {"seed": i, **(sim or {})}
            opts["seed"] += i
            cfg = SimConfig(models=(MODEL, QWEN), api_key="replica-secret", **opts)
            late = 1.0 if i == cold else None
            sims.append(await stack.enter_async_context(
                SimServer(cfg, port=0, start_listening_after=late)))
        config = proxy_config([s.url for s in sims], **upstream)
        config = type(config)(**{**_fields(config), "health": _fast_health(config)})
        state = stack.enter_context(tempfile.TemporaryDirectory())
        app = create_app(config, state_dir=Path(state))
        url = await stack.enter_async_context(serve_app(app))
        if cold is None:
            await wait_ready(app)
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-tera-x", max_retries=0)
        stack.push_async_callback(client.close)
        yield Pool(app, sims, client)


def _fields(config: Any) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def _fast_health(config: Any) -> Any:
    from dataclasses import replace

    return replace(config.health, interval=0.1, jitter=0.1, timeout=0.5, eject_for=0.5)


def chats(sim: SimServer) -> list[Any]:
    return [r for r in sim.stats.requests if r.path == "/v1/chat/completions"]


@dataclass
class Tally:
    ok: int = 0
    failed_unstarted: int = 0
    failed_started: int = 0
    errors: list[str] = field(default_factory=list)


async def one_request(
    client: openai.AsyncOpenAI, stream: bool, tally: Tally, text: str = "hello"
) -> None:
    started = False
    messages = [{"role": "user", "content": text}]
    try:
        if stream:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=12, stream=True
            )
            async for _ in chunks:
                started = True
        else:
            await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
        tally.ok += 1
    except openai.APIError as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
        if started:
            tally.failed_started += 1
        else:
            tally.failed_unstarted += 1


async def steady_traffic(
    client: openai.AsyncOpenAI, tally: Tally, *, workers: int, per_worker: int, seconds: float
) -> None:
    """Bounded closed-loop traffic: alternating streamed and plain requests."""
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        for i in range(per_worker):
            if time.monotonic() > deadline:
                return
            # Distinct prompts, so prefix affinity spreads them over the replicas.
            await one_request(client, (w + i) % 2 == 0, tally, f"hello {w}-{i}")

    await asyncio.gather(*(worker(w) for w in range(workers)))


async def test_one_of_three_killed_under_traffic() -> None:
    """Killing a replica mid-traffic fails no plain request and no unstarted stream."""
    async with pool_of(3, {"token_delay": 0.01}) as pool:
        victim = pool.sims[1]
        tally = Tally()
        traffic = asyncio.ensure_future(
            steady_traffic(pool.client, tally, workers=6, per_worker=40, seconds=4.0)
        )
        await victim.wait_for(lambda st: st.inflight >= 1 and len(chats(victim)) >= 3, 3.0)
        victim.refuse(60)  # dies: connections dropped, then refused
        before = tally.ok
        await traffic
    assert tally.failed_unstarted == 0, tally.errors
    assert tally.ok - before >= 20  # traffic went on after the kill


async def test_thirty_percent_5xx_all_succeed() -> None:
    """With 30% injected 5xx on every replica, every request succeeds within the bound."""
    # 0.3**10 per request: about 1 run in 3,000 could see a failure by chance.
    async with pool_of(3, {"seed": 7}, max_attempts=10) as pool:
        for sim in pool.sims:
            sim.faults.error_rate = 0.3
        tally = Tally()
        await steady_traffic(pool.client, tally, workers=4, per_worker=15, seconds=20.0)
        injected = sum(s.stats.injected_errors_total for s in pool.sims)
    assert tally.ok == 60, tally.errors
    assert injected >= 10  # the faults really fired


async def test_hung_replica_times_out_and_others_serve() -> None:
    """Requests stuck on a hung replica time out and succeed on another one."""
    async with pool_of(2, read_timeout=0.5) as pool:
        pool.sims[0].faults.hang = True
        tally = Tally()
        await steady_traffic(pool.client, tally, workers=2, per_worker=4, seconds=20.0)
        hung = len(chats(pool.sims[0]))
    assert tally.ok == 8, tally.errors
    assert hung >= 1  # some did land on the hung replica first


async def test_cold_replica_gets_no_traffic_before_warm_up() -> None:
    """A replica that starts refusing gets its warm-up before any client request."""
    async with pool_of(2, cold=1) as pool:
        cold = pool.sims[1]
        tally = Tally()
        await wait_ready_for(pool, pool.sims[0])
        traffic = asyncio.ensure_future(
            steady_traffic(pool.client, tally, workers=3, per_worker=30, seconds=3.0)
        )
        await cold.wait_for(lambda st: len(chats(cold)) >= 1, 5.0)
        await traffic
        first = [r.path for r in cold.stats.requests][:1]
        warmups = [r for r in cold.stats.requests if r.path == "/v1/completions"]
        first_chat = min(r.at for r in chats(cold))
    assert tally.failed_unstarted == 0 and tally.failed_started == 0, tally.errors
    assert first == ["/v1/completions"]
    assert all(w.json["max_tokens"] <= 2 for w in warmups)
    assert min(w.at for w in warmups) <= first_chat


async def wait_ready_for(pool: Pool, sim: SimServer) -> None:
    name = f"r{pool.sims.index(sim)}"
    async with asyncio.timeout(5):
        while pool.app.pool.replicas[name].state.value != "ready":  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_all_down_503_then_recovery() -> None:
    """With every replica down: 503 + Retry-After; once they return, requests succeed."""
    async with pool_of(2) as pool:
        for sim in pool.sims:
            sim.refuse(1.0)
        try:
            await pool.client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
            raise AssertionError("expected a 503")
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
            assert exc.type == "service_unavailable"
            assert int(exc.response.headers["retry-after"]) >= 1
        for sim in pool.sims:
            await asyncio.wait_for(sim.listening.wait(), 5)
        recovered = await first_success(pool.client, within=5.0)
    assert recovered < 5.0


async def first_success(client: openai.AsyncOpenAI, within: float) -> float:
    """Seconds until a request succeeds, polling every 0.1 s for at most `within` s."""
    start = time.monotonic()
    while True:
        try:
            await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
            return time.monotonic() - start
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or time.monotonic() - start > within:
                raise
        await asyncio.sleep(0.1)


async def test_drifted_inflight_counter_recovers() -> None:
    """A replica whose in-flight counter drifted up (lost decrements) gets traffic again."""
    async with pool_of(2) as pool:
        drifted = pool.app.pool.replicas["r0"]
        drifted.inflight += 40
        async with asyncio.timeout(5):
            while drifted.inflight > 0:  # noqa: ASYNC110 - corrected by the prober's scrapes
                await asyncio.sleep(0.02)
        before = len(chats(pool.sims[0]))
        tally = Tally()
        await steady_traffic(pool.client, tally, workers=4, per_worker=5, seconds=10.0)
        after = len(chats(pool.sims[0]))
    assert tally.ok == 20
    assert after - before >= 5


async def test_shared_prefix_sticks_to_one_replica() -> None:
    """Requests sharing a system prompt and first user turn land on one replica."""
    system = {"role": "system", "content": "You are a helpful assistant. " * 20}
    async with pool_of(3) as pool:
        for i in range(12):
            messages = [system, {"role": "user", "content": "Plan my trip"},
                        {"role": "assistant", "content": f"turn {i}"},
                        {"role": "user", "content": f"and then {i}?"}]
            await pool.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        counts = sorted(len(chats(s)) for s in pool.sims)
    assert counts == [0, 0, 12]


async def test_hot_prefix_spills_within_the_bound() -> None:
    """A hot prefix under concurrency spreads once its replica exceeds (1+eps) x mean."""
    system = {"role": "system", "content": "hot prefix " * 50}
    messages = [system, {"role": "user", "content": "go"}]
    async with pool_of(3, {"token_delay": 0.02}) as pool:
        peaks = [0, 0, 0]
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                for i, s in enumerate(pool.sims):
                    peaks[i] = max(peaks[i], s.stats.inflight)
                await asyncio.sleep(0.005)

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(*(
            pool.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30)
            for _ in range(30)
        ))
        stop.set()
        await sampler
        counts = [len(chats(s)) for s in pool.sims]
    eps = 0.25
    bound = math.ceil((1 + eps) * 30 / 3)
    assert max(peaks) <= bound + 1, peaks
    assert sum(1 for c in counts if c > 0) >= 2, counts
