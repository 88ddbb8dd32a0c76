"""Peers side by side: the same lean upstream (bench/mock, a C epoll server), reached
directly and through each proxy, in interleaved rounds.

    python -m bench.peers [--targets direct,nginx,...,tera-all-granian]
                          [--tera NAME=CONFIG[:SERVER[:LOGLEVEL]]]... [--tera-config FILE]
                          [--rounds 3] [--seconds 6] [--rate-seconds 15] [--rate 100]
                          [--open-streams 1000]
                          [--out bench/results]

Targets: direct (the mock itself), nginx, vllm-router, sglang-router, litellm, bare-hypercorn
and bare-uvicorn (bench/peers_bare: Starlette + one aiohttp session, nothing else), and the
tera-proxy variants tera-{minimal,all}[-uvicorn|-granian] (hypercorn when no server is named).
tera-minimal runs bench/configs/tera-minimal.toml (auth off, request log off); tera-all runs
bench/configs/tera-all.toml (keys, limits, ledger, /metrics scraped, one log line per request
into the run dir), with a key created before the run and given to the load generator.

Targets stay up for the whole run; each round runs every scenario on every target, the
target order rotating from round to round, so slow drifts of this shared machine hit all
alike. Scenarios (the loads are `python -m bench.loadgen` subprocesses):

  rate     non-streaming chat at a fixed moderate open-loop rate: added latency p50/p99 against
           direct in the same round, proxy CPU per request
  max      non-streaming, closed loop at 32 connections: max requests/s
  stream   64 concurrent streams of 200 chunks at 10 ms, their starts spread over one
           stream's length: added TTFT, proxy CPU per chunk
  open     N concurrent slow streams held open together: the proxy's RSS with them open

Proxy CPU is the utime+stime of the proxy's process tree over the scenario (/proc), RSS is
sampled every 100 ms. The mock's and the load generator's own CPU are recorded too, to show
neither is the bottleneck. A peer that is not installed, or does not start, is reported as
such in the table. The Markdown ends with the issue's targets, each met or missed, computed
from the same run. Results: OUT/peers-<stamp>.json, OUT/peers.md, OUT/*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import proc
from bench.stats import median_range

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"
PEERS = VAR / "peers"
MODEL = "bench-model"
HOST = "127.0.0.1"
DEFAULT_TARGETS = (
    "direct,nginx,vllm-router,sglang-router,litellm,bare-hypercorn,bare-uvicorn,"
    "tera-minimal,tera-minimal-uvicorn,tera-all,tera-all-uvicorn,tera-all-granian"
)
VENV_PY = ROOT / ".venv/bin/python"
# Built-in tera-proxy variants: config, and the log level it runs at (tera-all writes its
# per-request log line, at info, into the run dir; tera-minimal logs warnings only).
TERA_CONFIGS = {
    "minimal": ("bench/configs/tera-minimal.toml", "warning"),
    "all": ("bench/configs/tera-all.toml", "info"),
}
SERVERS = ("hypercorn", "uvicorn", "granian")
BARE_SERVERS = ("hypercorn", "uvicorn")
# The key the bench creates for a tera config with auth on: limits checked on every request,
# far above anything the load reaches.
KEY_LIMITS = {
    "--max-concurrency": "100000",
    "--tokens-per-minute": str(10**12),
    "--requests-per-minute": str(10**9),
}


@dataclass
class Scenario:
    name: str
    args: list[str]
    samples: bool = False
    # Keep the proxy's RSS while this runs (the "open streams" figure).
    rss: bool = False


def scenarios(a: argparse.Namespace) -> list[Scenario]:
    s = a.seconds
    # CPU is read in 10 ms ticks: at 100 req/s a 6 s run measures a request to 17 us, too
    # coarse for a 250 us budget; the rate scenario runs longer unless told otherwise.
    rs = a.rate_seconds or s
    out = [
        Scenario(
            "rate",
            [
                "--rate",
                str(a.rate),
                "--requests",
                str(int(a.rate * rs * 1.5) + 10),
                "--duration",
                str(rs),
                "--output-tokens",
                "16",
                "--warmup",
                "20",
                "--max-inflight",
                "512",
            ],
            samples=True,
        ),
        Scenario(
            "max",
            [
                "--concurrency",
                "32",
                "--requests",
                "1000000",
                "--duration",
                str(s),
                "--output-tokens",
                "16",
                "--warmup",
                "64",
            ],
        ),
        Scenario(
            "stream",
            [
                "--stream",
                "--concurrency",
                "64",
                "--requests",
                "1000000",
                "--duration",
                str(s),
                "--output-tokens",
                "200",
                "--warmup",
                "64",
                "--prompt-prefix",
                "[[mock ttft_ms=0 delay_ms=10]]",
                # Stream starts spread over one stream's length (200 x 10 ms): in a closed
                # loop of equal streams they would otherwise all start, and restart, together,
                # and TTFT would measure a 64-request burst instead of a steady load.
                "--ramp",
                "2",
            ],
            samples=True,
        ),
    ]
    if a.open_streams:
        # Every stream lasts ~open_hold seconds; all are sent at once and held together.
        n, hold = a.open_streams, a.open_hold
        delay = 100
        out.append(
            Scenario(
                "open",
                [
                    "--stream",
                    "--concurrency",
                    str(n),
                    "--requests",
                    str(n),
                    "--duration",
                    str(hold + 30),
                    "--output-tokens",
                    str(int(hold * 1000 / delay)),
                    "--prompt-prefix",
                    f"[[mock ttft_ms=0 delay_ms={delay}]]",
                    "--drain",
                    "30",
                ],
                rss=True,
            )
        )
    return [x for x in out if x.name in a.scenarios.split(",")]


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    kind: str  # direct | nginx | vllm-router | sglang-router | litellm | bare | tera
    port: int = 0
    config: str = ""
    server: str = ""
    log_level: str = "warning"
    # Given to the load generator (as OPENAI_API_KEY) and to the readiness probe.
    api_key: str = ""
    # /metrics is scraped with it during the run when set (tera-all).
    admin_token: str = ""
    state_dir: Path | None = None
    scrapes: int = 0
    scrape_errors: int = 0
    scrape_error: str = ""
    scraper: Scraper | None = None
    status: str = "pending"  # ok | unavailable | failed
    detail: str = ""
    version: str = ""
    proc: subprocess.Popen[bytes] | None = None
    tree: proc.Tree | None = None
    idle_rss: int = 0
    # CPU ms per second with no load at all (health checks, timers, scrapes).
    idle_cpu: float | None = None
    peak_rss: int = 0
    log: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"


def _fill(text: str, **values: Any) -> str:
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    return text


def _installed(step: str) -> tuple[bool, str]:
    try:
        status = json.loads((VAR / "install.json").read_text()).get(step)
    except (FileNotFoundError, ValueError):
        status = None
    if status is None:
        return False, "not installed (run `make bench-peers-install`)"
    return bool(status["ok"]), status.get("detail", "") if status[
        "ok"
    ] else f"install failed: {status.get('detail', '')}"


# kind -> (argv head under PEERS, log level word)
ROUTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "vllm-router": (("vllm-router/bin/vllm-router",), "warning"),
    "sglang-router": (("sglang-router/bin/python", "-m", "sglang_router.launch_router"), "warn"),
}


def command_for(
    t: Target, mock_url: str, run_dir: Path, a: argparse.Namespace
) -> tuple[list[str], dict[str, str]] | str:
    """The argv and env to start a target, or why it cannot start here."""
    d = run_dir / t.name
    d.mkdir(parents=True, exist_ok=True)
    hostport = mock_url.removeprefix("http://")
    if t.kind == "nginx":
        exe = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if not exe:
            return "nginx not installed (run `make bench-peers-install`)"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / sub).mkdir(exist_ok=True)
        conf = _fill(
            (ROOT / "bench/configs/nginx.conf").read_text(),
            DIR=d,
            HOST=HOST,
            PORT=t.port,
            MOCK_HOSTPORT=hostport,
            WORKERS=a.nginx_workers,
        )
        (d / "nginx.conf").write_text(conf)
        t.version = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
        return [exe, "-p", str(d), "-c", str(d / "nginx.conf")], {}
    if t.kind in ROUTERS:
        head, log_level = ROUTERS[t.kind]
        ok, why = _installed(t.kind)
        if not (ok and (PEERS / head[0]).exists()):
            return why
        t.version = why
        # The two Rust routers share their command line: one worker, round robin.
        return [
            str(PEERS / head[0]),
            *head[1:],
            "--host",
            HOST,
            "--port",
            str(t.port),
            "--worker-urls",
            mock_url,
            "--policy",
            "round_robin",
            "--log-level",
            log_level,
            "--prometheus-port",
            str(proc.free_port()),
        ], {}
    if t.kind == "litellm":
        exe = PEERS / "litellm/bin/litellm"
        ok, why = _installed("litellm")
        if not (ok and exe.exists()):
            return why
        t.version = why
        cfg = _fill(
            (ROOT / "bench/configs/litellm.yaml").read_text(), MODEL=MODEL, MOCK_URL=mock_url
        )
        (d / "litellm.yaml").write_text(cfg)
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "STORE_MODEL_IN_DB": "False",
        }
        return [
            str(exe),
            "--config",
            str(d / "litellm.yaml"),
            "--host",
            HOST,
            "--port",
            str(t.port),
            "--num_workers",
            "1",
        ], env
    if t.kind == "bare":
        have = venv_versions()
        missing = [m for m in ("starlette", "aiohttp", "uvloop", t.server) if m not in have]
        if not VENV_PY.exists() or missing:
            return f"{', '.join(missing) or 'python'} not in .venv (run `make venv`)"
        t.version = f"Starlette {have['starlette']}, aiohttp {have['aiohttp']}, " + (
            f"uvicorn {have['uvicorn']} + uvloop + httptools"
            if t.server == "uvicorn"
            else f"hypercorn {have['hypercorn']} + uvloop"
        )
        return [
            str(VENV_PY),
            str(ROOT / "bench/peers_bare/app.py"),
            "--upstream",
            mock_url,
            "--server",
            t.server,
            "--host",
            HOST,
            "--port",
            str(t.port),
        ], {}
    if t.kind == "tera":
        exe = ROOT / ".venv/bin/tera-proxy"
        if not exe.exists():
            return "tera-proxy not installed in .venv (run `make venv`)"
        server = t.server or "hypercorn"
        have = venv_versions()
        if server not in have:
            return f"{server} not in .venv (the [servers] extra: run `make venv`)"
        src = Path(t.config)
        if not src.is_absolute():
            src = ROOT / src
        if not src.exists():
            return f"config {src} not found"
        t.admin_token = "bench-admin-" + os.urandom(12).hex()
        text = _fill(
            src.read_text(),
            HOST=HOST,
            PORT=t.port,
            MOCK_URL=mock_url,
            MODEL=MODEL,
            STATE_DIR="state",
            ADMIN_TOKEN=t.admin_token,
        )
        cfg = d / "config.toml"
        cfg.write_text(text)
        t.state_dir = d / "state"
        parsed = tomllib.loads(text)
        auth = parsed.get("auth", {})
        if not auth.get("admin_token"):
            t.admin_token = ""  # /metrics is not scraped for a config without the token
        if auth.get("enabled", True):
            key = create_key(cfg, d)
            if key.startswith("error:"):
                return f"could not create an API key: {key[6:].strip()}"
            t.api_key = key
        argv = [
            str(exe),
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(t.port),
            "--log-level",
            t.log_level,
            "--server",
            server,
        ]
        rel = src.relative_to(ROOT) if src.is_relative_to(ROOT) else src
        t.version = f"tera-proxy {have.get('tera-proxy', '?')}, {rel} on {server} " + (
            f"{have[server]}" + (" + uvloop + httptools" if server == "uvicorn" else "")
        )
        return argv, {}
    return f"unknown target kind {t.kind}"


_VERSIONS: dict[str, str] | None = None


def venv_versions() -> dict[str, str]:
    """Versions of the serving packages installed in the project's .venv (read once)."""
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = {}
        code = (
            "import importlib.metadata as m, json\n"
            "out = {}\n"
            "for n in ('tera-proxy','starlette','aiohttp','hypercorn','uvicorn','granian',"
            "'uvloop','httptools'):\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))"
        )
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            run = subprocess.run(
                [str(VENV_PY), "-c", code], capture_output=True, text=True, timeout=60
            )
            _VERSIONS = json.loads(run.stdout)
    return _VERSIONS


