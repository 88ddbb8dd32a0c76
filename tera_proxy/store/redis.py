"""The limiter on Redis: `tera_proxy.limits.decide` as two Lua scripts, so several
proxies admit against one set of buckets atomically.

Per key, a hash holds the two bucket levels and when they were last written
(`rl`/`rt` for requests, `tl`/`tt` for tokens) and a sorted set holds the admission
tickets scored by lease expiry. Both share a hash tag, so they live in one cluster slot.
The time comes from the proxy (`clock`, wall time), which keeps the semantics testable
with an injected clock; proxies' clocks need only be NTP-close.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from tera_proxy.errors import ServiceUnavailable
from tera_proxy.keys import KeyLimits
from tera_proxy.limits import (
    CONCURRENCY_RETRY_AFTER,
    DEFAULT_LEASE,
    SLACK,
    UNLIMITED,
    WINDOW,
    Admission,
    Clock,
    LimitExceeded,
    LimitKind,
    Verdict,
    rate_status,
)

log = structlog.get_logger("tera_proxy.limits")
WARN_EVERY = 10.0  # seconds between two "Redis unreachable" log lines

_COMMON = f"""
local window = {WINDOW!r}
local slack = {SLACK!r}
local now = tonumber(ARGV[1])
local function fmt(x) return string.format('%.17g', x) end
local function level(cap, lvl, at)
  if cap < 0 then return 0 end
  if not lvl then return cap end
  local l = tonumber(lvl) + math.max(0, now - tonumber(at)) * cap / window
  if l > cap then return cap end
  return l
end
local function keep(cap, lvl, ttl)
  if cap < 0 then return ttl end
  return math.max(ttl, (cap - lvl) * window / cap)
end
"""

# ARGV: now, rpm, tpm, max_concurrency, tokens, ticket, lease (-1: no limit)
ADMIT = (
    _COMMON
    + f"""
local rpm, tpm, maxc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
local req, tok = level(rpm, h[1], h[2]), level(tpm, h[3], h[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[2])
local reserve = math.max(0, tonumber(ARGV[5]))
if tpm >= 0 and reserve > tpm then reserve = tpm end
local kind, wait = '', 0
if maxc >= 0 and inflight >= maxc then kind, wait = 'concurrency', {CONCURRENCY_RETRY_AFTER!r} end
if rpm >= 0 and req + slack < 1 then
  if kind == '' then kind = 'requests' end
  wait = math.max(wait, (1 - req) * window / rpm)
end
if tpm >= 0 and tok + slack < reserve then
  if kind == '' then kind = 'tokens' end
  wait = math.max(wait, (reserve - tok) * window / tpm)
end
if kind ~= '' then return {{0, kind, fmt(wait), fmt(req), fmt(tok), 0}} end
req, tok = req - 1, tok - reserve
if rpm >= 0 then redis.call('HSET', KEYS[1], 'rl', fmt(req), 'rt', ARGV[1]) end
if tpm >= 0 then redis.call('HSET', KEYS[1], 'tl', fmt(tok), 'tt', ARGV[1]) end
local ttl = keep(tpm, tok, keep(rpm, req, 1))
redis.call('PEXPIRE', KEYS[1], math.ceil((ttl + 1) * 1000))
local lease = tonumber(ARGV[7])
redis.call('ZADD', KEYS[2], now + lease, ARGV[6])
redis.call('PEXPIRE', KEYS[2], math.ceil((lease + 1) * 1000))
return {{1, '', '0', fmt(req), fmt(tok), reserve}}
"""
)

# ARGV: now, tpm, ticket, refund (reserved - used). Returns 1 if the ticket was open.
SETTLE = (
    _COMMON
    + """
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not expiry then return 0 end
redis.call('ZREM', KEYS[2], ARGV[3])
local tpm = tonumber(ARGV[2])
if tonumber(expiry) <= now or tpm < 0 then return 1 end
local h = redis.call('HMGET', KEYS[1], 'tl', 'tt')
local tok = math.min(tpm, level(tpm, h[1], h[2]) + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'tl', fmt(tok), 'tt', ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil((keep(tpm, tok, 1) + 1) * 1000))
return 1
"""
)


def _arg(limit: int | None) -> int:
    return -1 if limit is None else limit


class RedisLimiter:
    """Limits shared by every proxy pointed at the same Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tera:rl:",
        lease_ttl: float = DEFAULT_LEASE,
        fail_open: bool = True,
        clock: Clock = time.time,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._lease = lease_ttl
        self._fail_open = fail_open
        self._clock = clock
        self._redis: aioredis.Redis | None = None
        self._scripts: tuple[Any, Any] | None = None
        self._warned_at = -float("inf")

    def __repr__(self) -> str:
        return f"<RedisLimiter prefix={self._prefix!r}>"

    async def start(self) -> None:
        client = aioredis.Redis.from_url(self._url, decode_responses=True)
        self._redis = client
        self._scripts = (client.register_script(ADMIT), client.register_script(SETTLE))
        try:
            await client.ping()
        except RedisError as exc:
            if not self._fail_open:
                raise
            self._warn("redis unreachable at start; admitting without limits", exc)

    async def stop(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _keys(self, key_id: str) -> list[str]:
        base = f"{self._prefix}{{{key_id}}}"
        return [base, base + ":t"]

    async def admit(self, key_id: str, limits: KeyLimits, tokens: int) -> Admission:
        if limits.unlimited:
            return Admission(key_id, "", 0, limits, UNLIMITED)
        if self._scripts is None:
            raise RuntimeError(f"{self!r} was not started")
        ticket = secrets.token_hex(8)
        args = [
            repr(self._clock()),
            _arg(limits.requests_per_minute),
            _arg(limits.tokens_per_minute),
            _arg(limits.max_concurrency),
            tokens,
            ticket,
            repr(self._lease),
        ]
        try:
            ok, kind, wait, req, tok, reserved = await self._scripts[0](
                keys=self._keys(key_id), args=args
            )
        except RedisError as exc:
            return self._unreachable(key_id, limits, exc)
        if not ok:
            verdict = Verdict(False, LimitKind(kind), float(wait), float(req), float(tok), 0)
            raise LimitExceeded(verdict, limits)
        rate = rate_status(limits, float(req), float(tok))
        return Admission(key_id, ticket, int(reserved), limits, rate)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        if not admission.ticket:
            return
        if self._scripts is None:
            raise RuntimeError(f"{self!r} was not started")
        refund = admission.reserved - max(0, used_tokens)
        args = [
            repr(self._clock()),
            _arg(admission.limits.tokens_per_minute),
            admission.ticket,
            refund,
        ]
        try:
            await self._scripts[1](keys=self._keys(admission.key_id), args=args)
        except RedisError as exc:
            # The ticket's lease frees its concurrency slot later; only the refund is lost.
            self._warn("redis unreachable; a settlement was skipped", exc)

    def _unreachable(self, key_id: str, limits: KeyLimits, exc: RedisError) -> Admission:
        if not self._fail_open:
            raise ServiceUnavailable("Rate limiting is temporarily unavailable.") from exc
        self._warn("redis unreachable; admitting without limits", exc)
        return Admission(key_id, "", 0, limits, UNLIMITED)

    def _warn(self, message: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(message, error=repr(exc))
