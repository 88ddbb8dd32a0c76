"""A load generator for any OpenAI-compatible endpoint.

    python -m bench.loadgen --url http://127.0.0.1:8080/v1 --model M \\
        [--endpoint chat|completions] [--stream] \\
        [--concurrency 32 | --rate 50]  (a comma list sweeps: --concurrency 1,8,32) \\
        [--requests 1000] [--duration 30] [--warmup 20] [--ramp 2] \\
        [--prompt-tokens uniform:64:256] [--output-tokens normal:128:32:1:512] \\
        [--json out.json] [--markdown out.md] [--plots DIR] [--progress]

Closed loop: `--concurrency N` workers, each sending its next request when the last ends
(`--ramp S` spreads their first requests over S seconds, so equal-length requests do not
start together).
Open loop: `--rate R` requests/s with Poisson arrivals (seeded), at most `--max-inflight`
outstanding (arrivals beyond it are counted as `client_saturated`, not sent late).
Every loop is bounded by `--requests` and `--duration`; requests still running at the end
get `--drain` seconds, then are cancelled and counted.

Per request: TTFT (first content event; the whole answer when not streaming), inter-token
gaps, end-to-end latency, output tokens (usage when present, else content events).
The generator's own CPU time is measured (`getrusage`) and reported per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.stats import Dist, SSEScanner, arrival_schedule, parse_dist, summarize

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is in every env this runs in

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    loads = json.loads

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their can has been more if no out do so"
).split()


@dataclass
class LoadConfig:
    url: str
    model: str
    endpoint: str = "chat"  # chat | completions
    stream: bool = False
    include_usage: bool = False
    concurrency: int | None = None
    rate: float | None = None
    max_inflight: int = 1024
    requests: int = 1000
    duration: float = 30.0
    warmup: int = 0
    drain: float = 10.0
    prompt_tokens: Dist = field(default_factory=lambda: parse_dist("32"))
    output_tokens: Dist = field(default_factory=lambda: parse_dist("16"))
    prompt_prefix: str = ""
    extra_body: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    timeout: float = 300.0
    # Closed loop: worker i sends its first request i * ramp / concurrency seconds in, so
    # equal-length requests do not all start (and restart) together.
    ramp: float = 0.0
    seed: int = 0
    progress: bool = False
    keep_samples: bool = False
    # name -> pid: process trees whose CPU and RSS are read over the measured window only.
    watch: dict[str, int] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "open" if self.rate else "closed"


@dataclass(slots=True)
class Sample:
    start: float
    end: float
    ttft: float | None
    tokens: int
    error: str | None


class Recorder:
    """Everything measured during one run; plain arrays to keep per-request cost low."""

    def __init__(self) -> None:
        self.e2e = array("d")
        self.ttft = array("d")
        self.itl = array("d")
        self.tokens = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.first_start = math.inf
        self.last_end = 0.0
        self.sent = 0
        self.itl_cap = 2_000_000

    def add(self, s: Sample, gaps: list[float] | None) -> None:
        self.first_start = min(self.first_start, s.start)
        self.last_end = max(self.last_end, s.end)
        if s.error:
            self.errors[s.error] += 1
            return
        self.ok += 1
        self.tokens += s.tokens
        self.e2e.append(s.end - s.start)
        if s.ttft is not None:
            self.ttft.append(s.ttft)
        if gaps and len(self.itl) < self.itl_cap:
            self.itl.extend(gaps)


class BodyMaker:
    """Request bodies from the length distributions, serialised once per (prompt, output)
    length pair so the hot loop does no JSON work."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self._cache: dict[tuple[int, int], bytes] = {}

    def prompt(self, n: int) -> str:
        words = [WORDS[(i * 7 + n) % len(WORDS)] for i in range(n)]
        text = " ".join(words)
        return f"{self.cfg.prompt_prefix} {text}" if self.cfg.prompt_prefix else text

    def next(self) -> tuple[bytes, int]:
        p = self.cfg.prompt_tokens.sample(self.rng)
        o = max(1, self.cfg.output_tokens.sample(self.rng))
        key = (p, o)
        body = self._cache.get(key)
        if body is None:
            obj: dict[str, Any] = {"model": self.cfg.model, "max_tokens": o}
            if self.cfg.endpoint == "chat":
                obj["messages"] = [{"role": "user", "content": self.prompt(p)}]
            else:
                obj["prompt"] = self.prompt(p)
            if self.cfg.stream:
                obj["stream"] = True
                if self.cfg.include_usage:
                    obj["stream_options"] = {"include_usage": True}
            obj.update(self.cfg.extra_body)
            body = dumps(obj)
            if len(self._cache) < 4096:
                self._cache[key] = body
        return body, o


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    if isinstance(exc, aiohttp.ClientOSError):
        return "os_error"
    if isinstance(exc, aiohttp.ClientError):
        return type(exc).__name__
    return type(exc).__name__


