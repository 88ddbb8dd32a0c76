"""The health prober against an in-process fake vLLM, and the /metrics parser."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tera_proxy.config import Config, parse_config
from tera_proxy.health import HealthProber, describe_change
from tera_proxy.metrics_parse import Scrape, parse_samples, parse_scrape
from tera_proxy.pool import Pool, ReplicaState

S = ReplicaState

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="tiny"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="tiny"}} {waiting}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="tiny"}} 0.25
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="tiny"}} {generated}
"""


class FakeVllm:
    """A stand-in vLLM whose answers the test sets. Its port is bound but not listening
    until `listen()`, so connections are refused first, as with vLLM while it loads."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.health_status = 200
        self.health_gate: asyncio.Event | None = None  # /health waits for it when set
        self.models: dict[str, Any] = {"tiny": 2048}
        self.running, self.waiting, self.generated = 1.0, 2.0, 100.0
        self.completion_status = 200
        self.completions: list[dict[str, Any]] = []
        self.hits: list[tuple[str, str | None]] = []  # (path, Authorization)
        self.runner: web.AppRunner | None = None

    async def listen(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def stop(self) -> None:
        """Stop listening: connections are refused again, as after a crash."""
        if self.health_gate is not None:
            self.health_gate.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.sock.close()

    async def close(self) -> None:
        await self.stop()

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]

    def _hit(self, request: web.Request) -> None:
        self.hits.append((request.path, request.headers.get("Authorization")))

    async def _health(self, request: web.Request) -> web.Response:
        self._hit(request)
        if self.health_gate is not None:
            await self.health_gate.wait()
        return web.Response(status=self.health_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        self._hit(request)
        text = METRICS.format(running=self.running, waiting=self.waiting, generated=self.generated)
        return web.Response(text=text)

    async def _models(self, request: web.Request) -> web.Response:
        self._hit(request)
        data = [{"id": k, "object": "model", "max_model_len": v} for k, v in self.models.items()]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.Response:
        self._hit(request)
        self.completions.append(await request.json())
        if self.completion_status != 200:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        return web.json_response({"choices": [{"text": "!", "finish_reason": "length"}]})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Records the prober's delays; after `limit` calls it parks the loop for good."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.parked = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self.limit:
            self.parked.set()
            await asyncio.Future()
        await asyncio.sleep(0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVllm]:
    server = FakeVllm()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_config(url: str, *, api_key: str | None = None, **health: Any) -> Config:
    replica: dict[str, Any] = {"name": "a", "url": url}
    if api_key:
        replica["api_key"] = api_key
    model = {
        "id": "m",
        "served_name": "tiny",
        "context_length": 2048,
        "max_output_tokens": 512,
        "input_price_per_million": 0.1,
        "output_price_per_million": 0.2,
        "replicas": ["a"],
    }
    health = {"timeout": 1.0, **health}
    return parse_config({"replicas": [replica], "models": [model], "health": health})


def setup(
    fake: FakeVllm, session: aiohttp.ClientSession, config: Config | None = None, **health: Any
) -> tuple[Pool, HealthProber, Clock]:
    clock = Clock()
    config = config or make_config(fake.url, **health)
    pool = Pool(config, clock)
    pool.begin_probing()
    return pool, HealthProber(pool, config, session, clock, rng=random.Random(7)), clock


# -- the prober ------------------------------------------------------------------------


async def test_refused_connection_keeps_the_replica_starting(fake, session) -> None:
    """Nothing listening yet: STARTING, and no warm-up attempted."""
    pool, prober, _ = setup(fake, session)
    await prober.probe_once(pool.replicas["a"])
    assert pool.replicas["a"].state is S.STARTING


async def test_listening_replica_is_warmed_up_then_ready(fake, session) -> None:
    """refused -> STARTING, listening -> WARMING, warm-up passes -> READY."""
    pool, prober, _ = setup(fake, session)
    seen: list[str] = []
    pool.on_change = lambda r, old, new: seen.append(describe_change(r, old, new))
    replica = pool.replicas["a"]
    await prober.probe_once(replica)
    await fake.listen()
    await prober.probe_once(replica)
    assert replica.state is S.READY
    assert seen == ["replica a: starting -> warming", "replica a: warming -> ready"]


async def test_replica_that_stops_listening_goes_back_to_starting(fake, session) -> None:
    """A refused connection after READY means a restart: STARTING at once."""
    pool, prober, _ = setup(fake, session)
    await fake.listen()
    replica = pool.replicas["a"]
    await prober.probe_once(replica)
    await fake.stop()
    await prober.probe_once(replica)
    assert replica.state is S.STARTING


async def test_warmup_is_a_tiny_completion_under_the_upstream_name(fake, session) -> None:
    """The warm-up asks the served name for one or two tokens."""
    pool, prober, _ = setup(fake, session)
    await fake.listen()
    await prober.probe_once(pool.replicas["a"])
    [body] = fake.completions
    assert body["model"] == "tiny"
    assert 1 <= body["max_tokens"] <= 2


async def test_failed_warmup_keeps_the_replica_out_of_traffic(fake, session) -> None:
    """A warm-up answered with 500 leaves the replica WARMING until one passes."""
    pool, prober, _ = setup(fake, session)
    fake.completion_status = 500
    await fake.listen()
    await prober.probe_once(pool.replicas["a"])
    assert pool.replicas["a"].state is S.WARMING
    assert not pool.can_serve("m")
    fake.completion_status = 200
    await prober.probe_once(pool.replicas["a"])
    assert pool.can_serve("m")


async def test_replica_without_the_model_is_not_warmed_or_ready(fake, session) -> None:
    """/v1/models without the upstream name: no warm-up, no traffic."""
    pool, prober, _ = setup(fake, session)
    fake.models = {"something-else": 4096}
    await fake.listen()
    await prober.probe_once(pool.replicas["a"])
    assert fake.completions == []
    assert not pool.can_serve("m")


async def test_probe_records_scrape_and_max_model_len(fake, session) -> None:
    """A probe stores the scraped load and the context length."""
    pool, prober, _ = setup(fake, session)
    await fake.listen()
    await prober.probe_once(pool.replicas["a"])
    replica = pool.replicas["a"]
    assert replica.scrape == Scrape(1.0, 2.0, 0.25, 100.0)
    assert replica.max_model_len == {"m": 2048}
    assert pool.snapshot("m")[0].load == 3


async def test_failing_health_ejects_after_the_threshold(fake, session) -> None:
    """/health 503 failure_threshold times in a row: UNHEALTHY."""
    pool, prober, clock = setup(fake, session, failure_threshold=2)
    await fake.listen()
    replica = pool.replicas["a"]
    await prober.probe_once(replica)
    fake.health_status = 503
    for _ in range(2):
        clock.now += 10.0
        await prober.probe_once(replica)
    assert replica.state is S.UNHEALTHY


async def test_slow_health_spares_a_replica_producing_tokens(fake, session) -> None:
    """/health times out, but the token counter moves: the replica stays READY."""
    # The timeout is real (aiohttp's); it leaves /metrics ample time on a busy machine.
    pool, prober, clock = setup(fake, session, timeout=0.25, failure_threshold=2)
    await fake.listen()
    replica = pool.replicas["a"]
    await prober.probe_once(replica)
    fake.health_gate = asyncio.Event()
    for _ in range(3):
        fake.generated += 50
        clock.now += 2.0
        await prober.probe_once(replica)
    assert replica.state is S.READY


async def test_slow_health_ejects_a_replica_that_stands_still(fake, session) -> None:
    """/health times out and no token moves: the replica is ejected."""
    pool, prober, clock = setup(fake, session, timeout=0.25, failure_threshold=2)
    await fake.listen()
    replica = pool.replicas["a"]
    await prober.probe_once(replica)
    fake.health_gate = asyncio.Event()
    for _ in range(2):
        clock.now += 10.0
        await prober.probe_once(replica)
    assert replica.state is S.UNHEALTHY


async def test_ejected_replica_is_left_alone_then_rewarmed(fake, session) -> None:
    """No probes during the ejection; afterwards half-open -> WARMING -> READY."""
    pool, prober, clock = setup(fake, session, failure_threshold=1, eject_for=5.0)
    await fake.listen()
    replica = pool.replicas["a"]
    await prober.probe_once(replica)
    pool.release(replica, failed=True)
    hits = len(fake.hits)
    await prober.probe_once(replica)
    assert len(fake.hits) == hits and replica.state is S.UNHEALTHY
    assert prober.delay(replica) == 5.0
    clock.now += 5.0
    await prober.probe_once(replica)
    assert replica.state is S.READY
    assert len(fake.completions) == 2  # warmed up again


async def test_every_served_model_is_warmed_under_its_name(fake, session) -> None:
    """A replica serving two catalog models is warmed for both before READY."""
    fake.models = {"tiny": 2048, "tiny-alias": 2048}
    base = make_config(fake.url)
    alias = dataclasses.replace(base.models[0], id="m2", served_name="tiny-alias")
    config = Config(replicas=base.replicas, models=(base.models[0], alias), health=base.health)
    pool, prober, _ = setup(fake, session, config)
    await fake.listen()
    await prober.probe_once(pool.replicas["a"])
    assert sorted(c["model"] for c in fake.completions) == ["tiny", "tiny-alias"]
    assert pool.can_serve("m") and pool.can_serve("m2")


async def test_replica_api_key_is_sent(fake, session) -> None:
    """Probes and warm-up carry the replica's key."""
    pool, prober, _ = setup(fake, session, make_config(fake.url, api_key="sk-up"))
    await fake.listen()
    await prober.probe_once(pool.replicas["a"])
    assert {auth for _, auth in fake.hits} == {"Bearer sk-up"}


