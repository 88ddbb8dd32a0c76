"""Helpers shared by the tenancy tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tera_proxy.accounting import LedgerBackend, LedgerRow
from tera_proxy.keys import KeyBackend
from tera_proxy.store.postgres import PostgresKeys, PostgresLedger
from tera_proxy.store.sqlite import SqliteKeys, SqliteLedger

SERVER_SECRET = b"s" * 32


class FakeClock:
    """A clock tests move by hand; nothing ever sleeps."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Database:
    """One database (a SQLite file or a PostgreSQL schema) that backends can open."""

    kind: str
    path: Path | None = None
    dsn: str = ""

    def keys(self) -> KeyBackend:
        return SqliteKeys(self.path) if self.path else PostgresKeys(self.dsn)

    def ledger(self) -> LedgerBackend:
        return SqliteLedger(self.path) if self.path else PostgresLedger(self.dsn)

    async def raw_rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of `table` as stored, bypassing the backends."""
        if self.path is not None:
            import aiosqlite

            async with aiosqlite.connect(self.path) as db:
                return [tuple(r) for r in await db.execute_fetchall(f"SELECT * FROM {table}")]
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(self.dsn)
        try:
            return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table}")]
        finally:
            await conn.close()


def ledger_row(
    n: int = 0,
    *,
    key_id: str = "key_a",
    model: str = "openai/gpt-oss-20b",
    prompt: int = 10,
    completion: int = 5,
    reasoning: int | None = None,
    cost: str = "0.000001",
    at: float = 1_000.0,
) -> LedgerRow:
    return LedgerRow(
        request_id=f"req_{n}",
        key_id=key_id,
        model=model,
        replica="r0",
        attempts=1,
        status=200,
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=reasoning,
        estimated=False,
        cost_usd=Decimal(cost),
        ttft=0.05,
        duration=0.5,
        client_disconnected=False,
        created_at=at,
    )
