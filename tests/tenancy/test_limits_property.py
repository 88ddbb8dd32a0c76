"""Properties of the memory limiter over arbitrary admissions, settlements and time."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tera_proxy.keys import KeyLimits
from tera_proxy.limits import WINDOW, Admission, LimitExceeded, MemoryLimiter
from tests.tenancy.support import FakeClock

LIMITS = {
    "a": KeyLimits(max_concurrency=3, tokens_per_minute=1000, requests_per_minute=20),
    "b": KeyLimits(tokens_per_minute=250),
}
EPS = 1e-6

admit = st.tuples(st.just("admit"), st.sampled_from(sorted(LIMITS)), st.integers(0, 1500))
settle = st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1))
advance = st.tuples(st.just("advance"), st.floats(0, 90), st.just(0))
operations = st.lists(st.one_of(admit, settle, advance), max_size=80)


@dataclass
class Ledger:
    """What the limiter has let through, kept independently of it."""

    charged: float = 0.0  # reservations still open + actual use of settled ones
    requests: int = 0
    inflight: int = 0


def check(books: dict[str, Ledger], elapsed: float) -> None:
    for key, limits in LIMITS.items():
        b = books[key]
        assert limits.tokens_per_minute is not None
        tpm = limits.tokens_per_minute
        assert b.charged <= tpm + elapsed * tpm / WINDOW + EPS
        if limits.requests_per_minute is not None:
            rpm = limits.requests_per_minute
            assert b.requests <= rpm + elapsed * rpm / WINDOW + EPS
        if limits.max_concurrency is not None:
            assert b.inflight <= limits.max_concurrency


@settings(max_examples=300, deadline=None)
@given(operations)
def test_admitted_tokens_never_exceed_the_budget(ops: list[tuple[str, object, object]]) -> None:
    """Charged tokens, requests and in-flight counts never exceed limit plus refill."""
    # Charged = open reservations + actual use of settled ones (never above reserved).
    clock = FakeClock(0.0)
    limiter = MemoryLimiter(clock=clock, lease_ttl=1e12)
    books = {key: Ledger() for key in LIMITS}
    open_: list[Admission] = []
    for op, x, y in ops:
        if op == "admit":
            assert isinstance(x, str) and isinstance(y, int)
            try:
                admission = limiter.admit_now(x, LIMITS[x], y)
            except LimitExceeded:
                continue
            open_.append(admission)
            books[x].charged += admission.reserved
            books[x].requests += 1
            books[x].inflight += 1
        elif op == "settle" and open_:
            assert isinstance(x, int) and isinstance(y, float)
            admission = open_.pop(x % len(open_))
            used = int(admission.reserved * y)
            limiter.settle_now(admission, used)
            books[admission.key_id].charged -= admission.reserved - used
            books[admission.key_id].inflight -= 1
        elif op == "advance":
            assert isinstance(x, float)
            clock.advance(x)
        check(books, clock.now)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1500), max_size=40))
def test_without_time_reservations_fit_the_limit(sizes: list[int]) -> None:
    """With the clock stopped, open reservations together never exceed tokens_per_minute."""
    limiter = MemoryLimiter(clock=FakeClock(0.0))
    limits = KeyLimits(tokens_per_minute=1000)
    reserved = 0
    for size in sizes:
        try:
            reserved += limiter.admit_now("k", limits, size).reserved
        except LimitExceeded:
            pass
        assert reserved <= 1000
