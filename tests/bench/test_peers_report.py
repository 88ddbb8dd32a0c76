"""bench/peers.py's pure parts: the target list, the tera variants, the issue's targets as
met / missed, the mock's headroom, the Markdown; and the bench configs are valid configs."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bench import peers
from bench.stats import median_range
from tera_proxy.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _args(**kw: Any) -> argparse.Namespace:
    base = {"targets": peers.DEFAULT_TARGETS, "tera": None, "tera_config": None}
    return argparse.Namespace(**{**base, **kw})


def test_default_targets_cover_the_issue_list() -> None:
    ts = {t.name: t for t in peers.parse_targets(_args())}
    assert list(ts) == peers.DEFAULT_TARGETS.split(",")
    assert ts["bare-hypercorn"].kind == "bare" and ts["bare-hypercorn"].server == "hypercorn"
    assert ts["bare-uvicorn"].server == "uvicorn"
    assert (ts["tera-minimal"].server, ts["tera-minimal"].log_level) == ("hypercorn", "warning")
    assert ts["tera-minimal-uvicorn"].config == "bench/configs/tera-minimal.toml"
    for name, server in (
        ("tera-all", "hypercorn"),
        ("tera-all-uvicorn", "uvicorn"),
        ("tera-all-granian", "granian"),
    ):
        t = ts[name]
        assert (t.kind, t.server, t.log_level) == ("tera", server, "info")
        assert t.config == "bench/configs/tera-all.toml"


def test_direct_is_always_there_and_tera_specs_parse() -> None:
    ts = peers.parse_targets(
        _args(targets="nginx", tera=["x=cfg.toml:granian:info"], tera_config="mine.toml")
    )
    assert [t.name for t in ts] == ["direct", "nginx", "tera-x"]
    assert (ts[2].config, ts[2].server, ts[2].log_level) == ("cfg.toml", "granian", "info")
    ts = peers.parse_targets(_args(targets="tera-all-uvicorn", tera_config="mine.toml"))
    assert ts[1].config == "mine.toml"
    with pytest.raises(SystemExit, match="unknown target"):
        peers.parse_targets(_args(targets="bare-granian"))
    with pytest.raises(SystemExit, match="server must be"):
        peers.parse_targets(_args(targets="direct", tera=["y=c.toml:gunicorn"]))


@pytest.mark.parametrize("name", ["tera-minimal.toml", "tera-all.toml"])
def test_bench_configs_are_valid_once_filled(name: str, tmp_path: Path) -> None:
    text = peers._fill(
        (ROOT / "bench/configs" / name).read_text(),
        HOST="127.0.0.1",
        PORT=8123,
        MOCK_URL="http://127.0.0.1:9000",
        MODEL=peers.MODEL,
        STATE_DIR="state",
        ADMIN_TOKEN="admin-token-for-the-test",
    )
    assert "@" not in text.replace("@PLACEHOLDERS@", "")
    (tmp_path / "c.toml").write_text(text)
    cfg = load_config(tmp_path / "c.toml")
    assert [m.id for m in cfg.models] == [peers.MODEL]
    if name == "tera-all.toml":
        assert cfg.auth.enabled and cfg.auth.admin_token and cfg.limits.backend == "memory"
    else:
        assert not cfg.auth.enabled


def _m(v: float | None) -> dict[str, Any]:
    return median_range([v])


def _summary(**over: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    base = {
        "cpu_us_per_req": 200.0,
        "cpu_us_per_req_max": 150.0,
        "cpu_us_per_chunk": 40.0,
        "max_rps": 4000.0,
        "added_p50_ms": 0.4,
        "added_ttft_p50_ms": 0.8,
        "rss_open_mb": 90.0,
    }
    out: dict[str, dict[str, Any]] = {}
    for name in ("bare-hypercorn", "tera-all", "tera-all-uvicorn", "tera-all-granian", "litellm"):
        vals = {**base, **over.get(name.replace("-", "_"), {})}
        out[name] = {"status": "ok", **{k: _m(v) for k, v in vals.items()}}
    return out


def test_targets_met_and_best_server() -> None:
    s = _summary(
        tera_all_uvicorn={"cpu_us_per_req": 120.0, "cpu_us_per_chunk": 20.0},
        litellm={"cpu_us_per_req": 6000.0},
    )
    got = peers.evaluate_targets(s, {"rate": 100.0, "open_streams": 1000})
    assert got["best_tera_all"] == "tera-all-uvicorn"
    status = {c["check"].split(",")[0]: c["status"] for c in got["checks"]}
    assert set(status.values()) == {"met"}, got["checks"]
    ratio = next(c for c in got["checks"] if "LiteLLM" in c["check"])
    assert ratio["value"].startswith("50.0x")


def test_targets_missed_and_not_measured() -> None:
    s = _summary(
        tera_all={"cpu_us_per_req": 300.0, "cpu_us_per_chunk": 70.0, "added_ttft_p50_ms": 2.5},
        tera_all_uvicorn={"cpu_us_per_req": None},
        tera_all_granian={"cpu_us_per_req": None},
        bare_hypercorn={"cpu_us_per_req": 250.0},
    )
    del s["litellm"]
    got = peers.evaluate_targets(s, {"rate": 100.0, "open_streams": 200})
    by = {c["check"].split(",")[0]: c for c in got["checks"]}
    assert got["best_tera_all"] == "tera-all"
    assert by["CPU per streamed chunk"]["status"] == "missed"
    req = [c for c in got["checks"] if c["check"].startswith("CPU per non-streaming request")]
    assert [c["status"] for c in req] == ["missed", "met"]  # at the rate, at 32 connections
    hyper = by["tera-all on hypercorn no worse than bare-hypercorn"]
    assert hyper["status"] == "missed" and "CPU/request 300 µs vs 250 µs (worse)" in hyper["value"]
    assert by["added TTFT p50"]["status"] == "missed"
    assert by["CPU per request"]["status"] == "not measured"  # no LiteLLM in this run
    rss = by["RSS with 1"]
    assert rss["status"] == "not measured" and "only 200 streams" in rss["value"]


def test_headroom_and_markdown() -> None:
    rows = [
        {
            "round": 0,
            "scenario": "stream",
            "target": "direct",
            "mock_cpu_s": 0.5,
            "mock_cpu_util": 0.12,
            "load": {
                "requests_ok": 100,
                "output_tokens": 20000,
                "loadgen_cpu_util": 0.3,
                "config": {"stream": True},
            },
        }
    ]
    room = peers.headroom(rows)
    assert room["stream"]["mock_cpu_us_per_request"] == pytest.approx(5000)
    assert room["stream"]["mock_cpu_us_per_chunk"] == pytest.approx(25)
    summary = _summary()
    for s in summary.values():
        s["version"] = "v"
    summary["nginx"] = {"status": "unavailable", "detail": "not installed", "version": ""}
    meta = {
        "started": "now",
        "machine": "m",
        "rounds": 1,
        "seconds": 1,
        "rate": 100.0,
        "open_streams": 1000,
        "scenarios": {"stream": "--stream"},
    }
    doc = {"meta": meta, "summary": summary, "rows": rows, "headroom": room}
    doc["targets"] = peers.evaluate_targets(summary, meta)
    md = peers.markdown(doc)
    assert "## Targets (issue 7)" in md and "**met**" in md
    assert "| nginx | unavailable: not installed |" in md
    assert "used at most 12% of one core in any run: it is not the bottleneck" in md


def test_tera_features_reads_log_and_ledger(tmp_path: Path) -> None:
    t = peers.Target("tera-all", "tera", log_level="info", api_key="sk-tera-x")
    t.log = tmp_path / "server.log"
    t.log.write_text('{"event": "request"}\nnoise\n{"event": "request"}\n')
    t.state_dir = tmp_path / "state"
    t.state_dir.mkdir()
    con = sqlite3.connect(t.state_dir / "tera.db")
    con.execute("CREATE TABLE tera_ledger (x)")
    con.executemany("INSERT INTO tera_ledger VALUES (?)", [(1,), (2,), (3,)])
    con.commit()
    con.close()
    t.scrapes = 4
    f = peers.tera_features(t)
    assert (f["log_lines"], f["ledger_rows"], f["metrics_scrapes"], f["api_key"]) == (2, 3, 4, True)


def test_features_off_row_and_litellm_at_32_connections() -> None:
    s = _summary(
        tera_all={"cpu_us_per_req_max": 200.0},
        litellm={"cpu_us_per_req": 6000.0, "cpu_us_per_req_max": 3000.0},
    )
    got = peers.evaluate_targets(s, {"rate": 100.0, "open_streams": 1000})
    names = [c["check"] for c in got["checks"]]
    # Without tera-minimal in the run there is no features-off row.
    assert not any(n.startswith("tera-minimal") for n in names)
    s["tera-minimal"] = dict(s["bare-hypercorn"])  # the same figures as the bare peer
    got = peers.evaluate_targets(s, {"rate": 100.0, "open_streams": 1000})
    by = {c["check"]: c for c in got["checks"]}
    off = by["tera-minimal on hypercorn no worse than bare-hypercorn (features off; not a target)"]
    assert off["status"] == "met"
    on = by["tera-all on hypercorn no worse than bare-hypercorn"]
    assert on["status"] == "missed" and "CPU/request @32 200 µs vs 150 µs (worse)" in on["value"]
    ratio = next(c for c in got["checks"] if "LiteLLM" in c["check"])
    assert got["best_tera_all"] == "tera-all"
    assert ratio["value"].endswith("at 32 connections 15.0x (3000 µs vs 200 µs)"), ratio
