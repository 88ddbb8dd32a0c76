"""structlog set-up: JSON lines when not on a terminal, readable columns on one."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog


def configure(level: str = "info", *, json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    raw = getattr(sys.stderr, "buffer", None)
    # JSON lines through orjson, written as bytes: the per-request log line is on the hot
    # path, and the stdlib encoder costs several times more.
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps if raw is not None else _dumps_str)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=(
            structlog.BytesLoggerFactory(raw)
            if json and raw is not None
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )


def _dumps(event: object, **_: object) -> bytes:
    return orjson.dumps(event, default=str)


def _dumps_str(event: object, **_: object) -> str:
    return orjson.dumps(event, default=str).decode()


_second: list[Any] = [-1, ""]


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ISO UTC stamp (2026-01-31T12:00:00.123456Z) with the date and time
    formatted once per second instead of once per line."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event["timestamp"] = f"{_second[1]}.{int((now - second) * 1e6):06d}Z"
    return event
