"""The load generator's pure parts: distributions, arrivals, summaries, SSE timing."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from bench.stats import (
    SSEScanner,
    arrival_schedule,
    median_range,
    parse_dist,
    percentile,
    summarize,
)


def test_percentile_interpolates_like_numpy() -> None:
    vs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(vs, 0) == 1.0
    assert percentile(vs, 100) == 4.0
    assert percentile(vs, 50) == 2.5
    assert percentile(vs, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)  # nan


def test_summarize_scales_and_orders() -> None:
    s = summarize([0.003, 0.001, 0.002], scale=1000)
    assert s["count"] == 3
    assert (s["min"], s["p50"], s["max"]) == (1.0, 2.0, 3.0)
    assert s["p90"] == pytest.approx(2.8)
    assert summarize([])["p50"] is None


def test_median_range_skips_missing() -> None:
    assert median_range([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert median_range([None])["median"] is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("128", "fixed"),
        ("fixed:5", "fixed"),
        ("uniform:1:9", "uniform"),
        ("normal:100:10", "normal"),
        ("normal:100:50:60:120", "normal"),
    ],
)
def test_parse_dist_forms(text: str, kind: str) -> None:
    assert parse_dist(text).kind == kind


@pytest.mark.parametrize(
    "text", ["", "abc", "uniform:9:1", "normal:1", "poisson:3", "fixed:-1", "normal:5:-1"]
)
def test_parse_dist_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dist(text)


def test_distributions_sample_in_range() -> None:
    rng = random.Random(1)
    assert {parse_dist("7").sample(rng) for _ in range(20)} == {7}
    u = [parse_dist("uniform:10:20").sample(rng) for _ in range(2000)]
    assert min(u) == 10 and max(u) == 20
    n = [parse_dist("normal:100:30:80:130").sample(rng) for _ in range(5000)]
    assert min(n) == 80 and max(n) == 130
    wide = [parse_dist("normal:100:10").sample(rng) for _ in range(5000)]
    assert statistics.mean(wide) == pytest.approx(100, abs=1)
    assert min(wide) >= 1


def test_arrival_schedule_is_poisson_and_bounded() -> None:
    s = arrival_schedule(200.0, count=100_000, duration=50.0, seed=3)
    assert s == sorted(s) and s[-1] < 50.0
    assert len(s) == pytest.approx(200 * 50, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(s)]
    mean = statistics.mean(gaps)
    assert mean == pytest.approx(1 / 200, rel=0.05)
    assert statistics.pstdev(gaps) == pytest.approx(mean, rel=0.1)  # exponential: sd == mean
    assert len(arrival_schedule(1000.0, count=10, duration=60.0)) == 10
    assert arrival_schedule(5.0, count=50, duration=4.0, seed=9) == arrival_schedule(
        5.0, count=50, duration=4.0, seed=9
    )
    with pytest.raises(ValueError):
        arrival_schedule(0.0, count=1, duration=1.0)


def _event(content: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"' + content.encode() + b'"}}]}\n\n'


def test_sse_scanner_times_content_events_across_splits() -> None:
    body = _event("a") + _event("b") + b": keep-alive\n\n" + _event("c")
    body += b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens": 3}}\n\n'
    body += b"data: [DONE]\n\n"
    scan = SSEScanner()
    # Feed in awkward pieces: splits inside "data:", inside the separator, byte by byte at the end.
    cuts = [
        0,
        3,
        40,
        41,
        len(_event("a")) + 1,
        150,
        len(body) - 5,
        *range(len(body) - 5, len(body) + 1),
    ]
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        scan.feed(body[a:b], float(i))
    scan.close(99.0)
    assert len(scan.content_times) == 3
    assert scan.content_times == sorted(scan.content_times)
    assert scan.done and scan.errors == 0
    assert scan.usage_tokens == 3
    assert scan.events == 5
    assert len(scan.gaps()) == 2


def test_sse_scanner_crlf_errors_and_unterminated_tail() -> None:
    scan = SSEScanner()
    scan.feed(b'data: {"choices":[{"text":"x"}]}\r\n\r\n', 1.0)
    scan.feed(b'data: {"error":{"message":"boom"}}\r\n\r\n', 2.0)
    scan.feed(b"data: [DONE]", 3.0)
    assert not scan.done
    scan.close(4.0)
    assert scan.done and scan.errors == 1 and scan.content_times == [1.0]


def test_sse_scanner_gaps() -> None:
    scan = SSEScanner()
    for t in (1.0, 1.5, 1.75):
        scan.feed(_event("t"), t)
    assert scan.gaps() == [0.5, 0.25]
