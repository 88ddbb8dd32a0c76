"""The ledger end to end: one row per request, to the token and to the pico-dollar.

The official openai client drives the proxy on Hypercorn (or the real CLI in a
subprocess) in front of simulator replicas; rows are read from the SQLite file after the
proxy has stopped, and compared with what the simulators generated."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from tera_proxy.accounting import from_picousd
from tera_proxy.store.sqlite import SqliteLedger
from tests.tenancy.e2e_support import (
    BIG,
    MODEL,
    PRICES,
    TOOLS,
    USER,
    chats,
    config_dict,
    cost_of,
    create_key,
    ledger_rows,
    make_client,
    picousd,
    proxy_process,
    start_sims,
    tenant,
)

VARIANTS = ("reasoning", "no_reasoning", "tools", "cut")


@dataclass(frozen=True)
class Answer:
    """What the client got: the request id it can quote, and the usage it was billed."""

    request_id: str
    model: str
    prompt: int
    completion: int
    reasoning: int | None
    finish: str | None = None


def request_options(variant: str) -> dict[str, Any]:
    if variant == "no_reasoning":
        return {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}
    if variant == "tools":
        return {"tools": TOOLS}
    if variant == "cut":
        return {"max_tokens": 5}  # cut inside the reasoning
    return {}


async def ask(client: openai.AsyncOpenAI, model: str, stream: bool, variant: str) -> Answer:
    """One chat completion, streamed or not, with the usage the client saw."""
    options: dict[str, Any] = {"max_tokens": 64, **request_options(variant)}
    api = client.chat.completions.with_raw_response
    if stream:
        raw = await api.create(
            model=model, messages=USER, stream=True, stream_options={"include_usage": True},
            **options,
        )  # fmt: skip
        usage, finish = None, None
        async for chunk in raw.parse():
            usage = chunk.usage or usage
            finish = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish)
    else:
        raw = await api.create(model=model, messages=USER, **options)
        usage, finish = raw.parse().usage, raw.parse().choices[0].finish_reason
    assert usage is not None
    details = usage.completion_tokens_details
    reasoning = details.reasoning_tokens if details is not None else None
    request_id = raw.headers["x-tera-request-id"]
    return Answer(
        request_id, model, usage.prompt_tokens, usage.completion_tokens, reasoning, finish
    )


def sim_totals(sims: list[Any]) -> tuple[int, int]:
    """Prompt and generated tokens the simulators counted, all requests."""
    return (
        sum(s.stats.prompt_tokens_total for s in sims),
        sum(s.stats.generation_tokens_total for s in sims),
    )


@dataclass
class Mixed:
    answers: list[Answer]
    rows: list[dict[str, Any]]
    simulated: tuple[int, int]  # prompt and generated tokens of these requests
    db: Path


@pytest.fixture
async def mixed(tmp_path: Path) -> Mixed:
    """16 concurrent mixed requests (2 models, streamed or not, reasoning, tools, cut)."""
    async with tenant(tmp_path) as t:
        before = sim_totals(t.sims)  # the prober's warm-ups
        cases = itertools.product((MODEL, BIG), (False, True), VARIANTS)
        answers = list(await asyncio.gather(*(ask(t.client, *case) for case in cases)))
        await t.settled.wait(len(answers))
        after = sim_totals(t.sims)
        db = t.db
    rows = await ledger_rows(db)
    simulated = (after[0] - before[0], after[1] - before[1])
    return Mixed(answers, rows, simulated, db)


async def test_rows_equal_simulated_usage_to_the_token(mixed: Mixed) -> None:
    """One row per request with the client's usage; sums equal the simulators' counts."""
    by_id = {r["request_id"]: r for r in mixed.rows}
    assert len(mixed.rows) == len(mixed.answers) == len(by_id)
    for a in mixed.answers:
        row = by_id[a.request_id]
        assert (row["model"], row["status"], row["attempts"]) == (a.model, 200, 1)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (a.prompt, a.completion)
        assert row["reasoning_tokens"] == a.reasoning
        assert row["estimated"] == 0
    assert sum(r["prompt_tokens"] for r in mixed.rows) == mixed.simulated[0]
    assert sum(r["completion_tokens"] for r in mixed.rows) == mixed.simulated[1]
    assert any(a.reasoning for a in mixed.answers)  # reasoning billed inside completion
    assert any(not a.reasoning for a in mixed.answers)
    assert {a.finish for a in mixed.answers} == {"stop", "length", "tool_calls"}


async def test_costs_are_the_prices_applied_exactly(mixed: Mixed) -> None:
    """Row costs and per-model totals are the seeds' prices applied exactly (Decimal)."""
    expected: dict[str, Decimal] = dict.fromkeys(PRICES, Decimal(0))
    for row in mixed.rows:
        cost = cost_of(row["model"], row["prompt_tokens"], row["completion_tokens"])
        assert row["cost_picousd"] == picousd(cost)
        expected[row["model"]] += cost
    backend = SqliteLedger(mixed.db)
    await backend.open()
    try:
        totals = await backend.totals()
    finally:
        await backend.close()
    assert {t.model: t.cost_usd for t in totals} == expected
    assert sum(from_picousd(r["cost_picousd"]) for r in mixed.rows) == sum(expected.values())


