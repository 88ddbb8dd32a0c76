"""Admission semantics, run against both backends: in-process memory and Redis (Lua)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from tera_proxy.errors import RateLimited
from tera_proxy.keys import KeyLimits
from tera_proxy.limits import (
    Admission,
    Limiter,
    LimitExceeded,
    LimitKind,
    MemoryLimiter,
    RateStatus,
    format_reset,
    ratelimit_headers,
)
from tera_proxy.store.redis import RedisLimiter
from tests.tenancy.support import FakeClock

KEY = "key_a"
LEASE = 600.0


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Limiter]:
    backend: Limiter
    if request.param == "memory":
        backend = MemoryLimiter(clock=clock, lease_ttl=LEASE)
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix = f"test:{secrets.token_hex(4)}:"
        backend = RedisLimiter(url, prefix=prefix, lease_ttl=LEASE, clock=clock)
    await backend.start()
    yield backend
    await backend.stop()


async def refused(limiter: Limiter, limits: KeyLimits, tokens: int = 0) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit(KEY, limits, tokens)
    return caught.value


async def test_concurrency_limit(limiter: Limiter) -> None:
    """The third concurrent request of a key limited to two is refused for 1 s."""
    limits = KeyLimits(max_concurrency=2)
    await limiter.admit(KEY, limits, 10)
    await limiter.admit(KEY, limits, 10)
    error = await refused(limiter, limits)
    assert (error.kind, error.retry_after) == (LimitKind.CONCURRENCY, 1.0)


async def test_settle_frees_a_concurrency_slot(limiter: Limiter) -> None:
    """When a request ends, the next one is admitted."""
    limits = KeyLimits(max_concurrency=1)
    first = await limiter.admit(KEY, limits, 10)
    await refused(limiter, limits)
    await limiter.settle(first, 10)
    await limiter.admit(KEY, limits, 10)


async def test_keys_are_limited_separately(limiter: Limiter) -> None:
    """One key at its limit does not hold back another."""
    limits = KeyLimits(max_concurrency=1)
    await limiter.admit(KEY, limits, 10)
    await limiter.admit("key_b", limits, 10)


async def test_expired_lease_frees_its_slot(limiter: Limiter, clock: FakeClock) -> None:
    """A ticket never settled (its proxy died) stops counting after the lease."""
    limits = KeyLimits(max_concurrency=1)
    await limiter.admit(KEY, limits, 10)
    clock.advance(LEASE)
    await limiter.admit(KEY, limits, 10)


async def test_requests_per_minute(limiter: Limiter, clock: FakeClock) -> None:
    """With 3 rpm, the fourth request waits 20 s for the bucket to refill one request."""
    limits = KeyLimits(requests_per_minute=3)
    for _ in range(3):
        await limiter.settle(await limiter.admit(KEY, limits, 0), 0)
    error = await refused(limiter, limits)
    assert error.kind is LimitKind.REQUESTS
    assert error.retry_after == pytest.approx(20.0)
    clock.advance(20.0)
    await limiter.admit(KEY, limits, 0)


async def test_tokens_are_reserved_at_admission(limiter: Limiter) -> None:
    """Two 600-token reservations do not fit in 1000 tokens per minute."""
    limits = KeyLimits(tokens_per_minute=1000)
    await limiter.admit(KEY, limits, 600)
    error = await refused(limiter, limits, 600)
    assert error.kind is LimitKind.TOKENS
    assert error.retry_after == pytest.approx(12.0)  # 200 tokens at 1000/60 per second


async def test_retry_after_is_when_the_bucket_has_room(limiter: Limiter, clock: FakeClock) -> None:
    """Retrying exactly after Retry-After is admitted; a moment before is not."""
    limits = KeyLimits(tokens_per_minute=1000)
    await limiter.admit(KEY, limits, 600)
    wait = (await refused(limiter, limits, 600)).retry_after
    assert wait is not None
    clock.advance(wait - 0.01)
    await refused(limiter, limits, 600)
    clock.advance(0.01)
    await limiter.admit(KEY, limits, 600)


async def test_settle_gives_unused_tokens_back(limiter: Limiter) -> None:
    """A short answer returns its unused reservation at once."""
    limits = KeyLimits(tokens_per_minute=1000)
    first = await limiter.admit(KEY, limits, 600)
    await limiter.settle(first, 100)
    second = await limiter.admit(KEY, limits, 600)
    assert second.rate.tokens_remaining == 300


async def test_settling_twice_refunds_once(limiter: Limiter) -> None:
    """A second settle of the same admission changes nothing."""
    limits = KeyLimits(tokens_per_minute=1000)
    first = await limiter.admit(KEY, limits, 600)
    await limiter.settle(first, 0)
    await limiter.admit(KEY, limits, 600)
    await limiter.settle(first, 0)
    await refused(limiter, limits, 600)


async def test_usage_beyond_the_reservation_is_debt(limiter: Limiter, clock: FakeClock) -> None:
    """Using more than reserved takes the excess from the bucket, below zero if need be."""
    limits = KeyLimits(tokens_per_minute=1000)
    first = await limiter.admit(KEY, limits, 100)
    await limiter.settle(first, 1300)  # 300 tokens of debt
    error = await refused(limiter, limits, 1)
    assert error.retry_after == pytest.approx(301 * 60 / 1000)
    clock.advance(301 * 60 / 1000)
    await limiter.admit(KEY, limits, 1)


async def test_oversized_request_waits_for_a_full_bucket(limiter: Limiter) -> None:
    """A reservation above the whole budget is capped to the budget, not refused forever."""
    limits = KeyLimits(tokens_per_minute=1000)
    big = await limiter.admit(KEY, limits, 5000)
    assert big.reserved == 1000
    await refused(limiter, limits, 1)


async def test_unlimited_key_is_always_admitted(limiter: Limiter) -> None:
    """A key without limits is admitted with no ticket and no rate headers."""
    admission = await limiter.admit(KEY, KeyLimits(), 10**9)
    assert admission.ticket == ""
    assert ratelimit_headers(admission.rate) == []
    await limiter.settle(admission, 10**9)


async def test_admission_reports_remaining_budget(limiter: Limiter) -> None:
    """The admission carries what the x-ratelimit-* headers report after it."""
    limits = KeyLimits(requests_per_minute=60, tokens_per_minute=1000)
    admission = await limiter.admit(KEY, limits, 250)
    rate = admission.rate
    assert (rate.requests_limit, rate.requests_remaining) == (60, 59)
    assert (rate.tokens_limit, rate.tokens_remaining) == (1000, 750)
    assert (rate.requests_reset, rate.tokens_reset) == pytest.approx((1.0, 15.0))


async def test_refusal_carries_retry_after_and_rate_headers(limiter: Limiter) -> None:
    """The 429 is a RateLimited with Retry-After and the x-ratelimit-* headers."""
    limits = KeyLimits(tokens_per_minute=1000)
    await limiter.admit(KEY, limits, 900)
    error = await refused(limiter, limits, 200)
    assert isinstance(error, RateLimited) and error.status == 429
    headers = dict(error.headers())
    assert headers[b"retry-after"] == b"6"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"100"
    assert headers[b"x-ratelimit-limit-tokens"] == b"1000"


def test_rate_headers_for_a_response() -> None:
    """Both header families are produced, with OpenAI's duration format."""
    rate = RateStatus(60, 59, 1.0, 150_000, 149_000, 0.4)
    assert ratelimit_headers(rate) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"150000"),
        (b"x-ratelimit-remaining-tokens", b"149000"),
        (b"x-ratelimit-reset-tokens", b"400ms"),
    ]


