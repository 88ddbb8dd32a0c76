"""The pool: replica state machine, passive health, load, routing and Retry-After."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tera_proxy.config import Config, parse_config
from tera_proxy.errors import ServiceUnavailable
from tera_proxy.metrics_parse import Scrape
from tera_proxy.pool import (
    Candidate,
    Event,
    Pool,
    Probe,
    Reach,
    Replica,
    ReplicaState,
    RouteRequest,
    affinity_key,
    pick,
    transition,
)
from tera_proxy.routing import DEFAULT_FLOOR

S = ReplicaState
LISTED = Probe(Reach.HEALTHY, {"tiny": 2048})
FAILED = Probe(Reach.FAILED)
REFUSED = Probe(Reach.REFUSED)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(names: tuple[str, ...] = ("a", "b"), **health: Any) -> Config:
    replicas = [{"name": n, "url": f"http://127.0.0.1:{9001 + i}"} for i, n in enumerate(names)]
    model = {
        "id": "m",
        "served_name": "tiny",
        "context_length": 2048,
        "max_output_tokens": 512,
        "input_price_per_million": 0.1,
        "output_price_per_million": 0.2,
        "replicas": list(names),
    }
    return parse_config({"replicas": replicas, "models": [model], "health": health})


def make_pool(names: tuple[str, ...] = ("a", "b"), *, probing: bool = False, **health: Any):
    clock = Clock()
    config = make_config(names, **health)
    pool = Pool(config, clock)
    if probing:
        pool.begin_probing()
    return pool, clock, config.models[0]


def ready(pool: Pool, name: str) -> Replica:
    """Bring a probed replica to READY the way the prober does."""
    replica = pool.replicas[name]
    pool.observe(replica, LISTED)
    pool.mark_warm(replica, "m")
    return replica


# -- state machine ---------------------------------------------------------------------


def test_reprs_are_informative() -> None:
    """Replica, state and event reprs name what they are."""
    pool, _, model = make_pool()
    pool.acquire(model)
    assert repr(pool.replicas["a"]) == "<Replica a 127.0.0.1:9001 READY inflight=1>"
    assert repr(S.WARMING) == "WARMING"
    assert repr(Event.EJECT) == "EJECT"


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (S.STARTING, Event.LISTENING, S.WARMING),
        (S.WARMING, Event.WARMED, S.READY),
        (S.READY, Event.REFUSED, S.STARTING),
        (S.READY, Event.EJECT, S.UNHEALTHY),
        (S.UNHEALTHY, Event.LISTENING, S.WARMING),
        (S.READY, Event.DRAIN, S.DRAINING),
        (S.DRAINING, Event.RESUME, S.STARTING),
    ],
)
def test_transition_table(state: ReplicaState, event: Event, expected: ReplicaState) -> None:
    """The pure transition function follows the documented diagram."""
    assert transition(state, event) is expected


def test_events_that_mean_nothing_are_ignored() -> None:
    """A starting replica cannot be warmed or ejected: it gets no traffic yet."""
    assert transition(S.STARTING, Event.WARMED) is None
    assert transition(S.STARTING, Event.EJECT) is None


def test_without_prober_replicas_start_ready() -> None:
    """A pool nobody probes serves at once."""
    pool, _, model = make_pool()
    assert pool.can_serve("m")
    assert pool.acquire(model).name == "a"


def test_with_prober_replicas_start_starting_and_take_no_traffic() -> None:
    """Once probing begins, nothing is served before warm-up passed."""
    pool, _, model = make_pool(probing=True)
    assert {r.state for r in pool.replicas.values()} == {S.STARTING}
    assert not pool.can_serve("m")
    with pytest.raises(ServiceUnavailable):
        pool.acquire(model)


def test_warmup_disabled_keeps_replicas_ready_under_a_prober() -> None:
    """With warm-up off, probing begins from READY."""
    pool, _, _ = make_pool(probing=True, warmup=False)
    assert pool.can_serve("m")


def test_refused_keeps_a_replica_starting() -> None:
    """Connection refused means vLLM is still loading."""
    pool, _, _ = make_pool(probing=True)
    pool.observe(pool.replicas["a"], REFUSED)
    assert pool.replicas["a"].state is S.STARTING


def test_listening_moves_starting_to_warming_without_traffic() -> None:
    """A listening replica is WARMING and still takes no traffic."""
    pool, _, model = make_pool(probing=True)
    pool.observe(pool.replicas["a"], LISTED)
    assert pool.replicas["a"].state is S.WARMING
    with pytest.raises(ServiceUnavailable):
        pool.acquire(model)


def test_warmup_passed_makes_it_ready_and_routable() -> None:
    """The warm-up generation is what admits a replica to traffic."""
    pool, _, model = make_pool(probing=True)
    ready(pool, "a")
    assert pool.replicas["a"].state is S.READY
    assert pool.acquire(model).name == "a"


def test_warmup_disabled_promotes_on_listening() -> None:
    """With warm-up off, a listening replica is READY at once."""
    pool, _, _ = make_pool(probing=True, warmup=False)
    replica = pool.replicas["a"]
    pool.observe(replica, REFUSED)
    pool.observe(replica, LISTED)
    assert replica.state is S.READY


def test_replica_not_listing_the_model_is_not_ready_for_it() -> None:
    """A replica whose /v1/models lacks the upstream name never serves that model."""
    pool, _, _ = make_pool(probing=True)
    replica = pool.replicas["a"]
    pool.observe(replica, Probe(Reach.HEALTHY, {"other": 4096}))
    pool.mark_warm(replica, "m")
    assert replica.state is S.WARMING
    assert not pool.can_serve("m")


def test_unlisted_model_in_warmup_disabled_pool_is_not_served() -> None:
    """Even with warm-up off, /v1/models decides which models a replica takes."""
    pool, _, _ = make_pool(("a",), probing=True, warmup=False)
    pool.observe(pool.replicas["a"], Probe(Reach.HEALTHY, {"other": 4096}))
    assert not pool.can_serve("m")


def test_max_model_len_is_recorded() -> None:
    """/v1/models' max_model_len is kept per model."""
    pool, _, _ = make_pool(probing=True)
    pool.observe(pool.replicas["a"], Probe(Reach.HEALTHY, {"tiny": 2048}))
    pool.observe(pool.replicas["b"], Probe(Reach.HEALTHY, {"tiny": 1024}))
    assert pool.replicas["a"].max_model_len == {"m": 2048}
    assert pool.max_model_len("m") == 1024


