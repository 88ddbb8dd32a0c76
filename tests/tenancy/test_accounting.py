"""Exact costs, the batched ledger writer on both databases, and usage totals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import pytest

from tera_proxy.accounting import (
    Ledger,
    LedgerBackend,
    LedgerConfig,
    LedgerRow,
    Prices,
    UsageTotal,
    cost_usd,
    format_usage,
    from_picousd,
    parse_since,
    to_picousd,
)
from tera_proxy.config import ModelConfig
from tera_proxy.rewrite.usage import Usage
from tests.tenancy.support import Database, ledger_row


@pytest.fixture
async def backend(database: Database) -> AsyncIterator[LedgerBackend]:
    """An open ledger backend, closed at teardown even if the test fails."""
    opened = database.ledger()
    await opened.open()
    yield opened
    await opened.close()


GPT_OSS_20B = Prices(Decimal("0.07"), Decimal("0.25"))
GPT_OSS_120B = Prices(Decimal("0.09"), Decimal("0.36"))


class Recording:
    """A LedgerBackend in memory that can fail on demand and wakes waiters on writes."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[LedgerRow]] = []
        self.failures = failures
        self.wrote = asyncio.Event()
        self.closed = False

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("database unreachable")
        self.batches.append(list(rows))
        self.wrote.set()

    async def totals(
        self, *, since: float | None = None, key_id: str | None = None
    ) -> list[UsageTotal]:
        return []

    @property
    def rows(self) -> list[LedgerRow]:
        return [r for batch in self.batches for r in batch]


@pytest.mark.parametrize(
    ("prices", "prompt", "completion", "expected"),
    [
        (GPT_OSS_20B, 700, 0, "0.000049"),
        (GPT_OSS_20B, 0, 400, "0.0001"),
        (GPT_OSS_20B, 1000, 600, "0.00022"),
        (GPT_OSS_120B, 1000, 600, "0.000306"),
    ],
)
def test_cost_matches_the_published_examples(
    prices: Prices, prompt: int, completion: int, expected: str
) -> None:
    """The seeds' worked examples come out exactly, as decimals."""
    assert cost_usd(prices, Usage(prompt, completion)) == Decimal(expected)


def test_reasoning_tokens_are_billed_as_output() -> None:
    """Reasoning tokens, part of completion_tokens, are charged at the output price."""
    usage = Usage(prompt_tokens=0, completion_tokens=400, reasoning_tokens=300)
    assert cost_usd(GPT_OSS_20B, usage) == 400 * Decimal("0.25") / 1_000_000


def test_prices_from_config_floats_are_exact() -> None:
    """Float prices from TOML become the decimals they were written as."""
    model = ModelConfig("m", 8192, 1024, 0.07, 0.25, ("r",))
    assert Prices.of(model) == GPT_OSS_20B
    assert cost_usd(Prices.of(model), Usage(3, 0)) == Decimal("0.00000021")


def test_many_small_costs_sum_exactly() -> None:
    """A million one-token costs sum to exactly the million-token price."""
    one = cost_usd(GPT_OSS_20B, Usage(1, 0))
    assert from_picousd(to_picousd(one) * 1_000_000) == Decimal("0.07")


async def test_ledger_writes_in_batches() -> None:
    """1,000 rows reach the backend in a few batches, none larger than batch_size."""
    backend = Recording()
    ledger = Ledger(backend, LedgerConfig(batch_size=300, flush_interval=60))
    await ledger.start()
    for n in range(1000):
        ledger.record(ledger_row(n))
    await ledger.stop()
    assert [len(b) for b in backend.batches] == [300, 300, 300, 100]
    assert [r.request_id for r in backend.rows] == [f"req_{n}" for n in range(1000)]


async def test_ledger_flushes_after_the_interval() -> None:
    """A lone row is written within flush_interval, without waiting for a full batch."""
    backend = Recording()
    ledger = Ledger(backend, LedgerConfig(batch_size=500, flush_interval=0.01))
    await ledger.start()
    ledger.record(ledger_row())
    await asyncio.wait_for(backend.wrote.wait(), 5)
    assert ledger.written == 1
    await ledger.stop()


async def test_failed_write_is_retried() -> None:
    """Rows survive a failed write and are written on a later attempt."""
    backend = Recording(failures=2)
    ledger = Ledger(backend, LedgerConfig(batch_size=10, flush_interval=0.01))
    await ledger.start()
    for n in range(25):
        ledger.record(ledger_row(n))
    await asyncio.wait_for(backend.wrote.wait(), 5)
    await ledger.stop()
    assert sorted(r.request_id for r in backend.rows) == sorted(f"req_{n}" for n in range(25))