class Client:
    def __init__(self, cfg: LoadConfig, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        path = "/chat/completions" if cfg.endpoint == "chat" else "/completions"
        self.target = cfg.url.rstrip("/") + path
        self.headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            self.headers["Authorization"] = f"Bearer {cfg.api_key}"

    async def one(self, body: bytes) -> tuple[Sample, list[float] | None]:
        clock = time.perf_counter
        start = clock()
        try:
            async with self.session.post(self.target, data=body, headers=self.headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    return Sample(start, clock(), None, 0, f"http_{resp.status}"), None
                if not self.cfg.stream:
                    raw = await resp.read()
                    end = clock()
                    try:
                        usage = loads(raw).get("usage") or {}
                        tokens = int(usage.get("completion_tokens") or 0)
                    except (ValueError, AttributeError):
                        return Sample(start, end, None, 0, "bad_json"), None
                    return Sample(start, end, end - start, tokens, None), None
                scan = SSEScanner()
                async for chunk in resp.content.iter_any():
                    scan.feed(chunk, clock())
                end = clock()
                scan.close(end)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Sample(start, clock(), None, 0, error_kind(exc)), None
        if scan.errors:
            return Sample(start, end, None, 0, "stream_error_event"), None
        if not scan.done:
            return Sample(start, end, None, 0, "stream_incomplete"), None
        if not scan.content_times:
            return Sample(start, end, None, 0, "stream_empty"), None
        tokens = scan.usage_tokens if scan.usage_tokens is not None else len(scan.content_times)
        return Sample(start, end, scan.content_times[0] - start, tokens, None), scan.gaps()


class Progress:
    def __init__(self, enabled: bool, total: int, duration: float, label: str) -> None:
        self.enabled = enabled
        self.total = total
        self.duration = duration
        self.label = label
        self._task: asyncio.Task[None] | None = None

    def start(self, rec: Recorder, t0: float) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run(rec, t0))

    async def _run(self, rec: Recorder, t0: float) -> None:
        while True:
            self.draw(rec, t0)
            await asyncio.sleep(0.5)

    def draw(self, rec: Recorder, t0: float, end: str = "") -> None:
        done = rec.ok + sum(rec.errors.values())
        el = time.perf_counter() - t0
        frac = min(1.0, max(done / max(self.total, 1), el / max(self.duration, 1e-9)))
        bar = "#" * int(frac * 30)
        rps = done / el if el > 0 else 0.0
        sys.stderr.write(
            f"\r{self.label} [{bar:<30}] {done}/{self.total} req {rps:7.1f} req/s "
            f"err {sum(rec.errors.values())} {el:5.1f}s{end}"
        )
        sys.stderr.flush()

    async def stop(self, rec: Recorder, t0: float) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self.draw(rec, t0, "\n")


async def _closed(
    cfg: LoadConfig, client: Client, maker: BodyMaker, rec: Recorder, deadline: float
) -> None:
    assert cfg.concurrency
    budget = cfg.requests

    async def worker(i: int) -> None:
        nonlocal budget
        if cfg.ramp > 0 and i:
            left = max(0.0, deadline - time.perf_counter())
            await asyncio.sleep(min(i * cfg.ramp / cfg.concurrency, left))
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            body, _ = maker.next()
            rec.sent += 1
            sample, gaps = await client.one(body)
            rec.add(sample, gaps)

    await asyncio.gather(*(worker(i) for i in range(cfg.concurrency)))


async def _open(
    cfg: LoadConfig, client: Client, maker: BodyMaker, rec: Recorder, t0: float
) -> None:
    assert cfg.rate
    schedule = arrival_schedule(cfg.rate, count=cfg.requests, duration=cfg.duration, seed=cfg.seed)
    inflight: set[asyncio.Task[None]] = set()

    async def fire(body: bytes) -> None:
        sample, gaps = await client.one(body)
        rec.add(sample, gaps)

    loop = asyncio.get_running_loop()
    for offset in schedule:
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(inflight) >= cfg.max_inflight:
            rec.errors["client_saturated"] += 1
            continue
        body, _ = maker.next()
        rec.sent += 1
        task = loop.create_task(fire(body))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.gather(*inflight)


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """One run at one concurrency or rate; returns the result dict."""
    limit = cfg.concurrency if cfg.concurrency else cfg.max_inflight
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=None
    )
    timeout = aiohttp.ClientTimeout(total=cfg.timeout, sock_connect=10)
    maker = BodyMaker(cfg)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        client = Client(cfg, session)
        if cfg.warmup:
            wcfg = LoadConfig(
                **{
                    **cfg.__dict__,
                    "requests": cfg.warmup,
                    "rate": None,
                    "ramp": 0.0,
                    "concurrency": min(cfg.warmup, limit),
                    "duration": max(cfg.duration, 30),
                }
            )
            await _closed(
                wcfg, client, BodyMaker(wcfg), Recorder(), time.perf_counter() + wcfg.duration
            )
        rec = Recorder()
        label = f"c={cfg.concurrency}" if cfg.concurrency else f"r={cfg.rate:g}/s"
        progress = Progress(cfg.progress, cfg.requests, cfg.duration, label)
        watcher = Watcher(cfg.watch)
        watcher.start()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        progress.start(rec, t0)
        if cfg.rate:
            main = asyncio.ensure_future(_open(cfg, client, maker, rec, t0))
        else:
            main = asyncio.ensure_future(_closed(cfg, client, maker, rec, t0 + cfg.duration))
        # The loops stop starting requests at the deadline; the rest get `drain` seconds.
        done, _ = await asyncio.wait({main}, timeout=cfg.duration + cfg.drain)
        cancelled = 0
        if not done:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
            cancelled = (
                rec.sent - rec.ok - sum(rec.errors.values()) + rec.errors["client_saturated"]
            )
            if cancelled > 0:
                rec.errors["cancelled_at_end"] += cancelled
        else:
            main.result()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        watched = await watcher.stop(wall)
        await progress.stop(rec, t0)
    out = result_of(cfg, rec, wall, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime))
    if watched:
        out["watched"] = watched
    return out


