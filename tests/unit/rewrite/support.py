"""Running rewriters over recorded or synthetic upstream responses."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import (
    RequestFacts,
    RequestKind,
    Usage,
    facts_from_request,
    make_stream_rewriter,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm"


def request(name: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.request.json").read_bytes())
    return body


def facts_for(name: str, kind: RequestKind = "chat") -> RequestFacts:
    return facts_from_request(kind, request(name))


def sse_payloads(name: str) -> list[bytes]:
    """The JSON of each ``data:`` frame of a recorded stream, without ``[DONE]``."""
    raw = (FIXTURES / f"{name}.sse").read_bytes()
    frames = [f[len(b"data: ") :] for f in raw.split(b"\n\n") if f.startswith(b"data: ")]
    assert frames[-1] == b"[DONE]"
    return frames[:-1]


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes().strip()


def run_stream(
    profile: RewriteProfile, facts: RequestFacts, payloads: Iterable[bytes]
) -> tuple[list[bytes], Usage]:
    rewriter = make_stream_rewriter(profile, facts)
    out: list[bytes] = []
    for payload in payloads:
        out += rewriter.feed(payload)
    out += rewriter.finish()
    return out, rewriter.usage


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
