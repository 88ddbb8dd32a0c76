"""Row codecs and SQL shared by the SQLite and PostgreSQL backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from tera_proxy.accounting import LedgerRow, UsageTotal, from_picousd, to_picousd
from tera_proxy.keys import KeyLimits, KeyRecord

KEY_COLUMNS = (
    "id, name, prefix, models, max_concurrency, tokens_per_minute, requests_per_minute, "
    "created_at, revoked_at"
)
LEDGER_COLUMNS = (
    "request_id, key_id, model, replica, attempts, status, prompt_tokens, completion_tokens, "
    "reasoning_tokens, estimated, cost_picousd, ttft, duration, client_disconnected, created_at"
)
LEDGER_WIDTH = LEDGER_COLUMNS.count(",") + 1


def key_params(record: KeyRecord, digest: bytes) -> tuple[Any, ...]:
    """Values for KEY_COLUMNS followed by the digest."""
    limits = record.limits
    return (
        record.id,
        record.name,
        record.prefix,
        orjson.dumps(list(record.models)).decode(),
        limits.max_concurrency,
        limits.tokens_per_minute,
        limits.requests_per_minute,
        record.created_at,
        record.revoked_at,
        digest,
    )


def key_record(row: Sequence[Any]) -> KeyRecord:
    """A KeyRecord from the first nine values of a row in KEY_COLUMNS order."""
    return KeyRecord(
        id=row[0],
        name=row[1],
        prefix=row[2],
        models=tuple(orjson.loads(row[3])),
        limits=KeyLimits(row[4], row[5], row[6]),
        created_at=float(row[7]),
        revoked_at=None if row[8] is None else float(row[8]),
    )


def ledger_params(row: LedgerRow) -> tuple[Any, ...]:
    return (
        row.request_id,
        row.key_id,
        row.model,
        row.replica,
        row.attempts,
        row.status,
        row.prompt_tokens,
        row.completion_tokens,
        row.reasoning_tokens,
        row.estimated,
        to_picousd(row.cost_usd),
        row.ttft,
        row.duration,
        row.client_disconnected,
        row.created_at,
    )


def totals_query(
    since: float | None, key_id: str | None, placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        params.append(since)
        clauses.append(f"created_at >= {placeholder(len(params))}")
    if key_id is not None:
        params.append(key_id)
        clauses.append(f"key_id = {placeholder(len(params))}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        "SELECT key_id, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
        "COALESCE(SUM(reasoning_tokens), 0), SUM(cost_picousd) "
        f"FROM tera_ledger {where} GROUP BY key_id, model ORDER BY key_id, model"
    )
    return sql, params


def usage_total(row: Sequence[Any]) -> UsageTotal:
    return UsageTotal(
        key_id=row[0],
        model=row[1],
        requests=int(row[2]),
        prompt_tokens=int(row[3]),
        completion_tokens=int(row[4]),
        reasoning_tokens=int(row[5]),
        cost_usd=from_picousd(int(row[6])),
    )