class Watcher:
    """CPU seconds and sampled RSS of other process trees (a proxy, the upstream) over exactly
    the measured window, so warm-up requests do not count. Linux /proc only."""

    def __init__(self, watch: dict[str, int], every: float = 0.1) -> None:
        from bench import proc

        self.proc = proc
        self.trees = {name: proc.Tree(pid) for name, pid in watch.items()}
        self.every = every
        self.cpu0: dict[str, float] = {}
        self.rss_max: dict[str, int] = dict.fromkeys(watch, 0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.trees:
            return
        self.cpu0 = {n: t.cpu() for n, t in self.trees.items()}
        self.pids = {n: self.proc.tree(t.root) for n, t in self.trees.items()}
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            for n, pids in self.pids.items():
                self.rss_max[n] = max(self.rss_max[n], self.proc.rss_bytes(pids))
            await asyncio.sleep(self.every)

    async def stop(self, wall: float) -> dict[str, dict[str, float | int]]:
        if self._task is None:
            return {}
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        out = {}
        for n, t in self.trees.items():
            cpu = t.cpu() - self.cpu0[n]
            out[n] = {
                "cpu_s": round(cpu, 4),
                "cpu_util": round(cpu / wall, 4) if wall > 0 else 0.0,
                "rss_max": max(self.rss_max[n], t.rss()),
                "rss_end": t.rss(),
            }
        return out


def result_of(cfg: LoadConfig, rec: Recorder, wall: float, cpu: float) -> dict[str, Any]:
    span = rec.last_end - rec.first_start if rec.ok else wall
    span = max(span, 1e-9)
    n_err = sum(rec.errors.values())
    done = rec.ok + n_err
    out: dict[str, Any] = {
        "config": {
            "url": cfg.url,
            "model": cfg.model,
            "endpoint": cfg.endpoint,
            "stream": cfg.stream,
            "mode": cfg.mode,
            "concurrency": cfg.concurrency,
            "rate": cfg.rate,
            "requests": cfg.requests,
            "duration": cfg.duration,
            "warmup": cfg.warmup,
            "ramp": cfg.ramp,
            "prompt_tokens": str(cfg.prompt_tokens),
            "output_tokens": str(cfg.output_tokens),
            "seed": cfg.seed,
        },
        "wall_s": round(wall, 4),
        "requests_ok": rec.ok,
        "requests_failed": n_err,
        "errors": dict(rec.errors),
        "requests_per_s": round(rec.ok / span, 3),
        "output_tokens": rec.tokens,
        "output_tokens_per_s": round(rec.tokens / span, 3),
        "latency_ms": summarize(rec.e2e, 1000),
        "ttft_ms": summarize(rec.ttft, 1000),
        "itl_ms": summarize(rec.itl, 1000),
        "loadgen_cpu_s": round(cpu, 4),
        "loadgen_cpu_ms_per_request": round(1000 * cpu / done, 4) if done else None,
        "loadgen_cpu_util": round(cpu / wall, 4) if wall > 0 else None,
    }
    if cfg.keep_samples:
        out["samples"] = {
            "latency_ms": [round(v * 1000, 3) for v in rec.e2e],
            "ttft_ms": [round(v * 1000, 3) for v in rec.ttft],
            "itl_ms": [round(v * 1000, 3) for v in rec.itl[:100_000]],
        }
    return out


# ---------------------------------------------------------------- reports


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(results: list[dict[str, Any]]) -> str:
    head = (
        "| load | ok | failed | req/s | out tok/s | latency p50/p90/p99/max ms | "
        "TTFT p50/p99 ms | ITL p50/p99 ms | gen CPU ms/req |\n"
        "|---|---:|---:|---:|---:|---|---|---|---:|\n"
    )
    rows = []
    for r in results:
        c = r["config"]
        load = f"c={c['concurrency']}" if c["mode"] == "closed" else f"rate={c['rate']}/s"
        load += " stream" if c["stream"] else ""
        lat, tt, itl = r["latency_ms"], r["ttft_ms"], r["itl_ms"]
        errs = ", ".join(f"{k}:{v}" for k, v in sorted(r["errors"].items()))
        failed = f"{r['requests_failed']}" + (f" ({errs})" if errs else "")
        lat_s = " / ".join(_fmt(lat[q], 2) for q in ("p50", "p90", "p99", "max"))
        tt_s = f"{_fmt(tt['p50'], 2)} / {_fmt(tt['p99'], 2)}"
        itl_s = f"{_fmt(itl['p50'], 2)} / {_fmt(itl['p99'], 2)}"
        rows.append(
            f"| {load} | {r['requests_ok']} | {failed} | "
            f"{_fmt(r['requests_per_s'])} | {_fmt(r['output_tokens_per_s'])} | "
            f"{lat_s} | {tt_s} | {itl_s} | "
            f"{_fmt(r['loadgen_cpu_ms_per_request'], 3)} |"
        )
    return head + "\n".join(rows) + "\n"


def plots(results: list[dict[str, Any]], outdir: Path, title: str = "") -> list[Path]:
    """Latency CDFs per run and, for a sweep, throughput vs load. Needs matplotlib and the
    runs' samples; returns the files written (none when matplotlib is absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "loadgen: matplotlib not installed, no plots (make bench-peers-install)",
            file=sys.stderr,
        )
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in results:
        c = r["config"]
        label = f"c={c['concurrency']}" if c["mode"] == "closed" else f"{c['rate']}/s"
        for ax, key in zip(axes, ("latency_ms", "ttft_ms", "itl_ms"), strict=True):
            vs = sorted(r.get("samples", {}).get(key, []))
            if vs:
                ax.plot(vs, [(i + 1) / len(vs) for i in range(len(vs))], label=label)
    for ax, name in zip(axes, ("end-to-end latency", "TTFT", "inter-token gap"), strict=True):
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("CDF")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.suptitle(title or "latency CDFs")
    fig.tight_layout()
    p = outdir / "latency_cdf.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    if len(results) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["config"]["concurrency"] or r["config"]["rate"] for r in results]
        ax.plot(xs, [r["requests_per_s"] for r in results], "o-", label="requests/s")
        ax2 = ax.twinx()
        ax2.plot(
            xs, [r["output_tokens_per_s"] for r in results], "s--", color="C1", label="output tok/s"
        )
        ax.set_xlabel(
            "concurrency" if results[0]["config"]["mode"] == "closed" else "offered rate (req/s)"
        )
        ax.set_ylabel("requests/s")
        ax2.set_ylabel("output tokens/s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        fig.suptitle(title or "throughput vs load")
        fig.tight_layout()
        p = outdir / "throughput.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written


# ---------------------------------------------------------------- CLI


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(
    argv: list[str] | None = None,
) -> tuple[LoadConfig, list[int | float], argparse.Namespace]:
    ap = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--url", required=True, help="base URL including /v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument(
        "--include-usage", action="store_true", help="ask for stream_options.include_usage"
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--concurrency", help="closed loop: workers (comma list to sweep)")
    g.add_argument("--rate", help="open loop: Poisson arrivals per second (comma list to sweep)")
    ap.add_argument(
        "--max-inflight", type=int, default=1024, help="open loop cap on outstanding requests"
    )
    ap.add_argument("--requests", type=int, default=1000, help="at most this many requests per run")
    ap.add_argument(
        "--duration", type=float, default=30.0, help="at most this many seconds per run"
    )
    ap.add_argument("--warmup", type=int, default=0, help="unrecorded requests before each run")
    ap.add_argument(
        "--drain", type=float, default=10.0, help="grace for in-flight requests at the end"
    )
    ap.add_argument(
        "--prompt-tokens", default="32", help="fixed:N | uniform:A:B | normal:M:S[:MIN[:MAX]]"
    )
    ap.add_argument("--output-tokens", default="16", help="max_tokens distribution, same forms")
    ap.add_argument("--prompt-prefix", default="", help="text put before every prompt")
    ap.add_argument("--extra-body", default="{}", help="JSON merged into every request body")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request total timeout (s)")
    ap.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="closed loop: spread the workers' first requests over this many seconds",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--progress", action="store_true", help="progress bar even when stderr is no TTY"
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", dest="json_out", help="write the results here")
    ap.add_argument("--markdown", help="write a Markdown table here")
    ap.add_argument("--plots", help="write PNG plots into this folder (needs matplotlib)")
    ap.add_argument("--samples", action="store_true", help="keep per-request samples in the JSON")
    ap.add_argument("--quiet", action="store_true", help="no table on stdout")
    ap.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="report CPU and RSS of this process tree over the measured window (repeat)",
    )
    a = ap.parse_args(argv)
    if a.requests < 1 or a.duration <= 0:
        ap.error("--requests must be >= 1 and --duration > 0")
    try:
        prompt, output = parse_dist(a.prompt_tokens), parse_dist(a.output_tokens)
        extra = json.loads(a.extra_body)
    except ValueError as exc:
        ap.error(str(exc))
    loads_: list[int | float]
    if a.rate:
        loads_ = [float(x) for x in a.rate.split(",")]
    else:
        loads_ = [int(x) for x in (a.concurrency or "1").split(",")]
    if any(v <= 0 for v in loads_):
        ap.error("concurrency and rate must be positive")
    progress = not a.no_progress and (a.progress or sys.stderr.isatty())
    cfg = LoadConfig(
        url=a.url,
        model=a.model,
        endpoint=a.endpoint,
        stream=a.stream,
        include_usage=a.include_usage,
        max_inflight=a.max_inflight,
        requests=a.requests,
        duration=a.duration,
        warmup=a.warmup,
        drain=a.drain,
        prompt_tokens=prompt,
        output_tokens=output,
        prompt_prefix=a.prompt_prefix,
        extra_body=extra,
        api_key=a.api_key,
        timeout=a.timeout,
        ramp=a.ramp,
        seed=a.seed,
        progress=progress,
        keep_samples=a.samples or bool(a.plots),
        watch={w.split("=", 1)[0]: int(w.split("=", 1)[1]) for w in a.watch},
    )
    return cfg, loads_, a


async def sweep(cfg: LoadConfig, loads_: list[int | float], is_rate: bool) -> list[dict[str, Any]]:
    results = []
    for v in loads_:
        run = LoadConfig(
            **{
                **cfg.__dict__,
                "rate": float(v) if is_rate else None,
                "concurrency": None if is_rate else int(v),
            }
        )
        results.append(await run_load(run))
    return results


def main(argv: list[str] | None = None) -> int:
    cfg, loads_, a = parse_args(argv)
    _raise_nofile()
    coro = sweep(cfg, loads_, bool(a.rate))
    try:
        import uvloop

        results = uvloop.run(coro)
    except ImportError:
        results = asyncio.run(coro)
    doc = {"runs": results, "argv": sys.argv[1:] if argv is None else argv}
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_bytes(
            dumps(doc) if "orjson" in sys.modules else json.dumps(doc).encode()
        )
    table = markdown(results)
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table)
    if a.plots:
        for p in plots(results, Path(a.plots), title=f"{cfg.model} @ {cfg.url}"):
            print(f"loadgen: wrote {p}", file=sys.stderr)
    if not a.quiet:
        sys.stdout.write(table)
    return 0 if all(r["requests_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
