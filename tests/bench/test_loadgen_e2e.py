"""One short load-generator run against the bench's C mock upstream (built with gcc)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import LoadConfig, markdown, run_load
from bench.stats import parse_dist

ROOT = Path(__file__).resolve().parents[2]
MOCK = ROOT / "var/bench/bin/mockllm"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MOCK_PID: list[int] = []


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    if not MOCK.exists() or MOCK.stat().st_mtime < (ROOT / "bench/mock/mockllm.c").stat().st_mtime:
        if shutil.which("gcc") is None and shutil.which("cc") is None:
            pytest.skip("no C compiler to build the mock upstream")
        subprocess.run(["make", "-s", "-C", str(ROOT / "bench/mock")], check=True)
    port = _port()
    proc = subprocess.Popen(
        [str(MOCK), "--port", str(port), "--model", "m"], stderr=subprocess.DEVNULL
    )
    MOCK_PID[:] = [proc.pid]
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                import time

                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def _run(cfg: LoadConfig) -> dict:
    return asyncio.run(asyncio.wait_for(run_load(cfg), 20))


def test_closed_loop_non_streaming(mock_url: str) -> None:
    cfg = LoadConfig(
        url=mock_url + "/v1",
        model="m",
        concurrency=8,
        requests=300,
        duration=5,
        output_tokens=parse_dist("uniform:4:12"),
        warmup=10,
    )
    r = _run(cfg)
    assert r["requests_ok"] == 300 and r["requests_failed"] == 0
    assert 300 * 4 <= r["output_tokens"] <= 300 * 12
    assert r["latency_ms"]["count"] == 300
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert r["loadgen_cpu_ms_per_request"] > 0
    assert "| c=8 |" in markdown([r])


def test_open_loop_streaming_timings(mock_url: str) -> None:
    # 20 tokens 10 ms apart after a 30 ms TTFT, via the mock's in-prompt directive.
    cfg = LoadConfig(
        url=mock_url + "/v1",
        model="m",
        endpoint="completions",
        stream=True,
        include_usage=True,
        rate=100.0,
        requests=60,
        duration=3,
        output_tokens=parse_dist("20"),
        prompt_prefix="[[mock ttft_ms=30 delay_ms=10]]",
        keep_samples=True,
    )
    r = _run(cfg)
    assert r["requests_ok"] == 60 and r["errors"] == {}
    assert r["output_tokens"] == 60 * 20
    assert 25 <= r["ttft_ms"]["p50"] <= 200
    assert 5 <= r["itl_ms"]["p50"] <= 50
    assert r["latency_ms"]["p50"] >= 30 + 19 * 10 - 5
    assert len(r["samples"]["ttft_ms"]) == 60


def test_watch_reads_another_process_cpu_and_rss(mock_url: str) -> None:
    cfg = LoadConfig(
        url=mock_url + "/v1",
        model="m",
        concurrency=4,
        requests=200,
        duration=5,
        watch={"mock": MOCK_PID[0]},
    )
    w = _run(cfg)["watched"]["mock"]
    assert w["cpu_s"] >= 0 and 0 <= w["cpu_util"] < 1.5
    assert 100_000 < w["rss_max"] < 200 * 2**20


def test_errors_are_counted_by_kind(mock_url: str) -> None:
    r = _run(LoadConfig(url=mock_url + "/nope", model="m", concurrency=2, requests=10, duration=3))
    assert r["errors"] == {"http_404": 10} and r["requests_ok"] == 0
    dead = f"http://127.0.0.1:{_port()}/v1"
    r = _run(LoadConfig(url=dead, model="m", concurrency=2, requests=4, duration=3))
    assert r["errors"] == {"connect": 4}


def test_duration_bounds_the_run(mock_url: str) -> None:
    cfg = LoadConfig(
        url=mock_url + "/v1",
        model="m",
        stream=True,
        concurrency=4,
        requests=10_000,
        duration=0.5,
        drain=0.3,
        output_tokens=parse_dist("100"),
        prompt_prefix="[[mock delay_ms=20]]",
    )
    r = _run(cfg)
    assert r["wall_s"] < 1.5
    assert r["errors"].get("cancelled_at_end", 0) == 4


def test_ramp_spreads_the_first_requests(mock_url: str) -> None:
    # 4 workers, one request each, started 0, 0.15, 0.3 and 0.45 s in.
    cfg = LoadConfig(
        url=mock_url + "/v1", model="m", concurrency=4, requests=4, duration=5, ramp=0.6
    )
    r = _run(cfg)
    assert r["requests_ok"] == 4 and r["config"]["ramp"] == 0.6
    assert 0.44 <= r["wall_s"] < 2.0
    assert r["latency_ms"]["max"] < 100  # nobody waited for the others: spread, not queued