async def test_pending_rows_are_bounded() -> None:
    """With the database away, rows beyond max_pending are dropped and counted."""
    backend = Recording()
    ledger = Ledger(backend, LedgerConfig(batch_size=100, max_pending=5))
    for n in range(8):
        ledger.record(ledger_row(n))
    assert (ledger.pending, ledger.dropped) == (5, 3)


async def test_stop_closes_the_backend() -> None:
    """stop() writes what is left and then closes the backend."""
    backend = Recording()
    ledger = Ledger(backend)
    await ledger.start()
    ledger.record(ledger_row())
    await ledger.stop()
    assert backend.closed and len(backend.rows) == 1


async def test_stop_loses_no_row(database: Database, backend: LedgerBackend) -> None:
    """1,000 rows recorded then stop(): all 1,000 are in the database."""
    ledger = Ledger(backend, LedgerConfig(batch_size=128, flush_interval=60))
    await ledger.start()
    for n in range(1000):
        ledger.record(ledger_row(n))
    await ledger.stop()
    rows = await database.raw_rows("tera_ledger")
    assert len(rows) == 1000


async def test_rows_round_trip_through_the_database(
    database: Database, backend: LedgerBackend
) -> None:
    """Every column of a ledger row is stored, cost exactly, reasoning and ttft nullable."""
    await backend.write([ledger_row(1, reasoning=4, cost="0.00000021"), ledger_row(2)])
    rows = sorted(await database.raw_rows("tera_ledger"), key=lambda r: str(r))
    flat = [v for r in rows for v in r]
    assert "req_1" in flat and "r0" in flat
    assert 210_000 in flat  # 0.00000021 USD in pico-dollars
    assert 4 in flat and None in flat


async def test_totals_per_key_and_model_since(backend: LedgerBackend) -> None:
    """totals() sums requests, tokens and exact cost per (key, model) since a time."""
    rows = [
        ledger_row(1, key_id="key_a", model="m1", prompt=100, completion=10, cost="0.1", at=10),
        ledger_row(2, key_id="key_a", model="m1", prompt=1, completion=2, reasoning=1,
                   cost="0.0000001", at=20),
        ledger_row(3, key_id="key_a", model="m2", prompt=5, completion=5, cost="0.2", at=30),
        ledger_row(4, key_id="key_b", model="m1", prompt=7, completion=7, cost="0.3", at=40),
    ]  # fmt: skip
    await backend.write(rows)
    everything = await backend.totals()
    recent = await backend.totals(since=20, key_id="key_a")
    assert [(t.key_id, t.model, t.requests) for t in everything] == [
        ("key_a", "m1", 2), ("key_a", "m2", 1), ("key_b", "m1", 1)
    ]  # fmt: skip
    assert everything[0] == UsageTotal("key_a", "m1", 2, 101, 12, 1, Decimal("0.1000001"))
    assert [(t.model, t.cost_usd) for t in recent] == [
        ("m1", Decimal("0.0000001")), ("m2", Decimal("0.2"))
    ]  # fmt: skip


def test_usage_table_format() -> None:
    """The usage table has a header, one line per total, key names, and a TOTAL line."""
    totals = [
        UsageTotal("key_a", "openai/gpt-oss-20b", 3, 2100, 1800, 1200, Decimal("0.000597")),
        UsageTotal("key_b", "Qwen/Qwen3-8B", 1, 10, 5, 0, Decimal("0.0000019")),
    ]
    text = format_usage(totals, {"key_a": "team-a"})
    lines = text.splitlines()
    assert lines[0].split() == [
        "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "REASONING", "COST_USD"
    ]  # fmt: skip
    assert lines[1].split() == [
        "key_a", "(team-a)", "openai/gpt-oss-20b", "3", "2100", "1800", "1200", "0.0005970"
    ]  # fmt: skip
    assert lines[2].split()[0] == "key_b"
    assert lines[3].split() == ["TOTAL", "4", "2110", "1805", "1200", "0.0005989"]
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", 1_000_000.0 - 86_400),
        ("7d", 1_000_000.0 - 604_800),
        ("90m", 1_000_000.0 - 5_400),
        ("1970-01-02", 86_400.0),
        ("1970-01-01T01:00:00+01:00", 0.0),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    """--since takes a duration ago or an ISO date/time, UTC unless an offset is given."""
    assert parse_since(text, now=1_000_000.0) == expected


def test_parse_since_rejects_nonsense() -> None:
    """An unreadable --since is a ValueError naming the accepted forms."""
    with pytest.raises(ValueError, match="24h or 7d"):
        parse_since("yesterday-ish")
