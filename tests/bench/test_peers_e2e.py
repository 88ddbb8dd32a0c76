"""bench/peers.py's start-up path for real, briefly: the bare Starlette+aiohttp peer on both
servers and tera-all (a key created before start, given to the load generator; the request
log, the ledger and /metrics scrapes all happen), in front of the C mock upstream."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import peers, proc
from bench.loadgen import LoadConfig, run_load
from bench.stats import parse_dist

ROOT = Path(__file__).resolve().parents[2]
MOCK = ROOT / "var/bench/bin/mockllm"

pytestmark = pytest.mark.skipif(
    not peers.VENV_PY.exists(), reason="the project .venv runs the bare peer and tera-proxy"
)


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not MOCK.exists() or MOCK.stat().st_mtime < (ROOT / "bench/mock/mockllm.c").stat().st_mtime:
        if shutil.which("gcc") is None and shutil.which("cc") is None:
            pytest.skip("no C compiler to build the mock upstream")
        subprocess.run(["make", "-s", "-C", str(ROOT / "bench/mock")], check=True)
    port = proc.free_port()
    log = tmp_path_factory.mktemp("mock") / "mock.log"
    p = proc.start(
        [str(MOCK), "--host", peers.HOST, "--port", str(port), "--model", peers.MODEL], log
    )
    url = f"http://{peers.HOST}:{port}"
    try:
        for _ in range(100):
            if peers.probe(url + "/v1", 1.0) == 200:
                break
            import time

            time.sleep(0.05)
        yield url
    finally:
        proc.stop(p)


def _ns() -> argparse.Namespace:
    return argparse.Namespace(start_timeout=60.0, scrape_every=0.2, nginx_workers="1")


def _load(t: peers.Target, *, stream: bool, n: int) -> dict:
    cfg = LoadConfig(
        url=t.url,
        model=peers.MODEL,
        stream=stream,
        concurrency=8,
        requests=n,
        duration=10,
        output_tokens=parse_dist("20" if stream else "4"),
        prompt_prefix="[[mock ttft_ms=0 delay_ms=1]]" if stream else "",
        api_key=t.api_key or None,
    )
    return asyncio.run(asyncio.wait_for(run_load(cfg), 30))


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_bare_peer_passes_json_and_streams_through(
    server: str, mock_url: str, tmp_path: Path
) -> None:
    t = peers.Target(f"bare-{server}", "bare", server=server)
    peers.start_target(t, mock_url, tmp_path, _ns())
    try:
        assert t.status == "ok", t.detail
        assert "Starlette" in t.version and server in t.version
        r = _load(t, stream=False, n=40)
        assert (r["requests_ok"], r["output_tokens"]) == (40, 160), r["errors"]
        r = _load(t, stream=True, n=16)
        assert (r["requests_ok"], r["output_tokens"]) == (16, 320), r["errors"]
    finally:
        if t.proc is not None:
            proc.stop(t.proc)


def test_tera_all_runs_with_a_key_and_every_feature(mock_url: str, tmp_path: Path) -> None:
    t = peers.Target(
        "tera-all",
        "tera",
        config="bench/configs/tera-all.toml",
        server="hypercorn",
        log_level="info",
    )
    peers.start_target(t, mock_url, tmp_path, _ns())
    try:
        assert t.status == "ok", t.detail
        assert t.api_key.startswith("sk-tera-") and t.admin_token
        assert peers.probe(t.url, 5.0) == 401  # no key, no service
        r = _load(t, stream=False, n=30)
        assert r["requests_ok"] == 30, r["errors"]
        r = _load(t, stream=True, n=8)
        assert r["requests_ok"] == 8, r["errors"]
        import time

        time.sleep(0.5)  # a scrape or two
    finally:
        if t.scraper is not None:
            t.scraper.stop()
        if t.proc is not None:
            proc.stop(t.proc)  # the ledger flushes on shutdown
    f = peers.tera_features(t)
    assert f["log_lines"] >= 38 and f["ledger_rows"] >= 38, f
    assert f["metrics_scrapes"] >= 1 and f["metrics_scrape_errors"] == 0, f
