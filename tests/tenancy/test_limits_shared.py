"""Several proxies share one limit through Redis; Redis and memory decide alike."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import RedisError

from tera_proxy.errors import ServiceUnavailable
from tera_proxy.keys import KeyLimits
from tera_proxy.limits import Admission, Limiter, LimitExceeded, LimitKind, MemoryLimiter
from tera_proxy.store.redis import RedisLimiter
from tests.tenancy.conftest import _free_port
from tests.tenancy.support import FakeClock

KEY = "key_shared"


@pytest.fixture
async def proxies(redis_url: str, clock: FakeClock) -> AsyncIterator[list[RedisLimiter]]:
    """Two limiters, each with its own connection pool, like two proxy processes."""
    prefix = f"test:{secrets.token_hex(4)}:"
    pair = [RedisLimiter(redis_url, prefix=prefix, clock=clock) for _ in range(2)]
    for limiter in pair:
        await limiter.start()
    yield pair
    for limiter in pair:
        await limiter.stop()


async def admit_all(
    proxies: list[RedisLimiter], limits: KeyLimits, tokens: int, n: int
) -> list[Admission]:
    async def one(i: int) -> Admission | None:
        try:
            return await proxies[i % 2].admit(KEY, limits, tokens)
        except LimitExceeded:
            return None

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return [r for r in results if r is not None]


async def test_two_proxies_admit_exactly_the_token_budget(proxies: list[RedisLimiter]) -> None:
    """50 concurrent 100-token admissions through two proxies: exactly 1000 tokens admitted."""
    admitted = await admit_all(proxies, KeyLimits(tokens_per_minute=1000), 100, 50)
    assert len(admitted) == 10
    assert sum(a.reserved for a in admitted) == 1000


async def test_two_proxies_share_one_concurrency_limit(proxies: list[RedisLimiter]) -> None:
    """50 concurrent admissions through two proxies: exactly max_concurrency in flight."""
    admitted = await admit_all(proxies, KeyLimits(max_concurrency=7), 1, 50)
    assert len(admitted) == 7
    await proxies[0].settle(admitted[0], 1)  # admitted by either proxy, settled by one
    assert len(await admit_all(proxies, KeyLimits(max_concurrency=7), 1, 10)) == 1


async def test_refund_on_one_proxy_is_seen_by_the_other(proxies: list[RedisLimiter]) -> None:
    """Tokens given back through one proxy are available through the other."""
    limits = KeyLimits(tokens_per_minute=1000)
    first = await proxies[0].admit(KEY, limits, 1000)
    with pytest.raises(LimitExceeded):
        await proxies[1].admit(KEY, limits, 500)
    await proxies[0].settle(first, 400)
    assert (await proxies[1].admit(KEY, limits, 500)).rate.tokens_remaining == 100


async def test_unreachable_redis_fails_open() -> None:
    """With Redis down and fail_open, requests are admitted without limits."""
    limiter = RedisLimiter(f"redis://127.0.0.1:{_free_port()}/0")
    await limiter.start()
    admission = await limiter.admit(KEY, KeyLimits(max_concurrency=1), 1)
    await limiter.stop()
    assert admission.ticket == ""


async def test_unreachable_redis_fails_closed_when_asked() -> None:
    """With fail_open off, a Redis outage is a 503, not unlimited admission."""
    limiter = RedisLimiter(f"redis://127.0.0.1:{_free_port()}/0", fail_open=False)
    with pytest.raises(RedisError):
        await limiter.start()
    with pytest.raises(ServiceUnavailable):
        await limiter.admit(KEY, KeyLimits(max_concurrency=1), 1)
    await limiter.stop()


@pytest.fixture
async def twins(redis_url: str, clock: FakeClock) -> AsyncIterator[tuple[Limiter, Limiter]]:
    """A memory limiter and a Redis limiter on the same clock."""
    shared = RedisLimiter(
        redis_url, prefix=f"test:{secrets.token_hex(4)}:", lease_ttl=30.0, clock=clock
    )
    await shared.start()
    yield MemoryLimiter(clock=clock, lease_ttl=30.0), shared
    await shared.stop()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_redis_and_memory_decide_alike(
    twins: tuple[Limiter, Limiter], clock: FakeClock, seed: int
) -> None:
    """Over 300 random admissions, settlements and clock moves, both backends agree."""
    rng = random.Random(seed)
    limits = KeyLimits(max_concurrency=4, tokens_per_minute=2000, requests_per_minute=8)
    open_: list[tuple[Admission, Admission]] = []
    refusals: set[LimitKind] = set()
    for _ in range(300):
        roll = rng.random()
        if roll < 0.5:
            tokens = rng.randrange(0, 900)
            one, other = [await _try(b.admit(KEY, limits, tokens)) for b in twins]
            assert _shape(one) == _shape(other)
            if isinstance(one, LimitExceeded):
                refusals.add(one.kind)
            elif isinstance(other, Admission):
                open_.append((one, other))
        elif roll < 0.8 and open_:
            pair = open_.pop(rng.randrange(len(open_)))
            used = rng.randrange(0, pair[0].reserved + 200)
            for limiter, admission in zip(twins, pair, strict=True):
                await limiter.settle(admission, used)
        else:
            clock.advance(rng.choice([0.1, 1.0, 5.0, 31.0]))
    assert refusals == set(LimitKind), "the run exercised every kind of refusal"


async def _try(admission: object) -> Admission | LimitExceeded:
    try:
        return await admission  # type: ignore[misc,no-any-return]
    except LimitExceeded as exc:
        return exc


def _shape(outcome: Admission | LimitExceeded) -> tuple[object, ...]:
    if isinstance(outcome, LimitExceeded):
        return ("refused", outcome.kind, round(outcome.retry_after or 0, 6), outcome.rate)
    return ("admitted", outcome.reserved, outcome.rate)
