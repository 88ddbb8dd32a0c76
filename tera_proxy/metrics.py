"""Prometheus metrics on a private registry, for GET /metrics.

A request costs one `observe_request` call when it ends; labelled children are looked
up once per (model, status) and cached, so that call is a handful of locked adds.
Replica states and in-flight counts are read from the pool by a callback at scrape
time, so the hot path does nothing for them.

`model` labels must be catalog ids (or "" for a request that named no served model),
which keeps label cardinality bounded by configuration rather than by clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tera_proxy.limits import LimitKind

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    name: str
    state: str
    inflight: int


class _ModelChildren:
    """The labelled children of one model, resolved once."""

    __slots__ = (
        "completion",
        "cost",
        "disconnects",
        "duration",
        "prompt",
        "reasoning",
        "retries",
        "ttft",
    )

    def __init__(self, m: Metrics, model: str) -> None:
        self.ttft = m.ttft.labels(model)
        self.duration = m.duration.labels(model)
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.reasoning = m.tokens.labels(model, "reasoning")
        self.cost = m.cost.labels(model)
        self.retries = m.retries.labels(model)
        self.disconnects = m.disconnects.labels(model)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tera_requests",
            "Requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "tera_time_to_first_token_seconds",
            "Time from request to first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "tera_request_duration_seconds",
            "Time from request to last byte.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tera_tokens",
            "Billed tokens (completion includes reasoning).",
            ["model", "type"],
            registry=r,
        )
        self.cost = Counter("tera_cost_usd", "Billed cost in USD.", ["model"], registry=r)
        self.retries = Counter(
            "tera_upstream_retries",
            "Attempts beyond the first, on another replica.",
            ["model"],
            registry=r,
        )
        self.disconnects = Counter(
            "tera_client_disconnects",
            "Requests whose client left before the end.",
            ["model"],
            registry=r,
        )
        self.rejections = Counter(
            "tera_limit_rejections",
            "Requests refused with 429, by the limit hit.",
            ["limit"],
            registry=r,
        )
        self._models: dict[str, _ModelChildren] = {}
        self._statuses: dict[tuple[str, int], Counter] = {}
        self._pool: _PoolCollector | None = None

    def __repr__(self) -> str:
        return f"<Metrics models={len(self._models)}>"

    def observe_request(
        self,
        model: str,
        status: int,
        *,
        duration: float,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        reasoning_tokens: int | None = None,
        cost_usd: Decimal | float = 0.0,
        attempts: int = 1,
        client_disconnected: bool = False,
    ) -> None:
        """Everything about one finished request, in one call."""
        requests = self._statuses.get((model, status))
        if requests is None:
            requests = self._statuses[(model, status)] = self.requests.labels(model, str(status))
        requests.inc()
        c = self._models.get(model)
        if c is None:
            c = self._models[model] = _ModelChildren(self, model)
        c.duration.observe(duration)
        if ttft is not None:
            c.ttft.observe(ttft)
        if prompt_tokens:
            c.prompt.inc(prompt_tokens)
        if completion_tokens:
            c.completion.inc(completion_tokens)
        if reasoning_tokens:
            c.reasoning.inc(reasoning_tokens)
        if cost_usd:
            c.cost.inc(float(cost_usd))
        if attempts > 1:
            c.retries.inc(attempts - 1)
        if client_disconnected:
            c.disconnects.inc()

    def observe_rejection(self, kind: LimitKind) -> None:
        self.rejections.labels(kind.value).inc()

    def watch_pool(
        self, source: Callable[[], Iterable[ReplicaSample]], states: Sequence[str]
    ) -> None:
        """Report replica states and in-flight counts from `source`, called per scrape."""
        if self._pool is not None:
            self.registry.unregister(self._pool)
        self._pool = _PoolCollector(source, tuple(states))
        self.registry.register(self._pool)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[ReplicaSample]], states: tuple[str, ...]):
        self._source = source
        self._states = states

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would call the pool at registration time.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        state, inflight = self._families()
        for replica in self._source():
            for name in self._states:
                state.add_metric([replica.name, name], 1.0 if name == replica.state else 0.0)
            inflight.add_metric([replica.name], float(replica.inflight))
        yield state
        yield inflight

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "tera_replica_state",
                "1 for the state each replica is in.",
                labels=["replica", "state"],
            ),
            GaugeMetricFamily(
                "tera_replica_inflight",
                "Requests the proxy has in flight on each replica.",
                labels=["replica"],
            ),
        )