def test_on_change_reports_each_transition() -> None:
    """The callback sees starting -> warming -> ready."""
    pool, _, _ = make_pool(probing=True)
    seen: list[tuple[str, ReplicaState, ReplicaState]] = []
    pool.on_change = lambda r, old, new: seen.append((r.name, old, new))
    ready(pool, "a")
    assert seen == [("a", S.STARTING, S.WARMING), ("a", S.WARMING, S.READY)]


def test_refused_on_a_ready_replica_requires_warmup_again() -> None:
    """A restarted replica starts over: STARTING, then warm-up again."""
    pool, _, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    pool.observe(replica, REFUSED)
    pool.observe(replica, LISTED)
    assert replica.state is S.WARMING


# -- passive and probe failures --------------------------------------------------------


def test_consecutive_failures_eject() -> None:
    """failure_threshold failed requests in a row eject a replica."""
    pool, _, model = make_pool(("a",), failure_threshold=3)
    replica = pool.acquire(model)
    for _ in range(3):
        pool.release(replica, failed=True)
    assert replica.state is S.UNHEALTHY


def test_passive_ejection_stops_at_half_the_pool() -> None:
    """When every replica fails, passive ejection takes out at most half of them."""
    pool, _, _ = make_pool(("a", "b", "c", "d"), failure_threshold=1)
    for replica in pool.replicas.values():
        replica.inflight += 1
        pool.release(replica, failed=True)
    states = [r.state for r in pool.replicas.values()]
    assert states.count(S.UNHEALTHY) == 2
    assert states.count(S.READY) == 2


def test_a_success_resets_the_failure_count() -> None:
    """Failures must be consecutive to eject."""
    pool, _, _ = make_pool(("a",), failure_threshold=3)
    replica = pool.replicas["a"]
    for failed in (True, True, False, True, True):
        pool.release(replica, failed=failed)
    assert replica.state is S.READY