async def test_loop_probes_at_once_then_every_jittered_interval(fake, session) -> None:
    """start() probes immediately, then sleeps interval +- jitter between probes."""
    pool, _, clock = setup(fake, session, interval=2.0, jitter=0.2)
    sleep = RecordingSleep(limit=3)
    config = make_config(fake.url, interval=2.0, jitter=0.2)
    prober = HealthProber(pool, config, session, clock, sleep, random.Random(1))
    await fake.listen()
    await prober.start()
    await asyncio.wait_for(sleep.parked.wait(), 10)
    await prober.stop()
    assert pool.replicas["a"].state is S.READY
    assert fake.paths().count("/health") == 3
    assert all(1.6 <= d <= 2.4 for d in sleep.delays)
    assert len(set(sleep.delays)) == 3


async def test_stop_ends_the_probing(fake, session) -> None:
    """After stop() no probe reaches the replica."""
    pool, _, clock = setup(fake, session)
    sleep = RecordingSleep(limit=1)
    prober = HealthProber(pool, make_config(fake.url), session, clock, sleep)
    await fake.listen()
    await prober.start()
    await asyncio.wait_for(sleep.parked.wait(), 10)
    await prober.stop()
    hits = len(fake.hits)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(fake.hits) == hits
    assert prober._task is None


