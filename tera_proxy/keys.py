"""API keys: generation, keyed hashing, records, and the cached store behind auth.

A key is ``sk-tera-`` plus 43 URL-safe random characters (256 bits). Only its
HMAC-SHA256 under a server secret is stored, with a short visible prefix so operators
can tell keys apart. A plain hash would let anyone holding a copy of the database test
guesses offline; the keyed hash needs the secret too.

The hot path never waits on the database for an unknown or known key: `KeyStore`
keeps every active key in memory, keyed by digest. At most once per
`refresh_interval` a lookup first asks the backend for its change counter (one cheap
query) and reloads the keys only when it moved, so a revocation made by any proxy takes
effect everywhere within `refresh_interval` plus one query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from tera_proxy.config import ConfigError, KeyStoreConfig

SECONDS = 1.0
KEY_PREFIX = "sk-tera-"
SECRET_BYTES = 32  # token_urlsafe(32) is 43 characters
VISIBLE_CHARS = 4  # random characters kept in the visible prefix
MIN_SERVER_SECRET = 32
REFRESH_INTERVAL = 0.5 * SECONDS
# The cache is indexed by the first half of a digest; the whole digest is then compared
# in constant time, so no timing depends on how much of a guess was right.
INDEX_BYTES = 16
# Accepts what `generate_secret` makes, with room for longer keys issued later.
_WELL_FORMED = re.compile(r"sk-tera-[A-Za-z0-9_-]{32,128}")

log = structlog.get_logger("tera_proxy.keys")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key limits; None means unlimited."""

    max_concurrency: int | None = None
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "tokens_per_minute", "requests_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    @property
    def unlimited(self) -> bool:
        return (
            self.max_concurrency is None
            and self.tokens_per_minute is None
            and self.requests_per_minute is None
        )


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known about a key; never its secret."""

    id: str
    name: str
    prefix: str
    models: tuple[str, ...]  # fnmatch globs over catalog model ids
    limits: KeyLimits
    created_at: float  # unix seconds
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created: the only moment its secret exists outside the client."""

    record: KeyRecord
    secret: str = field(repr=False)


class KeyBackend(Protocol):
    """Durable key storage (SQLite, PostgreSQL); see tera_proxy.store."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, record: KeyRecord, digest: bytes) -> None: ...

    async def records(self) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str, at: float) -> bool: ...

    async def version(self) -> int: ...

    async def active(self) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
        """The change counter and every unrevoked key with its digest, read together."""
        ...


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def visible_prefix(secret: str) -> str:
    return secret[: len(KEY_PREFIX) + VISIBLE_CHARS]


def well_formed(secret: str) -> bool:
    return _WELL_FORMED.fullmatch(secret) is not None


def key_digest(server_secret: bytes, secret: str) -> bytes:
    return hmac.digest(server_secret, secret.encode(), "sha256")


def server_secret(
    config: KeyStoreConfig,
    environ: Mapping[str, str] = os.environ,
    state_dir: Path | None = None,
) -> bytes:
    """The HMAC secret: config, else environment, else the state dir's secret file
    (created on first use, mode 0600); refuses a short one."""
    value = config.secret or environ.get(config.secret_env, "")
    if not value and state_dir is not None:
        value = _secret_file(state_dir / config.secret_file)
    if len(value) < MIN_SERVER_SECRET:
        raise ConfigError(
            f"keys.secret: set it, or the environment variable {config.secret_env}, "
            f"to at least {MIN_SERVER_SECRET} characters (e.g. `openssl rand -hex 32`)"
        )
    return value.encode()


def _secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_text().strip()


def check_new_key(name: str, models: Sequence[str]) -> None:
    if not name.strip() or len(name) > 200:
        raise ValueError("a key name must be 1 to 200 characters")
    if not models or any(not isinstance(m, str) or not m.strip() for m in models):
        raise ValueError("a key needs at least one non-empty model pattern")


class KeyStore:
    """Keys for the proxy: create, list, revoke, and `lookup` from an in-memory cache."""

    def __init__(
        self,
        backend: KeyBackend,
        secret: bytes,
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._backend = backend
        self._secret = secret
        # The HMAC keyed once; each lookup copies it (half the cost of hmac.digest).
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
        self._interval = refresh_interval
        self._clock = clock
        self._wall = wall
        self._cache: dict[bytes, tuple[bytes, KeyRecord]] = {}
        self._version = -1
        self._due = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<KeyStore {type(self._backend).__name__} keys={len(self._cache)}>"

    async def start(self) -> None:
        await self._backend.open()
        await self.refresh()

    async def stop(self) -> None:
        if self._refreshing is not None:
            await asyncio.gather(self._refreshing, return_exceptions=True)
        await self._backend.close()

    async def create(
        self,
        name: str,
        *,
        models: Sequence[str] = ("*",),
        limits: KeyLimits = KeyLimits(),
    ) -> NewKey:
        check_new_key(name, models)
        secret = generate_secret()
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            prefix=visible_prefix(secret),
            models=tuple(models),
            limits=limits,
            created_at=self._wall(),
        )
        digest = self._digest(secret)
        await self._backend.insert(record, digest)
        self._cache[digest[:INDEX_BYTES]] = (digest, record)
        log.info("key created", key_id=record.id, key_prefix=record.prefix, name=name)
        return NewKey(record, secret)

    def _digest(self, secret: str) -> bytes:
        """key_digest(server secret, secret), from the HMAC keyed once at start."""
        h = self._hmac.copy()
        h.update(secret.encode())
        return h.digest()

    async def list(self) -> list[KeyRecord]:
        return await self._backend.records()

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has this id."""
        revoked = await self._backend.revoke(key_id, self._wall())
        if revoked:
            self._cache = {i: e for i, e in self._cache.items() if e[1].id != key_id}
            log.info("key revoked", key_id=key_id)
        return revoked

    async def lookup(self, secret: str) -> KeyRecord | None:
        """The active key with this secret, or None; at most one cheap query per interval."""
        if not well_formed(secret):
            return None
        if self._clock() >= self._due:
            await self._refresh_once()
        digest = self._digest(secret)
        entry = self._cache.get(digest[:INDEX_BYTES])
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        return entry[1]

    async def refresh(self) -> None:
        """Reload the active keys if the backend's change counter moved."""
        started = self._clock()
        if await self._backend.version() != self._version:
            version, entries = await self._backend.active()
            self._cache = {d[:INDEX_BYTES]: (d, record) for d, record in entries}
            self._version = version
        self._due = started + self._interval

    async def _refresh_once(self) -> None:
        # Concurrent lookups share one refresh instead of each querying the database.
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_or_keep())
        await asyncio.shield(self._refreshing)

    async def _refresh_or_keep(self) -> None:
        started = self._clock()
        try:
            await self.refresh()
        except Exception as exc:
            # Availability over freshness: keep serving the last known keys and retry
            # after an interval; the failure is loud in the logs.
            self._due = started + self._interval
            log.warning("key refresh failed; serving cached keys", error=repr(exc))