def test_ejected_replica_gets_no_traffic() -> None:
    """Requests go around an ejected replica."""
    pool, _, model = make_pool(failure_threshold=1)
    pool.release(pool.replicas["a"], failed=True)
    assert {pool.acquire(model).name for _ in range(3)} == {"b"}


def test_release_never_makes_inflight_negative() -> None:
    """An extra release cannot drive the counter below zero."""
    pool, _, _ = make_pool()
    pool.release(pool.replicas["a"], failed=False)
    assert pool.replicas["a"].inflight == 0


def test_without_prober_ejection_ends_by_readmission() -> None:
    """With nobody to probe it, an ejected replica returns after eject_for."""
    pool, clock, model = make_pool(("a",), failure_threshold=1, eject_for=5.0)
    pool.release(pool.replicas["a"], failed=True)
    clock.now += 4.9
    assert not pool.can_serve("m")
    clock.now += 0.2
    assert pool.acquire(model).state is S.READY


def test_half_open_probe_readmits_through_warming() -> None:
    """Failures -> UNHEALTHY -> (eject_for) probe ok -> WARMING -> warm-up -> READY."""
    pool, clock, _ = make_pool(probing=True, failure_threshold=2, eject_for=5.0)
    replica = ready(pool, "a")
    ready(pool, "b")  # passive ejection never takes the last ready replica
    pool.release(replica, failed=True)
    pool.release(replica, failed=True)
    assert replica.state is S.UNHEALTHY
    pool.observe(replica, LISTED)
    assert replica.state is S.UNHEALTHY  # still within its ejection
    clock.now += 5.0
    pool.observe(replica, LISTED)
    assert replica.state is S.WARMING
    pool.mark_warm(replica, "m")
    assert replica.state is S.READY


def test_failed_half_open_probe_ejects_again() -> None:
    """A half-open probe that fails starts a new ejection."""
    pool, clock, _ = make_pool(probing=True, failure_threshold=1, eject_for=5.0)
    replica = ready(pool, "a")
    pool.release(replica, failed=True)
    clock.now += 5.0
    pool.observe(replica, FAILED)
    assert replica.state is S.UNHEALTHY
    assert replica.ejected_until == clock.now + 5.0


def test_failed_probes_eject_an_idle_replica() -> None:
    """failure_threshold failed probes with no sign of progress eject."""
    pool, clock, _ = make_pool(probing=True, failure_threshold=3)
    replica = ready(pool, "a")
    for _ in range(3):
        clock.now += 2.0
        pool.observe(replica, FAILED)
    assert replica.state is S.UNHEALTHY


def test_failed_probes_spare_a_replica_the_proxy_sees_streaming() -> None:
    """A slow /health is forgiven while the proxy keeps receiving bytes."""
    pool, clock, _ = make_pool(probing=True, failure_threshold=3)
    replica = ready(pool, "a")
    for _ in range(10):
        clock.now += 2.0
        pool.note_progress(replica)
        pool.observe(replica, FAILED)
    assert replica.state is S.READY


def test_failed_health_spared_while_scraped_tokens_move() -> None:
    """A timed-out /health is forgiven while vLLM's token counter grows."""
    pool, clock, _ = make_pool(probing=True, failure_threshold=3)
    replica = ready(pool, "a")
    for i in range(10):
        clock.now += 2.0
        pool.observe(replica, Probe(Reach.FAILED, scrape=Scrape(1.0, 0.0, 0.1, 100.0 * i)))
    assert replica.state is S.READY


def test_failed_health_counts_when_scraped_tokens_stand_still() -> None:
    """A scrape that answers but shows no progress does not excuse a failed /health."""
    pool, clock, _ = make_pool(probing=True, failure_threshold=3)
    replica = ready(pool, "a")
    for _ in range(10):
        clock.now += 5.0
        pool.observe(replica, Probe(Reach.FAILED, scrape=Scrape(1.0, 0.0, 0.1, 100.0)))
    assert replica.state is S.UNHEALTHY


def test_draining_replica_takes_no_traffic_and_ignores_probes() -> None:
    """DRAINING holds until undrain, whatever the probes say."""
    pool, _, model = make_pool(("a",), probing=True)
    replica = ready(pool, "a")
    pool.drain("a")
    pool.observe(replica, LISTED)
    assert replica.state is S.DRAINING
    with pytest.raises(ServiceUnavailable):
        pool.acquire(model)
    pool.undrain("a")
    assert replica.state is S.STARTING