def create_key(config: Path, cwd: Path) -> str:
    """An API key for a tera config with auth on: `tera-proxy keys create --quiet` when the
    CLI has it, else bench/make_key.py (the same store calls). 'error: ...' on failure."""
    tries = [
        [str(ROOT / ".venv/bin/tera-proxy"), "keys", "create", "--config", str(config)]
        + ["--name", "bench", "--quiet"]
        + [x for kv in KEY_LIMITS.items() for x in kv],
        [str(VENV_PY), str(ROOT / "bench/make_key.py"), str(config), "--name", "bench"],
    ]
    why = ""
    for argv in tries:
        try:
            run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            why = str(exc)
            continue
        keys = [ln.strip() for ln in run.stdout.splitlines() if ln.strip().startswith("sk-")]
        if run.returncode == 0 and keys:
            return keys[-1]
        why = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    return f"error: {why}"


def probe(url: str, timeout: float = 5.0, api_key: str = "") -> int:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url + "/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_ready(t: Target, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if t.proc is not None and t.proc.poll() is not None:
            t.detail = f"exited with {t.proc.returncode} (see {t.log})"
            return False
        if probe(t.url, 5.0, t.api_key) == 200:
            return True
        time.sleep(0.3)
    t.detail = f"not ready within {limit:.0f}s (see {t.log})"
    return False


