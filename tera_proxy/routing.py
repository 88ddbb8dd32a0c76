"""Routing: the pure choice of a replica for one request.

`pick` sees frozen `Candidate` views of a model's replicas and a `RouteRequest`; it does
no I/O and mutates nothing, so it is tested without a network. `affinity_key` derives
the prefix-cache key a request is routed by.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_EPSILON = 0.25
DEFAULT_FLOOR = 4
PROMPT_PREFIX_CHARS = 1024
PROMPT_PREFIX_TOKENS = 256
# Hashing a 5 MB inline image for every request buys no better affinity than its start.
_AFFINITY_CAP = 64 * 1024


@dataclass(frozen=True, slots=True)
class Candidate:
    """What `pick` sees of a replica: a frozen view, no I/O, no mutation."""

    name: str
    load: int
    ready: bool = True
    kv_cache: float = 0.0


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What `pick` needs to know of a request."""

    affinity: bytes | None = None
    exclude: frozenset[str] = frozenset()  # replicas this request already tried
    epsilon: float = DEFAULT_EPSILON
    # Below this load (counting the request) a key never spills: at low load the prefix
    # cache is worth more than a perfectly even spread.
    floor: int = DEFAULT_FLOOR


def pick(snapshot: Sequence[Candidate], request: RouteRequest = RouteRequest()) -> str | None:
    """The replica for one request, or None when no candidate may take it.

    Only ready candidates the request has not tried qualify. Without an affinity key the
    least loaded wins. With one, candidates are ranked by rendezvous hashing of the key, so
    a key keeps landing on the same replica (and its prefix cache) while that replica's
    load, counting this request, stays within (1 + epsilon) times the mean (or `floor`,
    whichever is larger); past that the
    key spills to the next replica in its own ranking.
    """
    eligible = [c for c in snapshot if c.ready and c.name not in request.exclude]
    key = request.affinity
    if not eligible or key is None:
        return _least_loaded(eligible)
    total = sum(c.load for c in eligible) + 1
    # The guard keeps float noise from rounding an exact bound up by one.
    bound = max(request.floor, math.ceil((1 + request.epsilon) * total / len(eligible) - 1e-9))
    for c in sorted(eligible, key=lambda c: _rank(key, c.name), reverse=True):
        if c.load + 1 <= bound:
            return c.name
    return _least_loaded(eligible)  # unreachable: the least loaded is always within bound


def _least_loaded(candidates: Sequence[Candidate]) -> str | None:
    """Least load, then emptiest KV cache; remaining ties go to the first listed."""
    best = min(candidates, key=lambda c: (c.load, c.kv_cache), default=None)
    return best.name if best else None


def _rank(key: bytes, name: str) -> bytes:
    return hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()


def affinity_key(body: Mapping[str, Any]) -> bytes | None:
    """A key shared by requests that likely share a long prompt prefix, or None.

    Chat: the first system (or developer) message and the first user message, which
    identify a conversation across its turns. Completions: the prompt's first
    PROMPT_PREFIX_CHARS characters (or PROMPT_PREFIX_TOKENS token ids).
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = [
            _first_content(messages, ("system", "developer")),
            _first_content(messages, ("user",)),
        ]
        if parts == [None, None]:
            return None
        return _digest(*(orjson.dumps(p)[:_AFFINITY_CAP] for p in parts))
    prompt = body.get("prompt")
    while isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str) and prompt:
        return _digest(prompt[:PROMPT_PREFIX_CHARS].encode())
    if isinstance(prompt, list) and prompt:
        return _digest(orjson.dumps(prompt[:PROMPT_PREFIX_TOKENS]))
    return None


def _first_content(messages: list[Any], roles: tuple[str, ...]) -> Any:
    for m in messages:
        if isinstance(m, dict) and m.get("role") in roles:
            return m.get("content")
    return None


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.digest()
