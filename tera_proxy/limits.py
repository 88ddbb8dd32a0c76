"""Per-key admission: in-flight concurrency, requests per minute, tokens per minute.

Requests and tokens are token buckets that hold one minute's allowance and refill
continuously (limit / 60 per second). Tokens are admitted by reservation: a request
takes `prompt estimate + max_tokens` out of the bucket when it is admitted, and
`settle` gives back what it did not use (or takes the excess when it used more), so
concurrent requests can never together reserve more than the bucket holds. A request
larger than the whole allowance reserves the whole allowance: it waits for a full bucket
and pays the rest as debt, instead of being refused forever.

Every admission is a ticket with a lease (`lease_ttl`): concurrency counts unexpired
tickets, settling a ticket twice does nothing, and a ticket whose proxy died stops
counting when its lease runs out.

`decide` is the whole policy, pure. `MemoryLimiter` applies it to in-process state;
`tera_proxy.store.redis.RedisLimiter` runs the same rules in Lua so several proxies
share one set of buckets.
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tera_proxy.errors import RateLimited
from tera_proxy.keys import KeyLimits

SECONDS = 1.0
WINDOW = 60 * SECONDS  # the "per minute"
# Nothing says when an in-flight request will end; ask the client to come back soon.
CONCURRENCY_RETRY_AFTER = 1 * SECONDS
DEFAULT_LEASE = 15 * 60 * SECONDS
# Refill is float arithmetic: a client retrying exactly at Retry-After must find room,
# not a bucket a rounding error short of it.
SLACK = 1e-6
PURGE_MIN = 64

Clock = Callable[[], float]


class LimitKind(enum.Enum):
    CONCURRENCY = "concurrency"
    REQUESTS = "requests"
    TOKENS = "tokens"

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class RateStatus:
    """What the x-ratelimit-* headers report; None limits are not reported."""

    requests_limit: int | None = None
    requests_remaining: int = 0
    requests_reset: float = 0.0  # seconds until the bucket is full again
    tokens_limit: int | None = None
    tokens_remaining: int = 0
    tokens_reset: float = 0.0


UNLIMITED = RateStatus()


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request; hand it back to `settle` exactly when the request ends."""

    key_id: str
    ticket: str  # "" when the key has no limits: nothing to settle
    reserved: int
    limits: KeyLimits
    rate: RateStatus


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    kind: LimitKind | None  # the first limit that refused
    retry_after: float
    requests_level: float  # bucket levels after the decision
    tokens_level: float
    reserved: int


class LimitExceeded(RateLimited):
    """429 with Retry-After and the x-ratelimit-* headers."""

    def __init__(self, verdict: Verdict, limits: KeyLimits) -> None:
        assert verdict.kind is not None
        super().__init__(_message(verdict, limits), retry_after=verdict.retry_after)
        self.kind = verdict.kind
        self.rate = rate_status(limits, verdict.requests_level, verdict.tokens_level)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), *ratelimit_headers(self.rate)]


