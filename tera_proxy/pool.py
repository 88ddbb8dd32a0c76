"""Replicas, their states, and the choice of a replica for a request.

A replica moves through a small state machine (`transition`):

    STARTING ──listening──▶ WARMING ──warmed──▶ READY
        ▲                      │                  │ failures (passive or probes)
        └──────refused─────────┴──────────────────┤
                                                  ▼
                       WARMING ◀──listening── UNHEALTHY (ejected for `eject_for`)

vLLM binds its port only once the model is loaded, so "connection refused" means
STARTING. READY requires a warm-up generation for every served model, because vLLM's
first requests after boot are slow and should not be a client's. An ejected replica is
probed again after `eject_for` (half-open) and re-enters through WARMING.

Without a prober, replicas start READY (nobody would ever promote them) and an ejected
replica is readmitted without a probe once its ejection is over. `HealthProber.start`
calls `begin_probing()`, which with warm-up on puts every replica in STARTING.

`Pool.acquire` decides under no I/O: it takes a snapshot of the model's replicas and
hands it to the pure `pick`. The proxy releases what it acquired, telling the pool whether
the attempt failed (a passive health signal).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from tera_proxy.config import Config, ModelConfig
from tera_proxy.errors import ServiceUnavailable
from tera_proxy.metrics_parse import Scrape
from tera_proxy.routing import DEFAULT_EPSILON, Candidate, RouteRequest, affinity_key, pick

__all__ = [
    "Candidate",
    "Event",
    "Pool",
    "Probe",
    "Reach",
    "Replica",
    "ReplicaState",
    "RouteRequest",
    "affinity_key",
    "pick",
    "transition",
]

# Scrapes in a row that show more in-flight requests than the engine holds before the
# proxy's counter is believed to have drifted (lost decrements) and is corrected.
DRIFT_SCRAPES = 3
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1.0, 30.0
# Passive failures (5xx seen by the proxy) never eject more than this share of replicas;
# probes that find a replica dead are not limited.
MAX_EJECTED_FRACTION = 0.5
RETRY_AFTER_UNKNOWN = 5.0  # nothing observed yet to estimate from


class ReplicaState(enum.Enum):
    STARTING = "starting"  # not listening yet (vLLM binds late)
    WARMING = "warming"  # listening; warm-up generation not yet passed
    READY = "ready"
    UNHEALTHY = "unhealthy"  # ejected
    DRAINING = "draining"  # finishing in-flight work, takes no new requests

    def __repr__(self) -> str:
        return self.name


class Event(enum.Enum):
    REFUSED = "refused"  # connection refused: nothing listening
    LISTENING = "listening"  # /health 200 and /v1/models answered
    WARMED = "warmed"  # every served model passed its warm-up generation
    COLD = "cold"  # a served model is listed that has not been warmed
    EJECT = "eject"  # consecutive failures reached the threshold
    READMIT = "readmit"  # back into service without a probe (no prober)
    DRAIN = "drain"
    RESUME = "resume"  # back from draining, through the prober

    def __repr__(self) -> str:
        return self.name


_S = ReplicaState
_TRANSITIONS: dict[tuple[ReplicaState, Event], ReplicaState] = {
    (_S.STARTING, Event.LISTENING): _S.WARMING,
    (_S.WARMING, Event.WARMED): _S.READY,
    (_S.WARMING, Event.REFUSED): _S.STARTING,
    (_S.WARMING, Event.EJECT): _S.UNHEALTHY,
    (_S.READY, Event.REFUSED): _S.STARTING,
    (_S.READY, Event.COLD): _S.WARMING,
    (_S.READY, Event.EJECT): _S.UNHEALTHY,
    (_S.UNHEALTHY, Event.LISTENING): _S.WARMING,
    (_S.UNHEALTHY, Event.REFUSED): _S.STARTING,
    (_S.UNHEALTHY, Event.EJECT): _S.UNHEALTHY,  # a failed half-open probe: eject again
    (_S.UNHEALTHY, Event.READMIT): _S.READY,
    (_S.DRAINING, Event.RESUME): _S.STARTING,
    (_S.DRAINING, Event.READMIT): _S.READY,
}
# Forward steps whose durations estimate Retry-After.
_PROGRESSIONS = frozenset({(_S.STARTING, _S.WARMING), (_S.WARMING, _S.READY)})


def transition(state: ReplicaState, event: Event) -> ReplicaState | None:
    """The state `event` leads to from `state`, or None when it means nothing there."""
    if event is Event.DRAIN:
        return _S.DRAINING
    return _TRANSITIONS.get((state, event))


class Reach(enum.Enum):
    REFUSED = "refused"  # nothing listening: vLLM still loading, or gone
    FAILED = "failed"  # /health or /v1/models failed or timed out
    HEALTHY = "healthy"

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Probe:
    """What one prober cycle saw of a replica."""

    reach: Reach
    models: Mapping[str, int | None] | None = None  # served name -> max_model_len
    scrape: Scrape | None = None
    inflight: int | None = None  # the proxy's in-flight count when the scrape was sent
    detail: str = ""


class Replica:
    __slots__ = (
        "api_key", "authority", "corrected", "drift_min", "drift_streak", "ejected_until",
        "inflight", "last_progress", "listed", "max_model_len", "models", "name",
        "passive_failures", "probe_failures", "ready_for", "scrape", "scrape_base",
        "scraped_at", "since", "state", "took", "url", "warmed",
    )  # fmt: skip

    def __init__(
        self, name: str, url: str, models: frozenset[str], api_key: str | None = None
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.authority = urlsplit(self.url).netloc
        self.models = models  # model ids (catalog) this replica is configured for
        self.api_key = api_key
        self.state = ReplicaState.READY
        self.inflight = 0
        self.listed = models  # model ids its /v1/models lists; assumed until probed
        self.warmed: frozenset[str] = frozenset()
        self.ready_for = models  # model ids it takes traffic for while READY
        self.max_model_len: dict[str, int] = {}
        self.scrape: Scrape | None = None
        self.scraped_at = -math.inf
        self.scrape_base = 0  # the in-flight count the scrape is compared with
        # Last sign of life beyond /health: counters moved, bytes seen, a request done.
        self.last_progress = -math.inf
        self.passive_failures = 0
        self.probe_failures = 0
        self.ejected_until = -math.inf
        self.since = 0.0  # when it entered its current state
        self.took: dict[ReplicaState, float] = {}  # last time spent starting / warming
        self.drift_streak = 0
        self.drift_min = 0
        self.corrected = 0  # in-flight requests written off as lost decrements, in total

    def __repr__(self) -> str:
        return f"<Replica {self.name} {self.authority} {self.state.name} inflight={self.inflight}>"


ChangeCallback = Callable[[Replica, ReplicaState, ReplicaState], None]


class Pool:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        *,
        epsilon: float = DEFAULT_EPSILON,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self._clock = clock
        self._health = h = config.health
        self.epsilon = epsilon
        self.on_change = on_change
        self.probing = False
        self.models: dict[str, ModelConfig] = {m.id: m for m in config.models}
        serves: dict[str, set[str]] = {}
        for m in config.models:
            for r in m.replicas:
                serves.setdefault(r, set()).add(m.id)
        self.replicas: dict[str, Replica] = {
            rc.name: Replica(rc.name, rc.url, frozenset(serves.get(rc.name, ())), rc.api_key)
            for rc in config.replica_configs()
        }
        self._by_model: dict[str, tuple[Replica, ...]] = {
            m.id: tuple(self.replicas[r] for r in m.replicas) for m in config.models
        }
        # Longest gap between two probe results, twice: how long a scrape stays fresh and
        # how long a sign of progress excuses a failed /health.
        self._period = 2 * (h.interval * (1 + h.jitter) + h.timeout)
        self._took: dict[ReplicaState, float] = {}  # the last durations, any replica
        now = clock()
        for replica in self.replicas.values():
            replica.since = now

    def serving(self, model_id: str) -> tuple[Replica, ...]:
        return self._by_model.get(model_id, ())

    def begin_probing(self) -> None:
        """Hand the replicas to a prober; with warm-up on, none gets traffic before it."""
        self.probing = True
        if not self._health.warmup:
            return
        now = self._clock()
        for r in self.replicas.values():
            # Where replicas begin, not a change: on_change is not told.
            r.state, r.since = ReplicaState.STARTING, now
            r.warmed = r.ready_for = frozenset()

    # -- the request path ------------------------------------------------------------

    def acquire(
        self,
        model: ModelConfig,
        *,
        exclude: frozenset[str] = frozenset(),
        affinity: bytes | None = None,
    ) -> Replica:
        now = self._clock()
        self._readmit(model.id, now)
        serving = self.serving(model.id)
        if len(serving) == 1:
            # One replica: what `pick` would decide, without building its views.
            only = serving[0]
            name = only.name if _takes(only, model.id) and only.name not in exclude else None
        else:
            name = pick(self.snapshot(model.id, now), RouteRequest(affinity, exclude, self.epsilon))
        if name is None:
            raise ServiceUnavailable(
                f"No replica can serve `{model.id}` right now. Retry shortly.",
                retry_after=self.retry_after(model),
            )
        replica = self.replicas[name]
        replica.inflight += 1
        return replica

    def release(self, replica: Replica, *, failed: bool) -> None:
        """Give back an acquired replica; `failed` only for replica faults (connect, 5xx)."""
        replica.inflight = max(0, replica.inflight - 1)
        now = self._clock()
        if not failed:
            replica.passive_failures = 0
            replica.last_progress = now
            return
        replica.passive_failures += 1
        if replica.passive_failures >= self._health.failure_threshold and self._may_eject():
            self._apply(replica, Event.EJECT, now)

    def _may_eject(self) -> bool:
        """Passive ejection stops at half the pool: when every replica answers some 5xx,
        ejecting them all would turn retryable errors into 503s for everyone."""
        if len(self.replicas) == 1:
            return True
        # Replicas warming up after an ejection are not back yet: count only READY ones.
        ready = sum(r.state is ReplicaState.READY for r in self.replicas.values())
        return ready - 1 >= len(self.replicas) * (1 - MAX_EJECTED_FRACTION)

    def note_progress(self, replica: Replica) -> None:
        """The proxy saw bytes from the replica: it is busy, not dead."""
        replica.last_progress = self._clock()

    def can_serve(self, model_id: str) -> bool:
        self._readmit(model_id, self._clock())
        return any(_takes(r, model_id) for r in self._by_model.get(model_id, ()))

    def snapshot(self, model_id: str, now: float | None = None) -> tuple[Candidate, ...]:
        """Frozen views of the model's replicas for `pick`."""
        now = self._clock() if now is None else now
        return tuple(self._candidate(r, model_id, now) for r in self.serving(model_id))

    def _candidate(self, r: Replica, model_id: str, now: float) -> Candidate:
        load, kv_cache = r.inflight, 0.0
        # A fresh scrape corrects the proxy's own count with what the engine holds,
        # including work other proxies sent; what this proxy sent or got back since the
        # scrape moves it, or requests between two scrapes would all herd to one replica.
        if r.scrape is not None and now - r.scraped_at <= self._period:
            load = max(load, (r.scrape.queue or 0) + r.inflight - r.scrape_base)
            kv_cache = r.scrape.kv_cache or 0.0
        return Candidate(r.name, load, _takes(r, model_id), kv_cache)

    def max_model_len(self, model_id: str) -> int | None:
        """The smallest context any replica of the model reported, if any did."""
        lengths = [r.max_model_len.get(model_id) for r in self.serving(model_id)]
        return min((n for n in lengths if n is not None), default=None)

    def retry_after(self, model: ModelConfig | str) -> float:
        """Seconds until a replica of the model is expected to take traffic (1..30)."""
        model_id = model if isinstance(model, str) else model.id
        now = self._clock()
        etas = [e for r in self.serving(model_id) if (e := self._eta(r, model_id, now)) is not None]
        if not etas:
            return RETRY_AFTER_UNKNOWN
        return min(max(min(etas), RETRY_AFTER_MIN), RETRY_AFTER_MAX)

    def _eta(self, r: Replica, model_id: str, now: float) -> float | None:
        if model_id not in r.listed or r.state is _S.DRAINING:
            return None
        warm = self._estimate(r, _S.WARMING)
        if r.state is _S.READY:
            return 0.0
        if r.state is _S.UNHEALTHY:
            return max(0.0, r.ejected_until - now) + (warm or 0.0)
        if warm is None:
            return None
        if r.state is _S.WARMING:
            return max(0.0, warm - (now - r.since))
        start = self._estimate(r, _S.STARTING)
        return None if start is None else max(0.0, start - (now - r.since)) + warm

    def _estimate(self, r: Replica, state: ReplicaState) -> float | None:
        return r.took.get(state, self._took.get(state))

    # -- what the prober reports -----------------------------------------------------

    def observe(self, replica: Replica, probe: Probe) -> None:
        """Fold one prober cycle into the replica's state."""
        now = self._clock()
        if probe.scrape is not None:
            self._scraped(replica, probe.scrape, probe.inflight, now)
        if replica.state is _S.UNHEALTHY and now < replica.ejected_until:
            return
        if probe.reach is Reach.REFUSED:
            self._apply(replica, Event.REFUSED, now)
        elif probe.reach is Reach.FAILED:
            self._probe_failed(replica, now)
        else:
            self._probe_ok(replica, probe.models or {}, now)

    def mark_warm(self, replica: Replica, model_id: str) -> None:
        """A warm-up generation for `model_id` passed on the replica."""
        replica.warmed |= {model_id}
        self._settle(replica, self._clock())

    def _probe_ok(self, r: Replica, listed: Mapping[str, int | None], now: float) -> None:
        r.probe_failures = 0
        names = {m: self.models[m].upstream_name for m in r.models}
        r.listed = frozenset(m for m, name in names.items() if name in listed)
        r.max_model_len = {m: n for m in r.listed if isinstance(n := listed[names[m]], int)}
        if not self._health.warmup:
            r.warmed = r.listed
        self._apply(r, Event.LISTENING, now)
        self._settle(r, now)

    def _settle(self, r: Replica, now: float) -> None:
        """READY exactly when every listed model is warm (and at least one is listed)."""
        r.ready_for = r.warmed & r.listed
        complete = bool(r.listed) and r.listed <= r.warmed
        self._apply(r, Event.WARMED if complete else Event.COLD, now)

    def _probe_failed(self, r: Replica, now: float) -> None:
        if r.state is _S.UNHEALTHY:
            self._apply(r, Event.EJECT, now)  # the half-open probe failed
            return
        if now - r.last_progress <= self._period:
            return  # slow, not dead: it is still producing tokens
        r.probe_failures += 1
        if r.probe_failures >= self._health.failure_threshold:
            self._apply(r, Event.EJECT, now)

    def _scraped(self, r: Replica, scrape: Scrape, inflight: int | None, now: float) -> None:
        # Quiet: the proxy saw no byte and no completion from it since the last scrape.
        quiet = r.last_progress <= r.scraped_at
        if r.scrape is not None and scrape.moved_since(r.scrape):
            r.last_progress = now
            quiet = False
        r.scrape, r.scraped_at = scrape, now
        queue = scrape.queue
        if queue is not None:
            # Requests acquired while the scrape was under way are not in it.
            seen = r.inflight if inflight is None else min(inflight, r.inflight)
            r.scrape_base = seen
            self._reconcile(r, seen if queue == 0 and quiet else 0)

    def _reconcile(self, r: Replica, phantom: int) -> None:
        """Write off in-flight requests of an engine that has been idle and silent for
        DRIFT_SCRAPES scrapes: they can only be lost decrements.

        Under load the proxy's count legitimately exceeds the engine's by requests in
        transit (not yet admitted, or finished but still being read back), so nothing is
        corrected while the engine holds requests or bytes flow. A drifted replica looks
        busy, gets less traffic, goes idle, and is corrected then.
        """
        if phantom <= 0:
            r.drift_streak = 0
            return
        r.drift_min = phantom if r.drift_streak == 0 else min(r.drift_min, phantom)
        r.drift_streak += 1
        if r.drift_streak >= DRIFT_SCRAPES:
            r.inflight -= r.drift_min
            r.corrected += r.drift_min
            r.drift_streak = 0

    # -- state changes ---------------------------------------------------------------

    def drain(self, name: str) -> None:
        self._apply(self.replicas[name], Event.DRAIN, self._clock())

    def undrain(self, name: str) -> None:
        event = Event.RESUME if self.probing else Event.READMIT
        self._apply(self.replicas[name], event, self._clock())

    def _readmit(self, model_id: str, now: float) -> None:
        if self.probing:
            return  # the prober's half-open probe decides
        for r in self.serving(model_id):
            if r.state is _S.UNHEALTHY and r.ejected_until <= now:
                self._apply(r, Event.READMIT, now)

    def _apply(self, r: Replica, event: Event, now: float) -> None:
        new = transition(r.state, event)
        if new is None:
            return
        if event is Event.EJECT:
            r.ejected_until = now + self._health.eject_for
        old = r.state
        if new is old:
            return
        if (old, new) in _PROGRESSIONS:
            r.took[old] = self._took[old] = now - r.since
        r.state, r.since = new, now
        if new in (_S.STARTING, _S.UNHEALTHY):
            r.passive_failures = r.probe_failures = 0
            if self.probing:  # it comes back through warm-up
                r.warmed = r.ready_for = frozenset()
        if self.on_change is not None:
            self.on_change(r, old, new)


def _takes(r: Replica, model_id: str) -> bool:
    return r.state is ReplicaState.READY and model_id in r.ready_for