def start_target(t: Target, mock_url: str, run_dir: Path, a: argparse.Namespace) -> None:
    if t.kind == "direct":
        t.port = int(mock_url.rsplit(":", 1)[1])
        t.status, t.version = "ok", "the mock itself"
        return
    t.port = proc.free_port()
    t.log = run_dir / t.name / "server.log"
    got = command_for(t, mock_url, run_dir, a)
    if isinstance(got, str):
        t.status, t.detail = "unavailable", got
        print(f"peers: {t.name}: {got}", file=sys.stderr)
        return
    argv, env = got
    started = time.monotonic()
    t.proc = proc.start(argv, t.log, env=env, cwd=run_dir / t.name)
    t.tree = proc.Tree(t.proc.pid)
    if wait_ready(t, a.start_timeout):
        t.status = "ok"
        if t.admin_token and a.scrape_every > 0:
            t.scraper = Scraper(t, a.scrape_every)
            t.scraper.start()
        time.sleep(0.5)
        t.idle_rss = t.tree.rss()
        print(
            f"peers: {t.name} ready on :{t.port} in {time.monotonic() - started:.1f}s "
            f"(rss {t.idle_rss / 2**20:.0f} MiB)",
            file=sys.stderr,
        )
    else:
        t.status = "failed"
        print(f"peers: {t.name}: {t.detail}", file=sys.stderr)
        with contextlib.suppress(Exception):
            tail = t.log.read_text(errors="replace").splitlines()[-8:]
            print("    " + "\n    ".join(tail), file=sys.stderr)
        proc.stop(t.proc)
        t.proc = None


class Scraper(threading.Thread):
    """GET /metrics every `every` seconds, as a Prometheus server would, for the whole run."""

    def __init__(self, t: Target, every: float) -> None:
        super().__init__(daemon=True)
        self.t, self.every = t, every
        self._halt = threading.Event()
        self.url = t.url.removesuffix("/v1") + "/metrics"

    def run(self) -> None:
        req = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.t.admin_token}"}
        )
        while not self._halt.wait(self.every):
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    ok = resp.status == 200 and b"# TYPE" in resp.read()
                    why = "" if ok else f"HTTP {resp.status} or not Prometheus text"
            except (urllib.error.URLError, OSError) as exc:
                ok, why = False, str(exc)
            if ok:
                self.t.scrapes += 1
            else:
                self.t.scrape_errors += 1
                self.t.scrape_error = why

    def stop(self) -> None:
        self._halt.set()
        self.join(6)


# ---------------------------------------------------------------- one measurement