# -- load and drift --------------------------------------------------------------------


def test_fresh_scrape_raises_the_load_above_inflight() -> None:
    """Work other proxies sent counts: load is max(inflight, running + waiting)."""
    pool, _, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    pool.observe(replica, Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(3.0, 2.0, 0.5)))
    assert pool.snapshot("m")[0] == Candidate("a", 5, True, 0.5)


def test_requests_sent_since_the_scrape_add_to_it() -> None:
    """Between scrapes, requests spread instead of herding to the first replica."""
    pool, _, model = make_pool(probing=True)
    for name in "ab":
        pool.observe(ready(pool, name), Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(5.0, 0.0)))
    assert [pool.acquire(model).name for _ in range(4)] == ["a", "b", "a", "b"]
    assert [c.load for c in pool.snapshot("m")] == [7, 7]


def test_stale_scrape_is_ignored() -> None:
    """A scrape older than two probe periods no longer counts."""
    pool, clock, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    pool.observe(replica, Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(3.0, 2.0, 0.5)))
    clock.now += 60.0
    assert pool.snapshot("m")[0].load == 0


def test_phantom_inflight_of_an_idle_engine_is_written_off() -> None:
    """Inflight on an engine idle and silent for three scrapes is written off."""
    pool, clock, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    replica.inflight = 6
    for _ in range(4):
        clock.now += 1.0
        pool.observe(replica, Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(0.0, 0.0)))
    assert replica.inflight == 0
    assert replica.corrected == 6


def test_excess_under_load_is_kept() -> None:
    """While the engine holds requests, an excess is requests in transit, not drift."""
    pool, clock, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    replica.inflight = 6
    for running in (2.0, 1.0, 3.0, 1.0, 2.0):
        clock.now += 1.0
        pool.observe(replica, Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(running, 0.0)))
    assert replica.inflight == 6


def test_bytes_flowing_block_the_write_off() -> None:
    """An idle-looking engine whose responses are still being read is not drift."""
    pool, clock, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    replica.inflight = 2
    for _ in range(5):
        clock.now += 1.0
        pool.note_progress(replica)
        pool.observe(replica, Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(0.0, 0.0)))
    assert replica.inflight == 2


def test_requests_acquired_during_the_scrape_are_not_drift() -> None:
    """The in-flight count from when the scrape was sent is what is compared."""
    pool, clock, _ = make_pool(probing=True)
    replica = ready(pool, "a")
    replica.inflight = 5
    for _ in range(4):
        clock.now += 1.0
        pool.observe(replica, Probe(Reach.HEALTHY, {"tiny": 2048}, Scrape(0.0, 0.0), inflight=2))
    assert replica.inflight == 3


# -- Retry-After -----------------------------------------------------------------------


def test_retry_after_is_the_default_with_nothing_observed() -> None:
    """With no start or warm-up seen yet there is nothing to estimate from."""
    pool, _, model = make_pool(probing=True)
    assert pool.retry_after(model) == 5.0


def test_retry_after_reflects_the_remaining_warmup() -> None:
    """A warming replica is expected after the last warm-up's duration."""
    pool, clock, model = make_pool(probing=True)
    pool.observe(pool.replicas["a"], LISTED)
    clock.now += 10.0
    pool.mark_warm(pool.replicas["a"], "m")  # a warm-up took 10 s
    pool.replicas["a"].state = S.DRAINING  # out of the way
    pool.observe(pool.replicas["b"], LISTED)
    clock.now += 4.0
    assert pool.retry_after(model) == pytest.approx(6.0)


def test_retry_after_adds_start_and_warmup_for_a_starting_replica() -> None:
    """A starting replica needs the rest of its start plus a warm-up."""
    pool, clock, model = make_pool(("a",), probing=True)
    replica = pool.replicas["a"]
    clock.now += 20.0
    pool.observe(replica, LISTED)  # started in 20 s
    clock.now += 3.0
    pool.mark_warm(replica, "m")  # warmed in 3 s
    pool.observe(replica, REFUSED)  # restarted
    clock.now += 8.0
    assert pool.retry_after(model) == pytest.approx(12.0 + 3.0)


