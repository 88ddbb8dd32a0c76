"""PostgreSQL backends for keys and the ledger (asyncpg), for several proxies sharing
one database. Tables are created on open under an advisory lock, so proxies starting
together do not race on CREATE TABLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from tera_proxy.accounting import LedgerRow, UsageTotal
from tera_proxy.keys import KeyRecord
from tera_proxy.store.rows import (
    KEY_COLUMNS,
    LEDGER_COLUMNS,
    LEDGER_WIDTH,
    key_params,
    key_record,
    ledger_params,
    totals_query,
    usage_total,
)

_SCHEMA_LOCK = 0x7E7A_0006  # any constant shared by every proxy

KEY_SCHEMA = """
CREATE TABLE IF NOT EXISTS tera_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    models TEXT NOT NULL,
    max_concurrency INTEGER,
    tokens_per_minute INTEGER,
    requests_per_minute INTEGER,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    digest BYTEA NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tera_key_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO tera_key_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
"""

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS tera_ledger (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    replica TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER,
    estimated BOOLEAN NOT NULL,
    cost_picousd BIGINT NOT NULL,
    ttft DOUBLE PRECISION,
    duration DOUBLE PRECISION NOT NULL,
    client_disconnected BOOLEAN NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS tera_ledger_created ON tera_ledger (created_at);
CREATE INDEX IF NOT EXISTS tera_ledger_key_created ON tera_ledger (key_id, created_at);
"""

_BUMP = "UPDATE tera_key_version SET version = version + 1 WHERE id = 1"


def _placeholders(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


class _Postgres:
    def __init__(self, dsn: str, schema: str, *, max_size: int = 4) -> None:
        self._dsn = dsn
        self._schema = schema
        self._max_size = max_size
        self._pool: Any = None

    def __repr__(self) -> str:
        # The DSN may carry a password.
        return f"<{type(self).__name__}>"

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._pool

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max_size)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(self._schema)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PostgresKeys(_Postgres):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, KEY_SCHEMA, max_size=2)

    async def insert(self, record: KeyRecord, digest: bytes) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO tera_keys ({KEY_COLUMNS}, digest) VALUES ({_placeholders(10)})",
                *key_params(record, digest),
            )
            await conn.execute(_BUMP)

    async def records(self) -> list[KeyRecord]:
        rows = await self.pool.fetch(f"SELECT {KEY_COLUMNS} FROM tera_keys ORDER BY created_at, id")
        return [key_record(r) for r in rows]

    async def revoke(self, key_id: str, at: float) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE tera_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                at,
                key_id,
            )
            changed: bool = status != "UPDATE 0"
            if changed:
                await conn.execute(_BUMP)
        return changed

    async def version(self) -> int:
        return int(await self.pool.fetchval("SELECT version FROM tera_key_version"))

    async def active(self) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            version = await conn.fetchval("SELECT version FROM tera_key_version")
            rows = await conn.fetch(
                f"SELECT {KEY_COLUMNS}, digest FROM tera_keys WHERE revoked_at IS NULL"
            )
        return int(version), [(bytes(r[9]), key_record(r)) for r in rows]


class PostgresLedger(_Postgres):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, LEDGER_SCHEMA, max_size=2)

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        async with self.pool.acquire() as conn:
            await conn.executemany(
                f"INSERT INTO tera_ledger ({LEDGER_COLUMNS}) "
                f"VALUES ({_placeholders(LEDGER_WIDTH)})",
                [ledger_params(r) for r in rows],
            )

    async def totals(
        self, *, since: float | None = None, key_id: str | None = None
    ) -> list[UsageTotal]:
        sql, params = totals_query(since, key_id, lambda i: f"${i}")
        return [usage_total(r) for r in await self.pool.fetch(sql, *params)]