# -- /metrics parsing ------------------------------------------------------------------

# Lines as vLLM 0.32 sends them (transcripts/t_11_metrics.txt), plus awkward ones.
REAL = """\
# HELP python_gc_objects_collected_total Objects collected during gc
python_gc_objects_collected_total{generation="0"} 15467.0
process_virtual_memory_bytes 2.200961024e+09
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.0004883408619216212
vllm:generation_tokens_total{engine="0",model_name="tiny"} 1130.0
vllm:generation_tokens_created{engine="0",model_name="tiny"} 1.7953001847328234e+09
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 12.0
vllm:request_generation_tokens_bucket{engine="0",le="+Inf",model_name="tiny"} 15.0
"""


def test_parse_scrape_reads_vllm_metrics() -> None:
    """Running, waiting, KV cache and the progress counters come out of a real page."""
    assert parse_scrape(REAL) == Scrape(2.0, 3.0, 0.0004883408619216212, 1130.0, 15.0)


def test_parse_scrape_sums_engines_and_takes_the_fullest_cache() -> None:
    """Queues add up across engines; KV usage is the fullest engine's."""
    text = (
        'vllm:num_requests_running{engine="0"} 2\nvllm:num_requests_running{engine="1"} 3\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.2\nvllm:kv_cache_usage_perc{engine="1"} 0.7\n'
    )
    scrape = parse_scrape(text)
    assert (scrape.running, scrape.kv_cache, scrape.queue) == (5.0, 0.7, 5)


def test_parse_scrape_falls_back_to_the_old_cache_name() -> None:
    """vllm:gpu_cache_usage_perc (before 0.10) is read when the new name is absent."""
    assert parse_scrape("vllm:gpu_cache_usage_perc 0.5\n").kv_cache == 0.5
    both = "vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.1\n"
    assert parse_scrape(both).kv_cache == 0.1


def test_parse_scrape_skips_nan_and_garbage() -> None:
    """NaN samples and unparsable lines are skipped, not fatal."""
    text = (
        "vllm:num_requests_running NaN\n"
        "vllm:num_requests_running{engine=0} 4\n"
        "vllm:num_requests_waiting not-a-number\n"
        "vllm:num_requests_waiting 1 1712000000000\n"
    )
    scrape = parse_scrape(text)
    assert (scrape.running, scrape.waiting) == (None, 1.0)


def test_parse_scrape_of_a_page_without_vllm_metrics() -> None:
    """No vLLM series: every field None, no queue."""
    scrape = parse_scrape("# just a comment\n\nup 1\n")
    assert scrape == Scrape() and scrape.queue is None


def test_label_values_may_hold_braces_quotes_and_escapes() -> None:
    """Quoted label values keep `}`, `,` and escaped quotes intact."""
    [sample] = parse_samples('m{a="x}, y",b="say \\"hi\\"\\n",c="\\\\"} +Inf\n')
    assert sample.labels == {"a": "x}, y", "b": 'say "hi"\n', "c": "\\"}
    assert sample.value == math.inf


def test_parse_samples_can_filter_by_name() -> None:
    """Only the wanted names are returned."""
    names = [s.name for s in parse_samples(REAL, {"vllm:num_requests_waiting"})]
    assert names == ["vllm:num_requests_waiting"]


def test_moved_since_compares_the_progress_counters() -> None:
    """Tokens or finished requests that changed count as progress; gauges do not."""
    before = Scrape(1.0, 0.0, 0.1, 100.0, 5.0)
    assert Scrape(9.0, 9.0, 0.9, 100.0, 5.0).moved_since(before) is False
    assert Scrape(1.0, 0.0, 0.1, 101.0, 5.0).moved_since(before) is True
    assert Scrape(1.0, 0.0, 0.1, 100.0, 6.0).moved_since(before) is True