def test_retry_after_is_clamped() -> None:
    """Retry-After stays within 1..30 seconds."""
    pool, clock, model = make_pool(("a",), probing=True)
    clock.now += 300.0
    pool.observe(pool.replicas["a"], LISTED)
    pool.mark_warm(pool.replicas["a"], "m")
    pool.observe(pool.replicas["a"], REFUSED)
    assert pool.retry_after(model) == 30.0
    clock.now += 1000.0
    assert pool.retry_after(model) == 1.0


def test_retry_after_counts_the_rest_of_an_ejection() -> None:
    """An ejected replica is expected back when its ejection ends."""
    pool, clock, model = make_pool(("a",), failure_threshold=1, eject_for=8.0)
    pool.release(pool.replicas["a"], failed=True)
    clock.now += 2.0
    assert pool.retry_after(model) == pytest.approx(6.0)


def test_unavailable_error_carries_retry_after() -> None:
    """acquire's 503 carries the pool's estimate."""
    pool, _, model = make_pool(("a",), failure_threshold=1, eject_for=8.0)
    pool.release(pool.replicas["a"], failed=True)
    with pytest.raises(ServiceUnavailable) as info:
        pool.acquire(model)
    assert info.value.retry_after == pytest.approx(8.0)


# -- pick ------------------------------------------------------------------------------

NAMES = [f"r{i}" for i in range(8)]
candidates = st.lists(
    st.builds(
        Candidate,
        name=st.sampled_from(NAMES),
        load=st.integers(0, 50),
        ready=st.booleans(),
        kv_cache=st.floats(0.0, 1.0),
    ),
    max_size=8,
    unique_by=lambda c: c.name,
)
keys = st.none() | st.binary(min_size=1, max_size=16)
epsilons = st.floats(0.0, 2.0)


@given(candidates, keys, st.frozensets(st.sampled_from(NAMES)), epsilons)
def test_pick_never_chooses_excluded_or_unready(
    snapshot: list[Candidate], key: bytes | None, exclude: frozenset[str], eps: float
) -> None:
    """pick returns an eligible replica, and None exactly when there is none."""
    chosen = pick(snapshot, RouteRequest(key, exclude, eps))
    eligible = {c.name for c in snapshot if c.ready and c.name not in exclude}
    assert chosen in eligible if eligible else chosen is None


@given(candidates)
def test_pick_without_key_takes_the_least_loaded(snapshot: list[Candidate]) -> None:
    """Without affinity the least loaded ready replica wins."""
    chosen = pick(snapshot)
    ready_loads = [c.load for c in snapshot if c.ready]
    if ready_loads:
        assert next(c.load for c in snapshot if c.name == chosen) == min(ready_loads)


def test_pick_breaks_load_ties_by_kv_cache() -> None:
    """Among equally loaded replicas the emptier KV cache wins."""
    snapshot = [Candidate("a", 1, True, 0.9), Candidate("b", 1, True, 0.2)]
    assert pick(snapshot) == "b"


@given(candidates, st.binary(min_size=1, max_size=16), epsilons)
def test_key_sticks_to_its_replica_while_under_the_bound(
    snapshot: list[Candidate], key: bytes, eps: float
) -> None:
    """A key leaves its favourite replica only when that one is over the bound."""
    eligible = [c for c in snapshot if c.ready]
    if not eligible:
        return
    favourite = pick([Candidate(c.name, 0) for c in eligible], RouteRequest(key))
    chosen = pick(snapshot, RouteRequest(key, epsilon=eps))
    if chosen != favourite:
        mean = (sum(c.load for c in eligible) + 1) / len(eligible)
        load = next(c.load for c in eligible if c.name == favourite)
        assert load + 1 > (1 + eps) * mean


@given(
    st.integers(1, 8),
    st.lists(st.sampled_from([b"hot", b"hot", b"hot", b"a", b"b", b"c"]), max_size=200),
    epsilons,
)
def test_hot_key_spills_within_the_bound(n: int, stream: list[bytes], eps: float) -> None:
    """No replica ever exceeds max(floor, (1 + eps) * mean + 1), however hot one key is."""
    loads = dict.fromkeys(NAMES[:n], 0)
    for key in stream:
        name = pick([Candidate(k, v) for k, v in loads.items()], RouteRequest(key, epsilon=eps))
        assert name is not None
        loads[name] += 1
        mean = sum(loads.values()) / n
        assert max(loads.values()) <= max(DEFAULT_FLOOR, (1 + eps) * mean + 1 + 1e-9)


