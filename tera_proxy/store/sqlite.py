"""SQLite backends for keys and the ledger (aiosqlite: every query on its own thread).

The embedded default: one file under the state directory, in WAL mode so the proxy's
readers and the CLI's writers do not block each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite

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

_PRAGMAS = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA busy_timeout = 5000;
"""

KEY_SCHEMA = """
CREATE TABLE IF NOT EXISTS tera_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    models TEXT NOT NULL,
    max_concurrency INTEGER,
    tokens_per_minute INTEGER,
    requests_per_minute INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL,
    digest BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tera_key_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO tera_key_version (id, version) VALUES (1, 0);
"""

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS tera_ledger (
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    replica TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER,
    estimated INTEGER NOT NULL,
    cost_picousd INTEGER NOT NULL,
    ttft REAL,
    duration REAL NOT NULL,
    client_disconnected INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tera_ledger_created ON tera_ledger (created_at);
CREATE INDEX IF NOT EXISTS tera_ledger_key_created ON tera_ledger (key_id, created_at);
"""

_BUMP = "UPDATE tera_key_version SET version = version + 1 WHERE id = 1"


class _Sqlite:
    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self._schema = schema
        self._conn: aiosqlite.Connection | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    @property
    def db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._conn

    async def open(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit; writes open their own BEGIN IMMEDIATE.
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.executescript(_PRAGMAS + self._schema)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class SqliteKeys(_Sqlite):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, KEY_SCHEMA)

    async def insert(self, record: KeyRecord, digest: bytes) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            await self.db.execute(
                f"INSERT INTO tera_keys ({KEY_COLUMNS}, digest) VALUES ({', '.join('?' * 10)})",
                key_params(record, digest),
            )
            await self.db.execute(_BUMP)
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        await self.db.execute("COMMIT")

    async def records(self) -> list[KeyRecord]:
        rows = await self.db.execute_fetchall(
            f"SELECT {KEY_COLUMNS} FROM tera_keys ORDER BY created_at, id"
        )
        return [key_record(r) for r in rows]

    async def revoke(self, key_id: str, at: float) -> bool:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await self.db.execute(
                "UPDATE tera_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
            changed = cursor.rowcount > 0
            if changed:
                await self.db.execute(_BUMP)
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        await self.db.execute("COMMIT")
        return changed

    async def version(self) -> int:
        rows = list(await self.db.execute_fetchall("SELECT version FROM tera_key_version"))
        return int(rows[0][0])

    async def active(self) -> tuple[int, list[tuple[bytes, KeyRecord]]]:
        # One read transaction: the counter and the keys come from the same snapshot.
        await self.db.execute("BEGIN")
        try:
            version = await self.version()
            rows = await self.db.execute_fetchall(
                f"SELECT {KEY_COLUMNS}, digest FROM tera_keys WHERE revoked_at IS NULL"
            )
        finally:
            await self.db.execute("COMMIT")
        return version, [(bytes(r[9]), key_record(r)) for r in rows]


class SqliteLedger(_Sqlite):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, LEDGER_SCHEMA)

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            await self.db.executemany(
                f"INSERT INTO tera_ledger ({LEDGER_COLUMNS}) "
                f"VALUES ({', '.join('?' * LEDGER_WIDTH)})",
                # A generator: the parameters are built on the database thread.
                (ledger_params(r) for r in rows),
            )
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        await self.db.execute("COMMIT")

    async def totals(
        self, *, since: float | None = None, key_id: str | None = None
    ) -> list[UsageTotal]:
        sql, params = totals_query(since, key_id, lambda _: "?")
        return [usage_total(r) for r in await self.db.execute_fetchall(sql, params)]
