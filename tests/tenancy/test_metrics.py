"""Prometheus metrics: one call per request, pool state by callback, private registries."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client.parser import text_string_to_metric_families

from tera_proxy.limits import LimitKind
from tera_proxy.metrics import CONTENT_TYPE, Metrics, ReplicaSample

MODEL = "openai/gpt-oss-20b"


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a render, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def observe(metrics: Metrics, status: int = 200, **kwargs: object) -> None:
    args: dict[str, object] = {"duration": 1.5, "ttft": 0.2, "prompt_tokens": 100,
                               "completion_tokens": 40, "reasoning_tokens": 10,
                               "cost_usd": Decimal("0.000017"), "attempts": 1}  # fmt: skip
    args.update(kwargs)
    metrics.observe_request(MODEL, status, **args)  # type: ignore[arg-type]


def test_requests_are_counted_by_model_and_status() -> None:
    """Each finished request increments tera_requests_total{model, status}."""
    metrics = Metrics()
    observe(metrics)
    observe(metrics)
    observe(metrics, status=429)
    assert value(metrics, "tera_requests_total", model=MODEL, status="200") == 2
    assert value(metrics, "tera_requests_total", model=MODEL, status="429") == 1


def test_latency_histograms() -> None:
    """Time to first token and duration land in their histograms' buckets."""
    metrics = Metrics()
    observe(metrics, ttft=0.2, duration=1.5)
    assert value(metrics, "tera_time_to_first_token_seconds_bucket", model=MODEL, le="0.25") == 1
    assert value(metrics, "tera_time_to_first_token_seconds_bucket", model=MODEL, le="0.1") == 0
    assert value(metrics, "tera_request_duration_seconds_sum", model=MODEL) == 1.5


def test_request_without_first_token_has_no_ttft() -> None:
    """A request that never produced a token is not observed as a time to first token."""
    metrics = Metrics()
    observe(metrics, ttft=None)
    assert value(metrics, "tera_time_to_first_token_seconds_count", model=MODEL) == 0
    assert value(metrics, "tera_request_duration_seconds_count", model=MODEL) == 1


def test_tokens_and_cost() -> None:
    """Prompt, completion and reasoning tokens and the cost accumulate per model."""
    metrics = Metrics()
    observe(metrics)
    observe(metrics)
    assert value(metrics, "tera_tokens_total", model=MODEL, type="prompt") == 200
    assert value(metrics, "tera_tokens_total", model=MODEL, type="completion") == 80
    assert value(metrics, "tera_tokens_total", model=MODEL, type="reasoning") == 20
    assert value(metrics, "tera_cost_usd_total", model=MODEL) == 0.000034


def test_retries_and_disconnects() -> None:
    """Attempts beyond the first count as retries; client disconnects are counted."""
    metrics = Metrics()
    observe(metrics, attempts=3, client_disconnected=True)
    observe(metrics, attempts=1)
    assert value(metrics, "tera_upstream_retries_total", model=MODEL) == 2
    assert value(metrics, "tera_client_disconnects_total", model=MODEL) == 1


def test_limit_rejections_by_kind() -> None:
    """429s from the limiter are counted by the limit that refused."""
    metrics = Metrics()
    metrics.observe_rejection(LimitKind.TOKENS)
    metrics.observe_rejection(LimitKind.TOKENS)
    metrics.observe_rejection(LimitKind.CONCURRENCY)
    assert value(metrics, "tera_limit_rejections_total", limit="tokens") == 2
    assert value(metrics, "tera_limit_rejections_total", limit="concurrency") == 1


def test_pool_state_is_read_at_scrape_time() -> None:
    """Replica states and in-flight counts come from the callback, once per render."""
    metrics = Metrics()
    calls: list[int] = []

    def pool() -> list[ReplicaSample]:
        calls.append(1)
        return [ReplicaSample("r0", "ready", 3), ReplicaSample("r1", "warming", 0)]

    metrics.watch_pool(pool, ("starting", "warming", "ready", "unhealthy"))
    assert calls == []
    assert value(metrics, "tera_replica_state", replica="r0", state="ready") == 1
    assert value(metrics, "tera_replica_state", replica="r0", state="warming") == 0
    assert value(metrics, "tera_replica_state", replica="r1", state="warming") == 1
    assert value(metrics, "tera_replica_inflight", replica="r0") == 3
    assert len(calls) == 4


def test_registries_are_private() -> None:
    """Two Metrics objects (two apps in one process) do not share counts."""
    one, other = Metrics(), Metrics()
    observe(one)
    assert value(other, "tera_requests_total", model=MODEL, status="200") == 0


def test_render_is_prometheus_text() -> None:
    """render() returns the text exposition format served with CONTENT_TYPE."""
    metrics = Metrics()
    observe(metrics)
    body = metrics.render()
    assert isinstance(body, bytes)
    assert b"# TYPE tera_requests_total counter" in body
    assert CONTENT_TYPE.startswith("text/plain")