class Limiter(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def admit(self, key_id: str, limits: KeyLimits, tokens: int) -> Admission:
        """Admit a request reserving `tokens`, or raise LimitExceeded."""
        ...

    async def settle(self, admission: Admission, used_tokens: int) -> None: ...


def refill(level: float, updated: float, capacity: int, now: float) -> float:
    """A bucket's level at `now`; it never fills beyond `capacity`."""
    return min(float(capacity), level + max(0.0, now - updated) * capacity / WINDOW)


def reservation(limits: KeyLimits, tokens: int) -> int:
    tpm = limits.tokens_per_minute
    tokens = max(0, tokens)
    return tokens if tpm is None else min(tokens, tpm)


def decide(
    limits: KeyLimits, inflight: int, requests_level: float, tokens_level: float, tokens: int
) -> Verdict:
    """Admit or refuse, given the key's in-flight count and bucket levels refilled to now."""
    reserve = reservation(limits, tokens)
    kind: LimitKind | None = None
    wait = 0.0
    if limits.max_concurrency is not None and inflight >= limits.max_concurrency:
        kind, wait = LimitKind.CONCURRENCY, CONCURRENCY_RETRY_AFTER
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    if rpm is not None and requests_level + SLACK < 1:
        kind = kind or LimitKind.REQUESTS
        wait = max(wait, (1 - requests_level) * WINDOW / rpm)
    if tpm is not None and tokens_level + SLACK < reserve:
        kind = kind or LimitKind.TOKENS
        wait = max(wait, (reserve - tokens_level) * WINDOW / tpm)
    if kind is not None:
        return Verdict(False, kind, wait, requests_level, tokens_level, 0)
    return Verdict(True, None, 0.0, requests_level - 1, tokens_level - reserve, reserve)


def rate_status(limits: KeyLimits, requests_level: float, tokens_level: float) -> RateStatus:
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return RateStatus(
        requests_limit=rpm,
        requests_remaining=_remaining(requests_level),
        requests_reset=_until_full(rpm, requests_level),
        tokens_limit=tpm,
        tokens_remaining=_remaining(tokens_level),
        tokens_reset=_until_full(tpm, tokens_level),
    )


def _remaining(level: float) -> int:
    return max(0, math.floor(level))


def _until_full(capacity: int | None, level: float) -> float:
    if capacity is None:
        return 0.0
    return max(0.0, (capacity - level) * WINDOW / capacity)


def ratelimit_headers(rate: RateStatus) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} for a response."""
    headers: list[tuple[bytes, bytes]] = []
    for name, limit, remaining, reset in (
        (b"requests", rate.requests_limit, rate.requests_remaining, rate.requests_reset),
        (b"tokens", rate.tokens_limit, rate.tokens_remaining, rate.tokens_reset),
    ):
        if limit is None:
            continue
        headers += [
            (b"x-ratelimit-limit-" + name, str(limit).encode()),
            (b"x-ratelimit-remaining-" + name, str(min(limit, remaining)).encode()),
            (b"x-ratelimit-reset-" + name, format_reset(reset).encode()),
        ]
    return headers


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it: `0s`, `120ms`, `8.64s`, `6m0s`."""
    ms = math.ceil(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _message(verdict: Verdict, limits: KeyLimits) -> str:
    if verdict.kind is LimitKind.CONCURRENCY:
        return (
            f"Too many concurrent requests for this API key (limit "
            f"{limits.max_concurrency}). Retry when one of them has finished."
        )
    if verdict.kind is LimitKind.REQUESTS:
        return (
            f"Rate limit reached: {limits.requests_per_minute} requests per minute "
            "for this API key."
        )
    return (
        f"Rate limit reached: {limits.tokens_per_minute} tokens per minute for this API key. "
        "A request reserves its prompt plus max_tokens; a lower max_tokens is admitted sooner."
    )


# -- in-process backend -------------------------------------------------------------


class _KeyState:
    __slots__ = ("purge_at", "requests", "requests_at", "tickets", "tokens", "tokens_at")

    def __init__(self, now: float) -> None:
        # A bucket never seen is full, whatever its capacity turns out to be.
        self.requests = self.tokens = math.inf
        self.requests_at = self.tokens_at = now
        self.tickets: dict[str, float] = {}  # ticket -> lease expiry
        # Expired tickets are swept when the count reaches this (amortised O(1)), so
        # tickets never settled cannot pile up on a key without a concurrency limit.
        self.purge_at = PURGE_MIN

    def purge(self, now: float) -> None:
        self.tickets = {t: expiry for t, expiry in self.tickets.items() if expiry > now}
        self.purge_at = max(PURGE_MIN, 2 * len(self.tickets))


class MemoryLimiter:
    """Limits for one proxy process; pure bookkeeping on an injected clock."""

    def __init__(self, *, clock: Clock = time.monotonic, lease_ttl: float = DEFAULT_LEASE) -> None:
        self._clock = clock
        self._lease = lease_ttl
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        inflight = sum(len(s.tickets) for s in self._keys.values())
        return f"<MemoryLimiter keys={len(self._keys)} inflight={inflight}>"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def admit(self, key_id: str, limits: KeyLimits, tokens: int) -> Admission:
        return self.admit_now(key_id, limits, tokens)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        self.settle_now(admission, used_tokens)

    def inflight(self, key_id: str) -> int:
        state = self._keys.get(key_id)
        return 0 if state is None else len(state.tickets)

    def admit_now(self, key_id: str, limits: KeyLimits, tokens: int) -> Admission:
        if limits.unlimited:
            return Admission(key_id, "", 0, limits, UNLIMITED)
        now = self._clock()
        state = self._keys.get(key_id)
        if state is None:
            state = self._keys[key_id] = _KeyState(now)
        cap = limits.max_concurrency
        if len(state.tickets) >= state.purge_at or (cap is not None and len(state.tickets) >= cap):
            state.purge(now)
        requests, tokens_level = self._levels(state, limits, now)
        verdict = decide(limits, len(state.tickets), requests, tokens_level, tokens)
        if not verdict.admitted:
            raise LimitExceeded(verdict, limits)
        if limits.requests_per_minute is not None:
            state.requests, state.requests_at = verdict.requests_level, now
        if limits.tokens_per_minute is not None:
            state.tokens, state.tokens_at = verdict.tokens_level, now
        ticket = str(next(self._ids))
        state.tickets[ticket] = now + self._lease
        rate = rate_status(limits, verdict.requests_level, verdict.tokens_level)
        return Admission(key_id, ticket, verdict.reserved, limits, rate)

    def settle_now(self, admission: Admission, used_tokens: int) -> None:
        state = self._keys.get(admission.key_id)
        if state is None or not admission.ticket:
            return
        expiry = state.tickets.pop(admission.ticket, None)
        now = self._clock()
        tpm = admission.limits.tokens_per_minute
        # A ticket past its lease holds nothing any more (Redis may have dropped it
        # already): settling it refunds nothing, on either backend.
        if expiry is None or expiry <= now or tpm is None:
            return
        level = refill(state.tokens, state.tokens_at, tpm, now)
        refund = admission.reserved - max(0, used_tokens)
        state.tokens = min(float(tpm), level + refund)
        state.tokens_at = now

    @staticmethod
    def _levels(state: _KeyState, limits: KeyLimits, now: float) -> tuple[float, float]:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        requests = 0.0 if rpm is None else refill(state.requests, state.requests_at, rpm, now)
        tokens = 0.0 if tpm is None else refill(state.tokens, state.tokens_at, tpm, now)
        return requests, tokens
