"""The JSON log lines: orjson-rendered, one per event, with structlog's ISO UTC stamp."""

from __future__ import annotations

import datetime as dt
import io
import re
import sys

import orjson
import pytest
import structlog

from tera_proxy import logs

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _configured(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    raw = io.BytesIO()
    # A text stderr over a bytes buffer, as a process's real stderr is.
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8"))
    logs.configure("info", json=True)
    return raw


def test_lines_are_json_with_an_iso_utc_stamp(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _configured(monkeypatch)
    try:
        log = structlog.get_logger("t")
        before = dt.datetime.now(dt.UTC)
        log.info("request", status=200, duration=0.5, cost_usd="0.1")
        log.debug("not at info")
        after = dt.datetime.now(dt.UTC)
    finally:
        structlog.reset_defaults()
    lines = raw.getvalue().splitlines()
    assert len(lines) == 1
    event = orjson.loads(lines[0])
    assert event["event"] == "request" and event["level"] == "info"
    assert event["status"] == 200 and event["cost_usd"] == "0.1"
    assert STAMP.match(event["timestamp"]), event["timestamp"]
    stamp = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert before - dt.timedelta(microseconds=1) <= stamp <= after


def test_the_stamp_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.25]
    monkeypatch.setattr(logs.time, "time", lambda: now[0])
    first = logs._timestamp(None, "info", {})["timestamp"]
    now[0] = 1_700_000_001.5
    second = logs._timestamp(None, "info", {})["timestamp"]
    assert first == "2023-11-14T22:13:20.250000Z"
    assert second == "2023-11-14T22:13:21.500000Z"


def test_objects_orjson_cannot_encode_are_written_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = _configured(monkeypatch)
    try:
        structlog.get_logger("t").info("odd", value=frozenset({3}))
    finally:
        structlog.reset_defaults()
    assert orjson.loads(raw.getvalue())["value"] == "frozenset({3})"
