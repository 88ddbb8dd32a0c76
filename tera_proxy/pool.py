"""Replicas, their states, and the choice of a replica for a request.

`Pool.acquire` decides under no I/O: it takes a snapshot of the replicas that can serve
the model and hands it to the pure `pick`. The proxy releases what it acquired, telling
the pool whether the attempt failed (a passive health signal).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from tera_proxy.config import Config, ModelConfig
from tera_proxy.errors import ServiceUnavailable


class ReplicaState(enum.Enum):
    STARTING = "starting"  # not listening yet (vLLM binds late)
    WARMING = "warming"  # listening; warm-up generation not yet passed
    READY = "ready"
    UNHEALTHY = "unhealthy"  # ejected
    DRAINING = "draining"  # finishing in-flight work, takes no new requests

    def __repr__(self) -> str:
        return self.name


class Replica:
    __slots__ = ("api_key", "authority", "inflight", "models", "name", "state", "url")

    def __init__(
        self, name: str, url: str, models: frozenset[str], api_key: str | None = None
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.authority = urlsplit(self.url).netloc
        self.models = models
        self.api_key = api_key
        self.state = ReplicaState.READY
        self.inflight = 0

    def __repr__(self) -> str:
        return f"<Replica {self.name} {self.authority} {self.state.name} inflight={self.inflight}>"


@dataclass(frozen=True, slots=True)
class Candidate:
    """What `pick` sees of a replica: a frozen view, no I/O, no mutation."""

    name: str
    load: float


def pick(candidates: Sequence[Candidate]) -> str | None:
    """The least-loaded candidate's name; ties go to the first listed."""
    best: Candidate | None = None
    for c in candidates:
        if best is None or c.load < best.load:
            best = c
    return best.name if best else None


class Pool:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
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

    def serving(self, model_id: str) -> tuple[Replica, ...]:
        return self._by_model.get(model_id, ())

    def acquire(self, model: ModelConfig, *, exclude: frozenset[str] = frozenset()) -> Replica:
        ready = [
            r
            for r in self._by_model[model.id]
            if r.state is ReplicaState.READY and r.name not in exclude
        ]
        name = pick([Candidate(r.name, r.inflight) for r in ready])
        if name is None:
            raise ServiceUnavailable(
                f"No replica can serve `{model.id}` right now. Retry shortly."
            )
        replica = self.replicas[name]
        replica.inflight += 1
        return replica

    def release(self, replica: Replica, *, failed: bool) -> None:
        replica.inflight -= 1

    def can_serve(self, model_id: str) -> bool:
        return any(r.state is ReplicaState.READY for r in self._by_model.get(model_id, ()))