@given(st.binary(min_size=1, max_size=16), st.sampled_from(NAMES))
def test_losing_another_replica_does_not_move_a_key(key: bytes, gone: str) -> None:
    """Rendezvous hashing: only the keys of a removed replica move."""
    everyone = [Candidate(n, 0) for n in NAMES]
    chosen = pick(everyone, RouteRequest(key))
    if chosen != gone:
        assert pick([c for c in everyone if c.name != gone], RouteRequest(key)) == chosen


def test_acquire_follows_the_affinity_key() -> None:
    """Through the pool, one key stays on one replica up to the floor, then spreads."""
    pool, _, model = make_pool(("a", "b", "c"))
    chosen = [pool.acquire(model, affinity=b"conversation-1").name for _ in range(6)]
    for replica in pool.replicas.values():
        replica.inflight = 0
    again = pool.acquire(model, affinity=b"conversation-1").name
    assert len(set(chosen[:DEFAULT_FLOOR])) == 1  # concurrent ones stick below the floor
    assert len(set(chosen)) > 1  # past it, the bound spreads them
    assert again == pick([Candidate(n, 0) for n in "abc"], RouteRequest(b"conversation-1"))


def test_acquire_excludes_tried_replicas() -> None:
    """A retry never lands on a replica the request already tried."""
    pool, _, model = make_pool(("a", "b"))
    assert pool.acquire(model, exclude=frozenset({"a"})).name == "b"


# -- affinity_key ----------------------------------------------------------------------


def chat(*messages: tuple[str, Any]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}


def test_affinity_key_ignores_later_turns() -> None:
    """A conversation keeps its key as it grows."""
    first = chat(("system", "be brief"), ("user", "hi"))
    later = chat(("system", "be brief"), ("user", "hi"), ("assistant", "yo"), ("user", "more"))
    assert affinity_key(first) == affinity_key(later)


def test_affinity_key_differs_by_first_user_message() -> None:
    """Different conversations under one system prompt get different keys."""
    assert affinity_key(chat(("system", "s"), ("user", "a"))) != affinity_key(
        chat(("system", "s"), ("user", "b"))
    )


def test_affinity_key_differs_by_system_prompt() -> None:
    """The same first user message under different system prompts gives different keys."""
    assert affinity_key(chat(("system", "a"), ("user", "u"))) != affinity_key(
        chat(("system", "b"), ("user", "u"))
    )


def test_affinity_key_tells_system_from_user() -> None:
    """The same text as system or as user message gives different keys."""
    assert affinity_key(chat(("system", "x"))) != affinity_key(chat(("user", "x")))


def test_affinity_key_reads_content_parts() -> None:
    """List content counts, so different parts give different keys."""
    a = chat(("user", [{"type": "text", "text": "a"}]))
    b = chat(("user", [{"type": "text", "text": "b"}]))
    assert affinity_key(a) != affinity_key(b)


def test_affinity_key_uses_the_prompt_prefix() -> None:
    """Completions sharing the first PROMPT_PREFIX_CHARS share a key."""
    base = "x" * 1024
    assert affinity_key({"prompt": base + "a"}) == affinity_key({"prompt": base + "b"})
    assert affinity_key({"prompt": "a"}) != affinity_key({"prompt": "b"})


def test_affinity_key_reads_token_and_batch_prompts() -> None:
    """Token-id prompts and batches key on their (first) prompt."""
    assert affinity_key({"prompt": [[1, 2, 3], [4]]}) == affinity_key({"prompt": [1, 2, 3]})
    assert affinity_key({"prompt": ["ab", "cd"]}) == affinity_key({"prompt": "ab"})


def test_affinity_key_is_none_without_a_prompt() -> None:
    """Nothing to key on gives None."""
    assert affinity_key({"messages": []}) is None
    assert affinity_key({"prompt": ""}) is None
    assert affinity_key({"input": "x"}) is None