def test_rate_headers_skip_unlimited_dimensions() -> None:
    """A key with only a token limit gets only the token headers."""
    names = [n for n, _ in ratelimit_headers(RateStatus(tokens_limit=10, tokens_remaining=3))]
    assert names == [
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0172, "18ms"),
        (1.0, "1s"),
        (8.64, "8.64s"),
        (360.0, "6m0s"),
        (61.5, "1m1.5s"),
    ],
)
def test_reset_duration_format(seconds: float, text: str) -> None:
    """Reset times read like OpenAI's: ms below a second, then s, then m and s."""
    assert format_reset(seconds) == text


def test_memory_limiter_counts_inflight(clock: FakeClock) -> None:
    """The memory backend's in-flight count follows admissions and settlements."""
    limiter = MemoryLimiter(clock=clock)
    limits = KeyLimits(max_concurrency=5)
    tickets: list[Admission] = [limiter.admit_now(KEY, limits, 1) for _ in range(3)]
    limiter.settle_now(tickets[0], 1)
    assert limiter.inflight(KEY) == 2


def test_unsettled_tickets_do_not_pile_up(clock: FakeClock) -> None:
    """Without a concurrency limit, tickets never settled are swept once their lease ends."""
    limiter = MemoryLimiter(clock=clock, lease_ttl=10.0)
    limits = KeyLimits(tokens_per_minute=10**9)
    for _ in range(100):
        limiter.admit_now(KEY, limits, 1)
    clock.advance(11.0)
    for _ in range(100):
        limiter.admit_now(KEY, limits, 1)
    assert limiter.inflight(KEY) == 100
