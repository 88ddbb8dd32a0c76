"""Peers side by side: the same lean upstream (bench/mock, a C epoll server), reached
directly and through each proxy, in interleaved rounds.

    python -m bench.peers [--targets direct,nginx,vllm-router,sglang-router,litellm,tera-minimal]
                          [--tera NAME=CONFIG[:SERVER]]... [--tera-config FILE]
                          [--rounds 3] [--seconds 10] [--rate 100] [--open-streams 1000]
                          [--out bench/results]

Targets stay up for the whole run; each round runs every scenario on every target, the
target order rotating from round to round, so slow drifts of this shared machine hit all
alike. Scenarios (the loads are `python -m bench.loadgen` subprocesses):

  rate     non-streaming chat at a fixed moderate open-loop rate: added latency p50/p99 against
           direct in the same round, proxy CPU per request
  max      non-streaming, closed loop at 32 connections: max requests/s
  stream   64 concurrent streams of 200 chunks at 10 ms: added TTFT, proxy CPU per chunk
  open     N concurrent slow streams held open together: the proxy's RSS with them open

Proxy CPU is the utime+stime of the proxy's process tree over the scenario (/proc), RSS is
sampled every 100 ms. The mock's and the load generator's own CPU are recorded too, to show
neither is the bottleneck. A peer that is not installed, or does not start, is reported as
such in the table. Results: OUT/peers-<stamp>.json, OUT/peers.md, OUT/*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
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
DEFAULT_TARGETS = "direct,nginx,vllm-router,sglang-router,litellm,tera-minimal"


@dataclass
class Scenario:
    name: str
    args: list[str]
    samples: bool = False
    # Keep the proxy's RSS while this runs (the "open streams" figure).
    rss: bool = False


def scenarios(a: argparse.Namespace) -> list[Scenario]:
    s = a.seconds
    out = [
        Scenario(
            "rate",
            [
                "--rate",
                str(a.rate),
                "--requests",
                str(int(a.rate * s * 1.5) + 10),
                "--duration",
                str(s),
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
    kind: str  # direct | nginx | vllm-router | sglang-router | litellm | tera
    port: int = 0
    config: str = ""
    server: str = ""
    status: str = "pending"  # ok | unavailable | failed
    detail: str = ""
    version: str = ""
    proc: subprocess.Popen[bytes] | None = None
    tree: proc.Tree | None = None
    idle_rss: int = 0
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
    if t.kind == "vllm-router":
        exe = PEERS / "vllm-router/bin/vllm-router"
        ok, why = _installed("vllm-router")
        if not (ok and exe.exists()):
            return why
        t.version = why
        return [
            str(exe),
            "--host",
            HOST,
            "--port",
            str(t.port),
            "--worker-urls",
            mock_url,
            "--policy",
            "round_robin",
            "--log-level",
            "warning",
            "--prometheus-port",
            str(proc.free_port()),
        ], {}
    if t.kind == "sglang-router":
        py = PEERS / "sglang-router/bin/python"
        ok, why = _installed("sglang-router")
        if not (ok and py.exists()):
            return why
        t.version = why
        return [
            str(py),
            "-m",
            "sglang_router.launch_router",
            "--host",
            HOST,
            "--port",
            str(t.port),
            "--worker-urls",
            mock_url,
            "--policy",
            "round_robin",
            "--log-level",
            "warn",
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
    if t.kind == "tera":
        exe = ROOT / ".venv/bin/tera-proxy"
        alt = PEERS / "tera-servers/bin/tera-proxy"  # bench/install_peers.sh granian
        if t.server and alt.exists():
            exe = alt  # the same source tree, with uvicorn/granian installed beside it
        if not exe.exists():
            return "tera-proxy not installed in .venv (run `make venv`)"
        src = Path(t.config)
        if not src.is_absolute():
            src = ROOT / src
        if not src.exists():
            return f"config {src} not found"
        text = _fill(
            src.read_text(),
            HOST=HOST,
            PORT=t.port,
            MOCK_URL=mock_url,
            MODEL=MODEL,
            STATE_DIR="state",
        )
        (d / "config.toml").write_text(text)
        argv = [
            str(exe),
            "serve",
            "--config",
            str(d / "config.toml"),
            "--port",
            str(t.port),
            "--log-level",
            "warning",
        ]
        if t.server:
            argv += ["--server", t.server]
        t.version = f"{src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}" + (
            f" on {t.server}" if t.server else " on hypercorn"
        )
        return argv, {}
    return f"unknown target kind {t.kind}"


def probe(url: str, timeout: float = 5.0) -> int:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    ).encode()
    req = urllib.request.Request(
        url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
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
        if probe(t.url, 5.0) == 200:
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
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit)
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
    ("cpu_ms_per_req", "CPU/request (rate)", "ms"),
    ("added_p50_ms", "added p50", "ms"),
    ("added_p99_ms", "added p99", "ms"),
    ("max_rps", "max req/s @32", "req/s"),
    ("cpu_ms_per_req_max", "CPU/request @32", "ms"),
    ("cpu_us_per_chunk", "CPU/chunk (stream)", "µs"),
    ("added_ttft_p50_ms", "added TTFT p50", "ms"),
    ("added_ttft_p99_ms", "added TTFT p99", "ms"),
    ("itl_p99_ms", "ITL p99", "ms"),
    ("rss_open_mb", "RSS, open streams", "MiB"),
    ("peak_rss_mb", "peak RSS", "MiB"),
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

    def get(rnd: int, sc: str, tgt: str, *path: str) -> float | None:
        v: Any = by.get((rnd, sc, tgt))
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v if isinstance(v, int | float) else None

    def diff(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x - y

    for rnd in rounds:
        out["cpu_ms_per_req"].append(get(rnd, "rate", target, "proxy_cpu_ms_per_request"))
        out["added_p50_ms"].append(
            diff(
                get(rnd, "rate", target, "load", "latency_ms", "p50"),
                get(rnd, "rate", "direct", "load", "latency_ms", "p50"),
            )
        )
        out["added_p99_ms"].append(
            diff(
                get(rnd, "rate", target, "load", "latency_ms", "p99"),
                get(rnd, "rate", "direct", "load", "latency_ms", "p99"),
            )
        )
        out["max_rps"].append(get(rnd, "max", target, "load", "requests_per_s"))
        out["cpu_ms_per_req_max"].append(get(rnd, "max", target, "proxy_cpu_ms_per_request"))
        out["cpu_us_per_chunk"].append(get(rnd, "stream", target, "proxy_cpu_us_per_chunk"))
        out["added_ttft_p50_ms"].append(
            diff(
                get(rnd, "stream", target, "load", "ttft_ms", "p50"),
                get(rnd, "stream", "direct", "load", "ttft_ms", "p50"),
            )
        )
        out["added_ttft_p99_ms"].append(
            diff(
                get(rnd, "stream", target, "load", "ttft_ms", "p99"),
                get(rnd, "stream", "direct", "load", "ttft_ms", "p99"),
            )
        )
        out["itl_p99_ms"].append(get(rnd, "stream", target, "load", "itl_ms", "p99"))
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


def summarize_targets(
    targets: list[Target], rows: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for t in targets:
        s: dict[str, Any] = {"status": t.status, "detail": t.detail, "version": t.version}
        if t.status == "ok":
            for key, values in per_round_metrics(rows, t.name).items():
                s[key] = median_range(values)
            s["peak_rss_mb"] = median_range([t.peak_rss / 2**20] if t.peak_rss else [])
            s["idle_rss_mb"] = round(t.idle_rss / 2**20, 1) if t.idle_rss else None
        summary[t.name] = s
    return summary


def _cell(m: dict[str, Any] | None, digits: int) -> str:
    if not m or m.get("median") is None:
        return "-"
    med, lo, hi = m["median"], m["min"], m["max"]
    if m["n"] == 1 or lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def markdown(doc: dict[str, Any]) -> str:
    meta, summary = doc["meta"], doc["summary"]
    digits = {"max_rps": 0, "rss_open_mb": 0, "peak_rss_mb": 0, "errors": 0, "cpu_us_per_chunk": 1}
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
            if name == "direct" and key.startswith(("added", "cpu", "rss", "peak")):
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
        ax.set_title(f"{head} ({unit})" if unit else head, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
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


def parse_targets(a: argparse.Namespace) -> list[Target]:
    tera: dict[str, tuple[str, str]] = {"tera-minimal": ("bench/configs/tera-minimal.toml", "")}
    for spec in a.tera or ():
        name, _, rest = spec.partition("=")
        if not rest:
            raise SystemExit(f"--tera wants NAME=CONFIG[:SERVER], got {spec!r}")
        cfg, _, server = rest.partition(":")
        tera[name if name.startswith("tera") else f"tera-{name}"] = (cfg, server)
    if a.tera_config:
        tera["tera-all"] = (a.tera_config, "")
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    for extra in tera:
        if extra not in names and extra != "tera-minimal":
            names.append(extra)
    out = []
    for n in names:
        if n in tera:
            out.append(Target(n, "tera", config=tera[n][0], server=tera[n][1]))
        elif n in ("direct", "nginx", "vllm-router", "sglang-router", "litellm"):
            out.append(Target(n, n))
        else:
            raise SystemExit(f"unknown target {n!r}")
    if not any(t.kind == "direct" for t in out):
        out.insert(0, Target("direct", "direct"))  # every difference is taken against it
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    ap.add_argument(
        "--tera",
        action="append",
        metavar="NAME=CONFIG[:SERVER]",
        help="a tera-proxy variant (repeat); SERVER is passed as --server (uvicorn, granian)",
    )
    ap.add_argument("--tera-config", help="shorthand for --tera all=FILE (the all-features config)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each scenario run")
    ap.add_argument(
        "--rate", type=float, default=100.0, help="the moderate rate of the `rate` scenario"
    )
    ap.add_argument(
        "--open-streams", type=int, default=1000, help="streams held open together (0: skip)"
    )
    ap.add_argument("--open-hold", type=float, default=8.0, help="seconds each open stream lasts")
    ap.add_argument("--scenarios", default="rate,max,stream,open")
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
    a = ap.parse_args(argv)
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
        "summary": summarize_targets(targets, rows),
        "rows": rows,
    }
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
