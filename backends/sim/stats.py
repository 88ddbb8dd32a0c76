"""What the simulator saw and did, live: counters tests assert on, the requests the proxy
sent upstream, and the engine's running/waiting state that /metrics reports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

RECENT = 50  # requests and aborted ids kept for inspection


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the simulator received it (headers are case-insensitive)."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def to_dict(self) -> dict[str, Any]:
        body = self.json
        return {
            "method": self.method,
            "path": self.path,
            # Lower-cased names: HTTP header names are case-insensitive.
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body if body is not None else self.body.decode("utf-8", "replace"),
            "at": self.at,
        }

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.path} {len(self.body)}B>"


def record(method: str, path: str, headers: Any, body: bytes) -> RecordedRequest:
    return RecordedRequest(method, path, CIMultiDictProxy(CIMultiDict(headers)), body, time.time())


@dataclass(eq=False)
class SimStats:
    requests_total: int = 0  # generation requests received
    inflight: int = 0  # generation requests not finished yet (running, waiting or hung)
    running: int = 0  # admitted to the engine (vllm:num_requests_running)
    waiting: int = 0  # queued beyond max_num_seqs (vllm:num_requests_waiting)
    completed_total: int = 0  # whole response written
    aborted_total: int = 0  # the client left before the response was complete
    dropped_total: int = 0  # the simulator cut the connection (die_after_frames, drop, restart)
    injected_errors_total: int = 0  # error_rate, fail_next, engine_dead, stream_error_after
    status_counts: Counter[int] = field(default_factory=Counter)  # /v1/* responses
    finished: Counter[str] = field(default_factory=Counter)  # engine reasons, as in metrics
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    kv_tokens: int = 0  # prompt + planned completion tokens of running requests
    requests: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=RECENT))
    aborted_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return (
            f"<SimStats requests={self.requests_total} inflight={self.inflight} "
            f"running={self.running} waiting={self.waiting} completed={self.completed_total} "
            f"aborted={self.aborted_total} dropped={self.dropped_total} "
            f"errors={self.injected_errors_total} status={dict(self.status_counts)}>"
        )

    @property
    def last_request(self) -> RecordedRequest | None:
        return self.requests[-1] if self.requests else None

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next change of these stats."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def changed(self) -> None:
        """Wake every wait_for; cheap when nobody waits."""
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def reset(self) -> None:
        """Zero counters and forget recorded requests; live gauges stay true."""
        live = ("inflight", "running", "waiting", "kv_tokens", "_waiters")
        fresh = SimStats()
        for name in self.__dataclass_fields__:
            if name not in live:
                setattr(self, name, getattr(fresh, name))
        self.changed()

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "inflight": self.inflight,
            "running": self.running,
            "waiting": self.waiting,
            "completed_total": self.completed_total,
            "aborted_total": self.aborted_total,
            "dropped_total": self.dropped_total,
            "injected_errors_total": self.injected_errors_total,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "finished": dict(self.finished),
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "aborted_ids": list(self.aborted_ids),
            "requests": [r.to_dict() for r in self.requests],
        }


class Engine:
    """vLLM's scheduler as a router sees it: max_num_seqs run, the rest wait in order."""

    def __init__(self, stats: SimStats, max_num_seqs: int) -> None:
        self.stats = stats
        self._slots = asyncio.Semaphore(max_num_seqs)

    def __repr__(self) -> str:
        return f"<Engine running={self.stats.running} waiting={self.stats.waiting}>"

    @contextlib.asynccontextmanager
    async def admitted(self, kv_tokens: int) -> AsyncIterator[None]:
        stats = self.stats
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            stats.waiting -= 1
        stats.running += 1
        stats.kv_tokens += kv_tokens
        stats.changed()
        try:
            yield
        finally:
            stats.running -= 1
            stats.kv_tokens -= kv_tokens
            self._slots.release()
            stats.changed()
