"""The health prober: one background task that watches every replica.

Per replica, every `interval` (give or take `jitter`, so probes of many replicas do not
fall into step): GET /health and /metrics together, then /v1/models. The pool turns what
was seen into state changes (`Pool.observe`). A replica left WARMING then gets its warm-up:
one tiny real completion per served model under its upstream name.

The task supervises one child per replica so that a slow warm-up (up to
`warmup_timeout`) never delays the probes of the others. Clock, sleep and the jitter's
random source are injected: tests advance the loop without waiting.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from tera_proxy.config import Config
from tera_proxy.metrics_parse import Scrape, parse_scrape
from tera_proxy.pool import Pool, Probe, Reach, Replica, ReplicaState

log = structlog.get_logger(__name__)

WARMUP_PROMPT = "Hello"
WARMUP_TOKENS = 1


def describe_change(replica: Replica, old: ReplicaState, new: ReplicaState) -> str:
    """One console line for a state change: `replica a: starting -> warming`."""
    return f"replica {replica.name}: {old.value} -> {new.value}"


class HealthProber:
    def __init__(
        self,
        pool: Pool,
        config: Config,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._health = config.health
        self._session = session
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin probing (the app's lifespan startup); returns at once."""
        if self._task is not None:
            return
        self._pool.begin_probing()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-prober")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # stop() itself is being cancelled

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for replica in self._pool.replicas.values():
                group.create_task(self._watch(replica), name=f"probe {replica.name}")

    async def _watch(self, replica: Replica) -> None:
        while True:
            try:
                await self.probe_once(replica)
            except Exception:  # a bug here must not stop the watch of this replica
                log.exception("probe crashed", replica=replica.name)
            await self._sleep(self.delay(replica))

    def delay(self, replica: Replica) -> float:
        """Seconds until the replica's next probe: the jittered interval, or the rest of
        its ejection (the half-open probe comes as soon as the ejection ends)."""
        if replica.state is ReplicaState.UNHEALTHY:
            remaining = replica.ejected_until - self._clock()
            if remaining > 0:
                return remaining
        h = self._health
        return h.interval * (1 + h.jitter * self._rng.uniform(-1.0, 1.0))

    async def probe_once(self, replica: Replica) -> None:
        """One cycle: look, let the pool decide, warm up if that left it WARMING."""
        if replica.state is ReplicaState.UNHEALTHY and self._clock() < replica.ejected_until:
            return
        corrected, before = replica.corrected, replica.state
        probe = await self.check(replica)
        self._pool.observe(replica, probe)
        if probe.reach is not Reach.HEALTHY:
            # Worth a warning only when it changed something: the reason for an ejection.
            level = log.warning if replica.state is not before else log.debug
            level("probe failed", replica=replica.name, detail=probe.detail)
        if replica.corrected != corrected:
            written_off = replica.corrected - corrected
            log.warning("in-flight count drifted", replica=replica.name, written_off=written_off)
        if replica.state is ReplicaState.WARMING:
            await self.warm_up(replica)

    async def check(self, replica: Replica) -> Probe:
        """/health and /metrics together (a busy vLLM can stall both), then /v1/models."""
        inflight = replica.inflight
        (reach, detail), scrape = await asyncio.gather(
            self._health_of(replica), self._scrape(replica)
        )
        models = None
        if reach is Reach.HEALTHY:
            models = await self._models_of(replica)
            if models is None:
                reach, detail = Reach.FAILED, "/v1/models did not answer with a model list"
        return Probe(reach, models, scrape, inflight, detail)

    async def warm_up(self, replica: Replica) -> bool:
        """One tiny generation per listed, not yet warm model; True when all passed."""
        for model_id in sorted(replica.listed - replica.warmed):
            name = self._pool.models[model_id].upstream_name
            started = self._clock()
            if not await self._generate(replica, name):
                return False
            took = round(self._clock() - started, 3)
            log.info("warm-up passed", replica=replica.name, model=name, seconds=took)
            self._pool.mark_warm(replica, model_id)
        return True

    async def _health_of(self, replica: Replica) -> tuple[Reach, str]:
        try:
            status, _ = await self._fetch(replica, "/health", self._health.timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _reach_of(exc), _describe(exc)
        return (Reach.HEALTHY if status == 200 else Reach.FAILED), f"/health answered {status}"

    async def _scrape(self, replica: Replica) -> Scrape | None:
        try:
            status, body = await self._fetch(replica, "/metrics", self._health.timeout)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return parse_scrape(body.decode("utf-8", "replace")) if status == 200 else None

    async def _models_of(self, replica: Replica) -> Mapping[str, int | None] | None:
        try:
            status, body = await self._fetch(replica, "/v1/models", self._health.timeout)
            if status != 200:
                return None
            listed = orjson.loads(body)["data"]
            return {str(m["id"]): _length(m.get("max_model_len")) for m in listed}
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None
        except (KeyError, TypeError, AttributeError):
            return None  # JSON, but not a model list

    async def _generate(self, replica: Replica, upstream_name: str) -> bool:
        body = {
            "model": upstream_name,
            "prompt": WARMUP_PROMPT,
            "max_tokens": WARMUP_TOKENS,
            "temperature": 0.0,
        }
        try:
            status, answer = await self._fetch(
                replica, "/v1/completions", self._health.warmup_timeout, body
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = _describe(exc)
            log.warning("warm-up failed", replica=replica.name, model=upstream_name, detail=detail)
            return False
        if status != 200:
            detail = f"{status}: {answer[:300].decode('utf-8', 'replace')}"
            log.warning("warm-up failed", replica=replica.name, model=upstream_name, detail=detail)
        return status == 200

    async def _fetch(
        self, replica: Replica, path: str, limit: float, json: Any = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}
        data = None
        if json is not None:
            data = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        async with self._session.request(
            "POST" if data is not None else "GET",
            replica.url + path,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit),
        ) as resp:
            return resp.status, await resp.read()


def _reach_of(exc: BaseException) -> Reach:
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
            return Reach.REFUSED
    return Reach.FAILED


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _length(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