class RssSampler(threading.Thread):
    def __init__(self, tree: proc.Tree | None, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.tree, self.every = tree, every
        self.max = 0
        self.values: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while self.tree is not None and not self._halt.wait(self.every):
            v = self.tree.rss()
            self.values.append(v)
            self.max = max(self.max, v)

    def stop(self) -> int:
        self._halt.set()
        self.join(2)
        return self.max


def measure_idle(targets: list[Target], seconds: float) -> None:
    """Every target's CPU over one window with no load on any of them (ms per second)."""
    trees = [t for t in targets if t.tree is not None]
    if seconds <= 0 or not trees:
        return
    for t in trees:
        settle(t, 10.0)
    cpu0 = {t.name: t.tree.cpu() for t in trees if t.tree}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    for t in trees:
        if t.tree:
            t.idle_cpu = round(1000 * (t.tree.cpu() - cpu0[t.name]) / wall, 2)
    print(
        "peers: idle CPU (ms/s): " + ", ".join(f"{t.name} {t.idle_cpu}" for t in trees),
        file=sys.stderr,
    )


def settle(t: Target, limit: float = 30.0) -> float:
    """Wait until the target's tree is (nearly) idle, so a backlog it still chews on does not
    steal CPU from the next measurement; returns the seconds waited."""
    if t.tree is None:
        return 0.0
    t0 = time.monotonic()
    last = t.tree.cpu()
    while time.monotonic() - t0 < limit:
        time.sleep(0.5)
        now = t.tree.cpu()
        if now - last < 0.5 * 0.1:  # under 10% of a core
            break
        last = now
    return time.monotonic() - t0


def measure(
    t: Target, sc: Scenario, mock: proc.Tree, out: Path, a: argparse.Namespace
) -> dict[str, Any]:
    """One loadgen run against one target. The load generator itself reads the proxy's and the
    mock's CPU over its measured window (warm-up excluded); the sampler here keeps the peak RSS
    over the whole run, warm-up included."""
    json_out = out / f"{t.name}-{sc.name}.json"
    argv = [
        a.loadgen_python,
        "-m",
        "bench.loadgen",
        "--url",
        t.url,
        "--model",
        MODEL,
        "--json",
        str(json_out),
        "--quiet",
        "--no-progress",
        "--watch",
        f"mock={mock.root}",
        *sc.args,
    ]
    if t.tree:
        argv += ["--watch", f"proxy={t.tree.root}"]
    if sc.samples:
        argv.append("--samples")
    sampler = RssSampler(t.tree)
    t0 = time.monotonic()
    sampler.start()
    limit = a.seconds + 120 + (a.open_hold + 60 if sc.name == "open" else 0)
    try:
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        if t.api_key:
            env["OPENAI_API_KEY"] = t.api_key  # not on the command line
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
        rc, err = run.returncode, run.stderr[-2000:]
    except subprocess.TimeoutExpired:
        rc, err = -1, f"loadgen timed out after {limit}s"
    wall = time.monotonic() - t0
    rss_max = sampler.stop()
    settled = settle(t)
    if t.tree:
        t.peak_rss = max(t.peak_rss, rss_max, t.tree.rss())
    row: dict[str, Any] = {
        "target": t.name,
        "scenario": sc.name,
        "wall_s": round(wall, 3),
        "loadgen_rc": rc,
        "settle_s": round(settled, 2),
    }
    try:
        lg = json.loads(json_out.read_text())["runs"][0]
        json_out.unlink()
    except (FileNotFoundError, ValueError, KeyError, IndexError):
        row["error"] = f"no loadgen result (rc {rc}): {err.strip()[-500:]}"
        return row
    samples = lg.pop("samples", None)
    if samples:  # inter-token gaps are many and summarised already
        row["samples"] = {k: samples[k] for k in ("latency_ms", "ttft_ms") if k in samples}
    watched = lg.pop("watched", {})
    row["load"] = lg
    m = watched.get("mock", {})
    row["mock_cpu_s"], row["mock_cpu_util"] = m.get("cpu_s"), m.get("cpu_util", 0.0)
    p = watched.get("proxy")
    ok = lg["requests_ok"]
    if p:
        cpu = p["cpu_s"]
        row["proxy_cpu_s"], row["proxy_cpu_util"] = cpu, p["cpu_util"]
        row["proxy_rss_max"] = p["rss_max"]
        if ok:
            row["proxy_cpu_ms_per_request"] = round(1000 * cpu / ok, 4)
            if lg["output_tokens"]:
                row["proxy_cpu_us_per_chunk"] = round(1e6 * cpu / lg["output_tokens"], 3)
    return row


# ---------------------------------------------------------------- summary


METRICS: list[tuple[str, str, str]] = [
    # key, heading, unit
    ("cpu_us_per_req", "CPU/request (rate)", "µs"),
    ("added_p50_ms", "added p50", "ms"),
    ("added_p99_ms", "added p99", "ms"),
    ("max_rps", "max req/s @32", "req/s"),
    ("cpu_us_per_req_max", "CPU/request @32", "µs"),
    ("cpu_us_per_chunk", "CPU/chunk (stream)", "µs"),
    ("added_ttft_p50_ms", "added TTFT p50", "ms"),
    ("added_ttft_p99_ms", "added TTFT p99", "ms"),
    ("itl_p99_ms", "ITL p99", "ms"),
    ("rss_open_mb", "RSS, open streams", "MiB"),
    ("peak_rss_mb", "peak RSS", "MiB"),
    ("idle_cpu_ms_s", "idle CPU", "ms/s"),
    ("errors", "errors", ""),
]


def per_round_metrics(rows: list[dict[str, Any]], target: str) -> dict[str, list[float | None]]:
    """Each metric of `target`, one value per round, differences taken against `direct` of the
    same round."""
    by: dict[tuple[int, str, str], dict[str, Any]] = {
        (r["round"], r["scenario"], r["target"]): r for r in rows
    }
    rounds = sorted({r["round"] for r in rows})
    out: dict[str, list[float | None]] = {k: [] for k, _, _ in METRICS}
    out["open_p99_s"] = []  # streams meant to last open_hold: were they all open together?

    def get(rnd: int, sc: str, tgt: str, *path: str) -> float | None:
        v: Any = by.get((rnd, sc, tgt))
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v if isinstance(v, int | float) else None

    def diff(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x - y

    def us(ms: float | None) -> float | None:
        return None if ms is None else ms * 1000

    def added(rnd: int, scenario: str, metric: str, pct: str) -> float | None:
        """The target's figure minus direct's, in the same round and scenario."""
        mine = get(rnd, scenario, target, "load", metric, pct)
        return diff(mine, get(rnd, scenario, "direct", "load", metric, pct))

    for rnd in rounds:
        out["cpu_us_per_req"].append(us(get(rnd, "rate", target, "proxy_cpu_ms_per_request")))
        out["added_p50_ms"].append(added(rnd, "rate", "latency_ms", "p50"))
        out["added_p99_ms"].append(added(rnd, "rate", "latency_ms", "p99"))
        out["max_rps"].append(get(rnd, "max", target, "load", "requests_per_s"))
        out["cpu_us_per_req_max"].append(us(get(rnd, "max", target, "proxy_cpu_ms_per_request")))
        out["cpu_us_per_chunk"].append(get(rnd, "stream", target, "proxy_cpu_us_per_chunk"))
        out["added_ttft_p50_ms"].append(added(rnd, "stream", "ttft_ms", "p50"))
        out["added_ttft_p99_ms"].append(added(rnd, "stream", "ttft_ms", "p99"))
        out["itl_p99_ms"].append(get(rnd, "stream", target, "load", "itl_ms", "p99"))
        p99 = get(rnd, "open", target, "load", "latency_ms", "p99")
        out["open_p99_s"].append(None if p99 is None else p99 / 1000)
        rss = get(rnd, "open", target, "proxy_rss_max")
        out["rss_open_mb"].append(rss / 2**20 if rss else None)
        errs = [
            get(rnd, sc, target, "load", "requests_failed")
            for sc in ("rate", "max", "stream", "open")
        ]
        out["errors"].append(
            sum(e for e in errs if e is not None) if any(e is not None for e in errs) else None
        )
    return out


def tera_features(t: Target) -> dict[str, Any]:
    """Evidence that a tera variant ran with what its config turns on: request log lines in
    its server.log, ledger rows in its SQLite file, /metrics scrapes, the API key in use."""
    out: dict[str, Any] = {
        "api_key": bool(t.api_key),
        "log_level": t.log_level,
        "metrics_scrapes": t.scrapes,
        "metrics_scrape_errors": t.scrape_errors,
        "metrics_scrape_last_error": t.scrape_error,
    }
    lines = 0
    with contextlib.suppress(OSError), t.log.open("rb") as fh:
        while block := fh.read(1 << 20):
            # Compact (orjson) or spaced JSON alike.
            lines += block.count(b'"event":"request"') + block.count(b'"event": "request"')
    out["log_lines"] = lines
    db = (t.state_dir / "tera.db") if t.state_dir else None
    out["ledger_rows"] = None
    if db is not None and db.exists():
        import sqlite3

        with contextlib.suppress(sqlite3.Error):
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                out["ledger_rows"] = con.execute("SELECT count(*) FROM tera_ledger").fetchone()[0]
            finally:
                con.close()
    return out


def summarize_targets(
    targets: list[Target], rows: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for t in targets:
        s: dict[str, Any] = {
            "status": t.status,
            "detail": t.detail,
            "version": t.version,
            "kind": t.kind,
            "server": t.server,
        }
        if t.status == "ok":
            for key, values in per_round_metrics(rows, t.name).items():
                s[key] = median_range(values)
            s["peak_rss_mb"] = median_range([t.peak_rss / 2**20] if t.peak_rss else [])
            s["idle_rss_mb"] = round(t.idle_rss / 2**20, 1) if t.idle_rss else None
            s["idle_cpu_ms_s"] = median_range([t.idle_cpu] if t.idle_cpu is not None else [])
            if t.kind == "tera":
                s["features"] = tera_features(t)
        summary[t.name] = s
    return summary


def headroom(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario, over every run: the mock's and the load generator's CPU (fraction of one
    core, max) and the mock's CPU per request (median), to show neither is the bottleneck."""
    out: dict[str, dict[str, Any]] = {}
    for sc in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == sc and "load" in r]
        per_req = [
            1e6 * r["mock_cpu_s"] / r["load"]["requests_ok"]
            for r in rs
            if r.get("mock_cpu_s") is not None and r["load"].get("requests_ok")
        ]
        per_chunk = [
            1e6 * r["mock_cpu_s"] / r["load"]["output_tokens"]
            for r in rs
            if r.get("mock_cpu_s") is not None
            and r["load"].get("output_tokens")
            and r["load"].get("config", {}).get("stream")
        ]
        lg = [r["load"]["loadgen_cpu_util"] for r in rs if r["load"].get("loadgen_cpu_util")]
        out[sc] = {
            "mock_cpu_util_max": max((r.get("mock_cpu_util") or 0.0 for r in rs), default=0.0),
            "mock_cpu_us_per_request": median_range(per_req)["median"],
            "mock_cpu_us_per_chunk": median_range(per_chunk)["median"],
            "loadgen_cpu_util_max": max(lg, default=0.0),
        }
    return out


# The targets (tera-all on its best server unless said otherwise).
GOAL_CHUNK_US = 60.0
GOAL_REQUEST_US = 250.0
GOAL_TTFT_MS = 2.0
GOAL_LITELLM_RATIO = 40.0
GOAL_OPEN_RSS_BYTES = 150e6  # 150 MB
GOAL_OPEN_STREAMS = 1000
# "No worse than bare": within this fraction on CPU and throughput, within this many ms on
# added latency; the rounds of a shared 2-core machine move by about that much.
NO_WORSE_REL = 0.05
NO_WORSE_MS = 0.2


def _med(summary: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    m = summary.get(name, {}).get(key)
    return m.get("median") if isinstance(m, dict) else None


def best_tera_all(summary: dict[str, dict[str, Any]]) -> str | None:
    """The tera-all variant with the lowest CPU against the budgets:
    CPU/request / 250 µs + CPU/chunk / 60 µs (a variant missing either figure ranks last)."""
    scored = []
    for name, s in summary.items():
        if not name.startswith("tera-all") or s.get("status") != "ok":
            continue
        req, chunk = _med(summary, name, "cpu_us_per_req"), _med(summary, name, "cpu_us_per_chunk")
        score = (
            math.inf
            if req is None or chunk is None
            else req / GOAL_REQUEST_US + chunk / GOAL_CHUNK_US
        )
        scored.append((score, name))
    return min(scored)[1] if scored else None


def evaluate_targets(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Each of the issue's targets as met / missed / not measured, with the numbers."""
    best = best_tera_all(summary)
    checks: list[dict[str, Any]] = []

    def add(name: str, goal: str, ok: bool | None, value: str) -> None:
        status = "not measured" if ok is None else ("met" if ok else "missed")
        checks.append({"check": name, "target": goal, "status": status, "value": value})

    def f(v: float | None, digits: int = 1, unit: str = "") -> str:
        return "-" if v is None else f"{v:.{digits}f}{unit}"

    b = best or "tera-all"
    chunk = _med(summary, b, "cpu_us_per_chunk")
    add(
        f"CPU per streamed chunk, {b}",
        f"<= {GOAL_CHUNK_US:g} µs",
        None if chunk is None else chunk <= GOAL_CHUNK_US,
        f(chunk, 1, " µs"),
    )
    req = _med(summary, b, "cpu_us_per_req")
    req32 = _med(summary, b, "cpu_us_per_req_max")
    idle = _med(summary, b, "idle_cpu_ms_s")
    rate = meta.get("rate") or 0
    add(
        f"CPU per non-streaming request, {b}, at {rate:g} req/s",
        f"<= {GOAL_REQUEST_US:g} µs",
        None if req is None else req <= GOAL_REQUEST_US,
        f(req, 0, " µs")
        + (
            f" (of which idle work, {idle:.1f} ms/s, is {1000 * idle / rate:.0f} µs)"
            if idle is not None and rate
            else ""
        ),
    )
    add(
        f"CPU per non-streaming request, {b}, at 32 connections",
        f"<= {GOAL_REQUEST_US:g} µs",
        None if req32 is None else req32 <= GOAL_REQUEST_US,
        f(req32, 0, " µs"),
    )
    # tera-all on hypercorn against bare Starlette + aiohttp on hypercorn (the target), and
    # tera-minimal there too (not a target: it shows what the features cost on this server).
    for variant, label in (("tera-all", ""), ("tera-minimal", " (features off; not a target)")):
        if variant == "tera-minimal" and variant not in summary:
            continue
        ok, value = _no_worse(summary, variant, "bare-hypercorn", f)
        add(
            f"{variant} on hypercorn no worse than bare-hypercorn{label}",
            f"within {NO_WORSE_REL:.0%} (CPU, req/s), {NO_WORSE_MS} ms (latency)",
            ok,
            value,
        )
    ttft = _med(summary, b, "added_ttft_p50_ms")
    add(
        f"added TTFT p50, {b} (64 streams x 200 chunks @ 10 ms)",
        f"< {GOAL_TTFT_MS:g} ms",
        None if ttft is None else ttft < GOAL_TTFT_MS,
        f(ttft, 2, " ms"),
    )
    lite = _med(summary, "litellm", "cpu_us_per_req")
    ratio = lite / req if lite is not None and req else None
    add(
        f"CPU per request, LiteLLM / {b}",
        f">= {GOAL_LITELLM_RATIO:g}x",
        None if ratio is None else ratio >= GOAL_LITELLM_RATIO,
        f"{f(ratio, 1, 'x')} ({f(lite, 0, ' µs')} vs {f(req, 0, ' µs')})" + _at32(summary, b),
    )
    rss = _med(summary, b, "rss_open_mb")
    n_open = int(meta.get("open_streams") or 0)
    full = n_open >= GOAL_OPEN_STREAMS
    slow = summary.get(b, {}).get("open_p99_s") or {}
    hold = float(meta.get("open_hold") or 0)
    late = (slow.get("max") or 0) > 1.5 * hold + 1 if hold else False
    add(
        f"RSS with {GOAL_OPEN_STREAMS:,} open streams, {b}",
        f"< {GOAL_OPEN_RSS_BYTES / 1e6:g} MB",
        None if rss is None or not full else rss * 2**20 < GOAL_OPEN_RSS_BYTES,
        "-"
        if rss is None
        else f"{rss * 2**20 / 1e6:.0f} MB ({rss:.0f} MiB)"
        + ("" if full else f" with only {n_open:,} streams open in this run")
        + (
            f"; some streams took {slow['max']:.0f} s instead of {hold:g} s, so not all were "
            "open together"
            if late
            else ""
        ),
    )
    return {"best_tera_all": best, "checks": checks}


def _no_worse(
    summary: dict[str, Any], x_name: str, y_name: str, f: Callable[..., str]
) -> tuple[bool | None, str]:
    """Whether target x is no worse than target y on CPU, req/s and added latency."""
    parts, oks = [], []
    for key, label, higher_better, unit, digits in (
        ("cpu_us_per_req", "CPU/request", False, " µs", 0),
        ("cpu_us_per_req_max", "CPU/request @32", False, " µs", 0),
        ("cpu_us_per_chunk", "CPU/chunk", False, " µs", 1),
        ("max_rps", "max req/s", True, "", 0),
        ("added_p50_ms", "added p50", False, " ms", 2),
        ("added_ttft_p50_ms", "added TTFT p50", False, " ms", 2),
    ):
        x, y = _med(summary, x_name, key), _med(summary, y_name, key)
        if x is None or y is None:
            continue
        if key.endswith("_ms"):
            ok = x <= y + NO_WORSE_MS
        elif higher_better:
            ok = x >= y * (1 - NO_WORSE_REL)
        else:
            ok = x <= y * (1 + NO_WORSE_REL)
        oks.append(ok)
        parts.append(
            f"{label} {f(x, digits, unit)} vs {f(y, digits, unit)}" + ("" if ok else " (worse)")
        )
    return (all(oks) if oks else None), "; ".join(parts) or "-"


def _at32(summary: dict[str, Any], b: str) -> str:
    lite = _med(summary, "litellm", "cpu_us_per_req_max")
    ours = _med(summary, b, "cpu_us_per_req_max")
    if lite is None or not ours:
        return ""
    return f"; at 32 connections {lite / ours:.1f}x ({lite:.0f} µs vs {ours:.0f} µs)"


def _cell(m: dict[str, Any] | None, digits: int) -> str:
    if not m or m.get("median") is None:
        return "-"
    med, lo, hi = m["median"], m["min"], m["max"]
    if m["n"] == 1 or lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def markdown(doc: dict[str, Any]) -> str:
    meta, summary = doc["meta"], doc["summary"]
    digits = {
        "idle_cpu_ms_s": 1,
        "max_rps": 0,
        "rss_open_mb": 0,
        "peak_rss_mb": 0,
        "errors": 0,
        "cpu_us_per_chunk": 1,
        "cpu_us_per_req": 0,
        "cpu_us_per_req_max": 0,
    }
    lines = [
        f"# Proxy peers side by side ({meta['started']})",
        "",
        f"{meta['machine']}. {meta['rounds']} interleaved rounds of {meta['seconds']} s "
        "per scenario; "
        "cells are the median over rounds (min-max). Added latency and TTFT are against `direct` "
        "in the same round. CPU is the proxy process tree's user+system time.",
        "",
        "| target | " + " | ".join(f"{h} ({u})" if u else h for _, h, u in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, s in summary.items():
        if s["status"] != "ok":
            lines.append(f"| {name} | {s['status']}: {s['detail']} |" + " |" * (len(METRICS) - 1))
            continue
        cells = []
        for key, _, _ in METRICS:
            if name == "direct" and key.startswith(("added", "cpu", "rss", "peak", "idle")):
                cells.append("—")
            else:
                cells.append(_cell(s.get(key), digits.get(key, 2 if "ms" in key else 1)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Scenarios: " + "; ".join(f"`{k}`: {v}" for k, v in meta["scenarios"].items()),
        "",
    ]
    lines += [
        "Versions: " + "; ".join(f"{n}: {s['version'] or '-'}" for n, s in summary.items()),
        "",
    ]
    goals = doc.get("targets")
    if goals:
        best = goals.get("best_tera_all")
        lines += [
            "## Targets (issue 7), from this run",
            "",
            (
                f"tera-all's best server here: **{best}** (lowest CPU/request / "
                f"{GOAL_REQUEST_US:g} µs + CPU/chunk / {GOAL_CHUNK_US:g} µs)."
                if best
                else "No tera-all variant produced numbers in this run."
            ),
            "",
            "| check | target | this run | |",
            "|---|---|---|---|",
        ]
        for c in goals["checks"]:
            mark = {"met": "**met**", "missed": "**missed**"}.get(c["status"], c["status"])
            lines.append(f"| {c['check']} | {c['target']} | {c['value']} | {mark} |")
        variants = [n for n, s in summary.items() if n.startswith("tera") and s["status"] == "ok"]
        if variants:
            lines += [
                "",
                "Every tera-proxy variant against the same budgets:",
                "",
                "| variant | CPU/chunk (µs) | CPU/request (µs) | CPU/request @32 (µs) | "
                "idle CPU (ms/s) | added TTFT p50 (ms) | RSS open (MiB) | request log lines | "
                "ledger rows | /metrics scrapes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for n in variants:
                feat = summary[n].get("features", {})
                scr = feat.get("metrics_scrapes", 0)
                if feat.get("metrics_scrape_errors"):
                    scr = f"{scr} ({feat['metrics_scrape_errors']} failed)"
                lines.append(
                    f"| {n} | {_cell(summary[n].get('cpu_us_per_chunk'), 1)} | "
                    f"{_cell(summary[n].get('cpu_us_per_req'), 0)} | "
                    f"{_cell(summary[n].get('cpu_us_per_req_max'), 0)} | "
                    f"{_cell(summary[n].get('idle_cpu_ms_s'), 1)} | "
                    f"{_cell(summary[n].get('added_ttft_p50_ms'), 2)} | "
                    f"{_cell(summary[n].get('rss_open_mb'), 0)} | "
                    f"{feat.get('log_lines', '-')} | {feat.get('ledger_rows', '-')} | {scr} |"
                )
        lines.append("")
    room = doc.get("headroom")
    if room:
        worst = max((h["mock_cpu_util_max"] for h in room.values()), default=0.0)
        verdict = (
            "it is not the bottleneck"
            if worst < 0.5
            else "it has headroom left"
            if worst < 0.8
            else "it may be what limits the busiest scenario"
        )
        lines += [
            "## The upstream mock's own CPU, and the load generator's",
            "",
            f"The mock (one C epoll process) used at most {worst:.0%} of one core in any run: "
            f"{verdict}.",
            "",
            "| scenario | mock CPU, max (% of a core) | mock CPU per request (µs, median) | "
            "mock CPU per chunk (µs, median) | load generator CPU, max (% of a core) |",
            "|---|---:|---:|---:|---:|",
        ]
        for sc, h in room.items():
            per, chunk = h["mock_cpu_us_per_request"], h.get("mock_cpu_us_per_chunk")
            lines.append(
                f"| {sc} | {h['mock_cpu_util_max']:.0%} | "
                f"{'-' if per is None else f'{per:.1f}'} | "
                f"{'-' if chunk is None else f'{chunk:.2f}'} | {h['loadgen_cpu_util_max']:.0%} |"
            )
        busy = [sc for sc, h in room.items() if h["loadgen_cpu_util_max"] >= 0.9]
        if busy:
            lines += [
                "",
                "The load generator (one Python process) used a whole core in "
                + ", ".join(f"`{sc}`" for sc in busy)
                + ": there, req/s close to `direct`'s is the generator's limit, not the "
                "target's.",
            ]
        lines += [
            "",
            "CPU is read from /proc in clock ticks (10 ms): a figure made of a few ticks, such as "
            "the mock's over a short `rate` run, is coarse.",
            "",
        ]
    chk = doc.get("checks", {})
    if chk:
        lines += [
            "Headroom checks (max over all runs): "
            f"mock CPU {chk['mock_cpu_util_max']:.0%} of one core; "
            f"load generator CPU {chk['loadgen_cpu_util_max']:.0%} of one core, "
            f"{chk['loadgen_cpu_ms_per_request_median']:.3f} ms per request (median).",
            "",
        ]
    return "\n".join(lines)


def plots(doc: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("peers: matplotlib not installed here, no plots", file=sys.stderr)
        return []
    summary = {k: v for k, v in doc["summary"].items() if v["status"] == "ok"}
    names = list(summary)
    panels = [m for m in METRICS if m[0] != "errors"]
    fig, axes = plt.subplots(3, 4, figsize=(18, 11))
    for ax, (key, head, unit) in zip(axes.flat, panels, strict=False):
        meds, los, his, labels = [], [], [], []
        for n in names:
            m = summary[n].get(key)
            if not m or m.get("median") is None:
                continue
            labels.append(n)
            meds.append(m["median"])
            los.append(m["median"] - m["min"])
            his.append(m["max"] - m["median"])
        ax.bar(
            labels, meds, yerr=[los, his], capsize=3, color=[f"C{names.index(n)}" for n in labels]
        )
        goal = {
            "cpu_us_per_req": GOAL_REQUEST_US,
            "cpu_us_per_chunk": GOAL_CHUNK_US,
            "added_ttft_p50_ms": GOAL_TTFT_MS,
            "rss_open_mb": GOAL_OPEN_RSS_BYTES / 2**20,
        }.get(key)
        if goal is not None and meds:
            ax.axhline(goal, color="k", linestyle="--", linewidth=0.8, label="issue 7 target")
            ax.legend(fontsize=7, loc="upper left")
        pos = sorted(abs(v) for v in meds if v)
        if pos and pos[-1] > 8 * pos[len(pos) // 2]:
            # One peer (LiteLLM) would flatten every other bar.
            if min(meds) > 0:
                ax.set_yscale("log")
            else:
                ax.set_yscale("symlog", linthresh=max(pos[len(pos) // 2], 1e-3))
        ax.set_title(f"{head} ({unit})" if unit else head, fontsize=10)
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"proxies side by side: median of {doc['meta']['rounds']} rounds, bars min-max")
    fig.tight_layout()
    written = [out / "peers-summary.png"]
    fig.savefig(written[0], dpi=90)
    plt.close(fig)
    # Latency CDFs of the last round.
    last = max((r["round"] for r in doc["rows"]), default=0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (sc, key, title) in zip(
        axes,
        (
            ("rate", "latency_ms", f"non-streaming latency at {doc['meta']['rate']} req/s"),
            ("stream", "ttft_ms", "TTFT, 64 streams x 200 chunks @10 ms"),
        ),
        strict=True,
    ):
        for r in doc["rows"]:
            if r["round"] == last and r["scenario"] == sc and r.get("samples"):
                vs = sorted(r["samples"].get(key, []))
                if vs:
                    ax.plot(
                        vs,
                        [(i + 1) / len(vs) for i in range(len(vs))],
                        label=r["target"],
                        color=f"C{names.index(r['target'])}" if r["target"] in names else None,
                    )
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("CDF")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "peers-latency-cdf.png")
    fig.savefig(written[1], dpi=90)
    plt.close(fig)
    return written


# ---------------------------------------------------------------- main


def tera_variants(all_config: str | None = None) -> dict[str, tuple[str, str, str]]:
    """name -> (config, server, log level) of the built-in tera-proxy variants:
    tera-minimal, tera-minimal-uvicorn, tera-minimal-granian, tera-all, tera-all-uvicorn, ..."""
    out = {}
    for base, (cfg, level) in TERA_CONFIGS.items():
        if base == "all" and all_config:
            cfg = all_config
        for server in SERVERS:
            name = f"tera-{base}" + ("" if server == "hypercorn" else f"-{server}")
            out[name] = (cfg, server, level)
    return out


def parse_targets(a: argparse.Namespace) -> list[Target]:
    tera = tera_variants(a.tera_config)
    extra: list[str] = []
    for spec in a.tera or ():
        name, _, rest = spec.partition("=")
        if not rest:
            raise SystemExit(f"--tera wants NAME=CONFIG[:SERVER[:LOGLEVEL]], got {spec!r}")
        cfg, _, tail = rest.partition(":")
        server, _, level = tail.partition(":")
        if server and server not in SERVERS:
            raise SystemExit(f"--tera {spec!r}: server must be one of {', '.join(SERVERS)}")
        name = name if name.startswith("tera") else f"tera-{name}"
        tera[name] = (cfg, server or "hypercorn", level or "warning")
        extra.append(name)
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    names += [n for n in extra if n not in names]
    out = []
    for n in names:
        if n in tera:
            cfg, server, level = tera[n]
            out.append(Target(n, "tera", config=cfg, server=server, log_level=level))
        elif n.startswith("bare-") and n[5:] in BARE_SERVERS:
            out.append(Target(n, "bare", server=n[5:]))
        elif n in ("direct", "nginx", "vllm-router", "sglang-router", "litellm"):
            out.append(Target(n, n))
        else:
            known = ["direct", "nginx", "vllm-router", "sglang-router", "litellm"]
            known += [f"bare-{s}" for s in BARE_SERVERS] + list(tera)
            raise SystemExit(f"unknown target {n!r} (known: {', '.join(known)})")
    if not any(t.kind == "direct" for t in out):
        out.insert(0, Target("direct", "direct"))  # every difference is taken against it
    return out


def render(src: Path, out: Path) -> int:
    """Markdown and plots again from a results JSON (after a change to the report)."""
    doc = json.loads(src.read_text())
    doc["headroom"] = headroom(doc["rows"])
    doc["targets"] = evaluate_targets(doc["summary"], doc["meta"])
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(doc)
    (out / "peers.md").write_text(md)
    for p in plots(doc, out):
        print(f"peers: wrote {p}", file=sys.stderr)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    ap.add_argument(
        "--tera",
        action="append",
        metavar="NAME=CONFIG[:SERVER[:LOGLEVEL]]",
        help="a tera-proxy variant (repeat); SERVER is passed as --server (hypercorn, uvicorn, "
        "granian), LOGLEVEL as --log-level (default warning)",
    )
    ap.add_argument(
        "--tera-config",
        help="the all-features config of tera-all, tera-all-uvicorn, tera-all-granian "
        "(default bench/configs/tera-all.toml)",
    )
    ap.add_argument(
        "--scrape-every",
        type=float,
        default=5.0,
        help="seconds between /metrics scrapes of a target with an admin token (0: never)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="duration of each scenario run")
    ap.add_argument(
        "--rate", type=float, default=100.0, help="the moderate rate of the `rate` scenario"
    )
    ap.add_argument(
        "--rate-seconds",
        type=float,
        default=15.0,
        help="duration of the `rate` scenario (0: --seconds)",
    )
    ap.add_argument(
        "--open-streams", type=int, default=1000, help="streams held open together (0: skip)"
    )
    ap.add_argument("--open-hold", type=float, default=8.0, help="seconds each open stream lasts")
    ap.add_argument("--scenarios", default="rate,max,stream,open")
    ap.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="one window with every target up and no load: idle CPU (0: skip)",
    )
    ap.add_argument("--nginx-workers", default="1")
    ap.add_argument("--mock-workers", type=int, default=1)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument(
        "--loadgen-python",
        default=str(VAR / "venv/bin/python")
        if (VAR / "venv/bin/python").exists()
        else sys.executable,
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite OUT/peers.md and the plots from an earlier run's peers-<stamp>.json",
    )
    a = ap.parse_args(argv)
    if a.render:
        return render(Path(a.render), Path(a.out))
    if a.rounds < 1 or a.seconds <= 0:
        ap.error("--rounds >= 1 and --seconds > 0")
    targets = parse_targets(a)
    scs = scenarios(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = VAR / "run" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    mock_bin = VAR / "bin/mockllm"
    if not mock_bin.exists():
        print("peers: building the mock upstream", file=sys.stderr)
        subprocess.run(["make", "-s", "-C", str(ROOT / "bench/mock")], check=True)
    mock_port = proc.free_port()
    mock_url = f"http://{HOST}:{mock_port}"
    procs: list[subprocess.Popen[bytes]] = []

    def cleanup(*_: Any) -> None:
        for t in targets:
            if t.scraper is not None:
                t.scraper.stop()
                t.scraper = None
            if t.proc is not None:
                proc.stop(t.proc)
                t.proc = None
        for p in procs:
            proc.stop(p)
        procs.clear()

    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(143)))
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.monotonic()
    try:
        mock = proc.start(
            [
                str(mock_bin),
                "--host",
                HOST,
                "--port",
                str(mock_port),
                "--model",
                MODEL,
                "--workers",
                str(a.mock_workers),
            ],
            run_dir / "mock.log",
        )
        procs.append(mock)
        mock_tree = proc.Tree(mock.pid)
        for _ in range(50):
            if probe(mock_url + "/v1", 1.0) == 200:
                break
            time.sleep(0.1)
        for t in targets:
            start_target(t, mock_url, run_dir, a)
        live = [t for t in targets if t.status == "ok"]
        measure_idle(live, a.idle_seconds)
        for rnd in range(a.rounds):
            order = live[rnd % len(live) :] + live[: rnd % len(live)]
            for sc in scs:
                for t in order:
                    if t.proc is not None and t.proc.poll() is not None:
                        t.status, t.detail = (
                            "failed",
                            f"exited with {t.proc.returncode} during the run",
                        )
                        continue
                    if t.status != "ok":
                        continue
                    row = measure(t, sc, mock_tree, run_dir, a)
                    row["round"] = rnd
                    rows.append(row)
                    lg = row.get("load", {})
                    print(
                        f"peers: round {rnd + 1}/{a.rounds} {sc.name:6} {t.name:14} "
                        f"ok {lg.get('requests_ok', '-')} err {lg.get('requests_failed', '-')} "
                        f"rps {lg.get('requests_per_s', '-')} "
                        f"p50 {lg.get('latency_ms', {}).get('p50', '-')} ms "
                        f"ttft50 {lg.get('ttft_ms', {}).get('p50', '-')} ms "
                        f"cpu {row.get('proxy_cpu_s')} s mock {row.get('mock_cpu_util') or 0:.0%} "
                        f"{row.get('error', '')}",
                        file=sys.stderr,
                    )
    except KeyboardInterrupt:
        print("peers: interrupted, writing what was measured", file=sys.stderr)
    finally:
        cleanup()

    lg_util = [
        r["load"]["loadgen_cpu_util"]
        for r in rows
        if r.get("load", {}).get("loadgen_cpu_util") is not None
    ]
    lg_ms = [
        r["load"]["loadgen_cpu_ms_per_request"]
        for r in rows
        if r.get("load", {}).get("loadgen_cpu_ms_per_request")
    ]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    doc: dict[str, Any] = {
        "meta": {
            "started": started,
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}, {round(mem / 2**30)} GiB",
            "rounds": a.rounds,
            "seconds": a.seconds,
            "rate": a.rate,
            "open_streams": a.open_streams,
            "open_hold": a.open_hold,
            "mock": f"bench/mock/mockllm.c, {a.mock_workers} worker(s)",
            "nginx_workers": a.nginx_workers,
            "argv": sys.argv[1:] if argv is None else argv,
            "scenarios": {sc.name: " ".join(sc.args) for sc in scs},
        },
        "checks": {
            "mock_cpu_util_max": max((r.get("mock_cpu_util") or 0.0 for r in rows), default=0.0),
            "loadgen_cpu_util_max": max(lg_util, default=0.0),
            "loadgen_cpu_ms_per_request_median": median_range(lg_ms)["median"] or 0.0,
        },
        "headroom": headroom(rows),
        "summary": summarize_targets(targets, rows),
        "rows": rows,
    }
    doc["targets"] = evaluate_targets(doc["summary"], doc["meta"])
    (out / f"peers-{stamp}.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (out / "peers.md").write_text(md)
    (out / f"peers-{stamp}.md").write_text(md)
    for p in plots(doc, out):
        print(f"peers: wrote {p}", file=sys.stderr)
    print(md)
    print(f"peers: results in {out}/peers-{stamp}.json, {out}/peers.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