async def test_retried_request_is_one_row_with_two_attempts(tmp_path: Path) -> None:
    """A request retried after a replica's 500 is one row with attempts=2."""
    async with tenant(tmp_path) as t:
        await ask(t.client, MODEL, False, "reasoning")  # finds the prompt's replica
        first = next(i for i, s in enumerate(t.sims) if chats([s]))
        t.sims[first].faults.fail_next = 1
        answer = await ask(t.client, MODEL, False, "reasoning")
        assert t.sims[first].stats.injected_errors_total == 1
        await t.settled.wait(2)
        db = t.db
    rows = [r for r in await ledger_rows(db) if r["request_id"] == answer.request_id]
    assert len(rows) == 1
    row = rows[0]
    assert (row["attempts"], row["status"], row["replica"]) == (2, 200, f"r{1 - first}")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.prompt, answer.completion)


async def test_client_disconnect_is_one_row_with_tokens_so_far(tmp_path: Path) -> None:
    """A client leaving mid-stream is one row, client_disconnected, tokens so far."""
    max_tokens = 400
    sim = {"token_delay": 0.02, "output_tokens": max_tokens}
    async with tenant(tmp_path, replicas=1, sim=sim) as t:
        sim_server = t.sims[0]
        generated_before = sim_server.stats.generation_tokens_total
        raw = await t.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=USER, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        stream = raw.parse()
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 12:
                break
        await stream.close()
        await sim_server.wait_for(lambda s: s.aborted_total == 1)
        await t.settled.wait(1)
        generated = sim_server.stats.generation_tokens_total - generated_before
        db = t.db
    rows = await ledger_rows(db)
    assert [r["request_id"] for r in rows] == [raw.headers["x-tera-request-id"]]
    row = rows[0]
    assert row["client_disconnected"] == 1
    assert seen - 1 <= row["completion_tokens"] <= generated < max_tokens // 4  # role chunk
    assert row["prompt_tokens"] > 0
    cost = cost_of(MODEL, row["prompt_tokens"], row["completion_tokens"])
    assert row["cost_picousd"] == picousd(cost)


async def test_sigterm_under_load_loses_no_row(tmp_path: Path) -> None:
    """SIGTERM to the real CLI under load: every answered request has exactly one row."""
    state = tmp_path / "state"
    key = await create_key(state)
    workers, per_worker = 8, 40
    sent: set[str] = set()
    answered: dict[str, float] = {}  # request id -> when its response ended
    busy = asyncio.Event()

    async def worker(client: openai.AsyncOpenAI, w: int) -> None:
        for i in range(per_worker):
            request_id = f"sigterm-{w}-{i}"
            sent.add(request_id)
            headers = {"X-Request-ID": request_id}
            try:
                await load_request(client, i % 2 == 1, headers)
            except openai.APIStatusError as exc:  # an error is a response too
                assert exc.response.headers["x-tera-request-id"] == request_id
            except openai.APIConnectionError:
                return  # the listener has closed: no response
            answered[request_id] = time.monotonic()
            if len(answered) >= 3 * workers:
                busy.set()

    async with AsyncExitStack() as stack:
        sims = await start_sims(stack, 2, token_delay=0.01)
        config = config_dict([s.url for s in sims], server={"graceful_timeout": 10.0})
        config["state_dir"] = str(state)
        async with proxy_process(config, tmp_path) as proxy, asyncio.timeout(30):
            client = make_client(stack, proxy.url, key.secret)
            tasks = [asyncio.ensure_future(worker(client, w)) for w in range(workers)]
            await busy.wait()
            signalled = time.monotonic()
            exit_code = await proxy.terminate()
            await asyncio.gather(*tasks)
    assert exit_code == 0, proxy.log_text()[-2000:]
    assert any(t > signalled for t in answered.values()), "nothing was in flight at SIGTERM"
    rows = Counter(r["request_id"] for r in await ledger_rows(state / "tera.db"))
    assert set(answered) <= set(rows)
    assert set(rows) <= sent
    assert set(rows.values()) == {1}


async def load_request(client: openai.AsyncOpenAI, stream: bool, headers: dict[str, str]) -> None:
    if not stream:
        await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=24, extra_headers=headers
        )
        return
    chunks = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=24, stream=True, extra_headers=headers
    )
    async for _ in chunks:
        pass


async def test_cli_ledger_lives_under_state_dir_relative_to_the_config(tmp_path: Path) -> None:
    """The CLI resolves a relative state_dir against the config file, not the cwd."""
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    key = await create_key(conf / "state")
    async with AsyncExitStack() as stack:
        sims = await start_sims(stack, 1)
        config = config_dict([s.url for s in sims])
        config["state_dir"] = "state"
        async with proxy_process(config, conf, cwd=elsewhere) as proxy:
            client = make_client(stack, proxy.url, key.secret)
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=USER, max_tokens=8
            )
            assert await proxy.terminate() == 0
    rows = await ledger_rows(conf / "state" / "tera.db")
    assert [r["request_id"] for r in rows] == [raw.headers["x-tera-request-id"]]
