"""Usage to cost, and the ledger: one row per request, written in batches.

Costs are exact: prices are decimals per million tokens and a cost is a `Decimal`.
The ledger stores it as an integer number of pico-dollars (1e-12 USD), which is exact
for any price with at most six decimal places per million tokens and sums exactly in
SQL. Reasoning tokens are output: they are part of `completion_tokens` (see
`tera_proxy.rewrite.usage.Usage`) and billed at the output price.

`Ledger.record` only appends to a list; a background task hands full batches to the
backend (aiosqlite runs them on its own thread, asyncpg pipelines them) and `stop`
writes whatever is left, so no row is lost on a clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol

import structlog

from tera_proxy.config import LedgerConfig, ModelConfig
from tera_proxy.rewrite.usage import Usage

SECONDS = 1.0
PICO = 12  # the ledger counts cost in 10**-12 USD
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

log = structlog.get_logger("tera_proxy.accounting")


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens."""

    input: Decimal
    output: Decimal

    @classmethod
    def of(cls, model: ModelConfig) -> Prices:
        # str() of a float is its shortest round-trip form: 0.07 -> "0.07", exactly.
        return cls(
            Decimal(str(model.input_price_per_million)),
            Decimal(str(model.output_price_per_million)),
        )


def cost_usd(prices: Prices, usage: Usage) -> Decimal:
    """Exact cost of a response; completion tokens (reasoning included) are output."""
    micro = usage.prompt_tokens * prices.input + usage.completion_tokens * prices.output
    return micro.scaleb(-6)


def to_picousd(cost: Decimal) -> int:
    return int(cost.scaleb(PICO).to_integral_value(ROUND_HALF_EVEN))


def from_picousd(value: int) -> Decimal:
    return Decimal(value).scaleb(-PICO)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    request_id: str
    key_id: str
    model: str
    replica: str  # the replica of the last attempt; "" when none was tried
    attempts: int
    status: int  # HTTP status the client got
    prompt_tokens: int
    completion_tokens: int  # includes reasoning tokens
    reasoning_tokens: int | None
    estimated: bool  # token counts estimated by the proxy, not reported by the replica
    cost_usd: Decimal
    ttft: float | None  # seconds to the first token; None without one
    duration: float  # seconds
    client_disconnected: bool
    created_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """One line of `tera-proxy usage`: a key's use of a model."""

    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal


class LedgerBackend(Protocol):
    """Durable ledger storage (SQLite, PostgreSQL); see tera_proxy.store."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, rows: Sequence[LedgerRow]) -> None: ...

    async def totals(
        self, *, since: float | None = None, key_id: str | None = None
    ) -> list[UsageTotal]:
        """Sums per (key, model) of rows created at or after `since`, ordered."""
        ...


class Ledger:
    """Queues ledger rows and writes them in batches off the request path."""

    def __init__(self, backend: LedgerBackend, config: LedgerConfig | None = None) -> None:
        self._backend = backend
        self._config = config or LedgerConfig()
        self._pending: list[LedgerRow] = []
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Ledger pending={len(self._pending)} written={self.written}>"

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, row: LedgerRow) -> None:
        """Queue a row; never blocks and never touches the database."""
        if len(self._pending) >= self._config.max_pending:
            self.dropped += 1
            return
        self._pending.append(row)
        if len(self._pending) >= self._config.batch_size:
            self._full.set()

    async def start(self) -> None:
        await self._backend.open()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        """Write every queued row, then close the backend."""
        self._closing = True
        self._full.set()
        if self._task is not None:
            await self._task
        try:
            await self._flush()
        finally:
            if self._pending:
                log.error("ledger rows lost at shutdown", rows=len(self._pending))
            await self._backend.close()

    async def totals(
        self, *, since: float | None = None, key_id: str | None = None
    ) -> list[UsageTotal]:
        return await self._backend.totals(since=since, key_id=key_id)

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._config.flush_interval)
            self._full.clear()
            try:
                await self._flush()
            except Exception as exc:
                # The rows stay queued; the next interval tries again.
                log.warning(
                    "ledger write failed",
                    error=repr(exc),
                    pending=len(self._pending),
                    dropped=self.dropped,
                )

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._config.batch_size]
            await self._backend.write(batch)
            # Rows recorded while the write ran were appended after the batch.
            del self._pending[: len(batch)]
            self.written += len(batch)


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from a duration ago (`30m`, `24h`, `7d`, `2w`) or an ISO date/time (UTC
    if it has no offset)."""
    now = time.time() if now is None else now
    match = _DURATION.fullmatch(text.strip().lower())
    if match is not None:
        return now - int(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration like 24h or 7d, or an ISO date"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


_HEADER = ("KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "REASONING", "COST_USD")
_COST_PLACES = Decimal("0.0000001")


def format_usage(totals: Sequence[UsageTotal], names: Mapping[str, str] | None = None) -> str:
    """A fixed-width table of `totals` with a TOTAL line; key names shown when known."""
    names = names or {}
    lines = [_usage_cells(t, names) for t in totals]
    lines.append(_usage_cells(_sum_totals(totals), {}))
    widths = [max(len(row[i]) for row in [_HEADER, *lines]) for i in range(len(_HEADER))]
    return "\n".join(_usage_line(r, widths) for r in [_HEADER, *lines])


def _usage_line(cells: tuple[str, ...], widths: list[int]) -> str:
    # Key and model left-aligned, numbers right-aligned.
    padded = [
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(padded).rstrip()


def _usage_cells(t: UsageTotal, names: Mapping[str, str]) -> tuple[str, ...]:
    key = f"{t.key_id} ({names[t.key_id]})" if t.key_id in names else t.key_id
    return (
        key,
        t.model,
        str(t.requests),
        str(t.prompt_tokens),
        str(t.completion_tokens),
        str(t.reasoning_tokens),
        format(t.cost_usd.quantize(_COST_PLACES, ROUND_HALF_EVEN), "f"),
    )


def _sum_totals(totals: Sequence[UsageTotal]) -> UsageTotal:
    return UsageTotal(
        key_id="TOTAL",
        model="",
        requests=sum(t.requests for t in totals),
        prompt_tokens=sum(t.prompt_tokens for t in totals),
        completion_tokens=sum(t.completion_tokens for t in totals),
        reasoning_tokens=sum(t.reasoning_tokens for t in totals),
        cost_usd=sum((t.cost_usd for t in totals), Decimal(0)),
    )
