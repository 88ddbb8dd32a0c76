"""Where keys, the ledger and shared limits live, chosen by config.

SQLite (one file under the state directory) unless a PostgreSQL DSN is configured;
limits in process memory unless Redis is configured. Backends are imported only when
chosen, so asyncpg and redis are needed only by deployments that use them.
"""

from __future__ import annotations

from pathlib import Path

from tera_proxy.accounting import LedgerBackend
from tera_proxy.config import DatabaseConfig, LimitsConfig
from tera_proxy.keys import KeyBackend
from tera_proxy.limits import Limiter, MemoryLimiter


def _sqlite_file(db: DatabaseConfig, state_dir: Path) -> Path:
    return state_dir / db.sqlite_path


def key_backend(db: DatabaseConfig, state_dir: Path) -> KeyBackend:
    if db.postgres_dsn:
        from tera_proxy.store.postgres import PostgresKeys

        return PostgresKeys(db.postgres_dsn)
    from tera_proxy.store.sqlite import SqliteKeys

    return SqliteKeys(_sqlite_file(db, state_dir))


def ledger_backend(db: DatabaseConfig, state_dir: Path) -> LedgerBackend:
    if db.postgres_dsn:
        from tera_proxy.store.postgres import PostgresLedger

        return PostgresLedger(db.postgres_dsn)
    from tera_proxy.store.sqlite import SqliteLedger

    return SqliteLedger(_sqlite_file(db, state_dir))


def limiter(config: LimitsConfig) -> Limiter:
    if config.backend == "redis":
        from tera_proxy.store.redis import RedisLimiter

        return RedisLimiter(
            config.redis_url,
            prefix=config.redis_prefix,
            lease_ttl=config.lease_ttl,
            fail_open=config.fail_open,
        )
    return MemoryLimiter(lease_ttl=config.lease_ttl)
