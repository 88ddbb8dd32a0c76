"""Observability end to end: GET /metrics moves as requests go through the proxy on
Hypercorn, one structured log line per request carries its request id, and the id a
user quotes (X-Tera-Request-ID) leads to that line and to the ledger row."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import structlog

from tera_proxy.keys import KeyLimits
from tests.tenancy.e2e_support import (
    BIG,
    MODEL,
    USER,
    Samples,
    Tenant,
    chats,
    config_dict,
    cost_of,
    create_key,
    ledger_rows,
    make_client,
    picousd,
    proxy_process,
    request_lines,
    sample,
    scrape,
    start_sims,
    tenant,
)


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Tenant]:
    async with tenant(tmp_path) as t:
        yield t


async def chat(
    client: openai.AsyncOpenAI, model: str = MODEL, max_tokens: int = 16, **options: object
) -> str:
    """One chat completion; the request id the client can quote."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=USER, max_tokens=max_tokens, **options
    )
    return str(raw.headers["x-tera-request-id"])


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


async def test_requests_total_by_model_and_status(proxy: Tenant) -> None:
    """tera_requests_total counts each answered request under its model and status."""
    before = await scrape(proxy.url)
    await chat(proxy.client, MODEL)
    await chat(proxy.client, MODEL)
    await chat(proxy.client, BIG)
    for sim in proxy.sims:  # whichever replica it reaches answers a 400
        sim.faults.error_status, sim.faults.fail_next = 400, 1
    with pytest.raises(openai.BadRequestError):
        await chat(proxy.client, BIG)
    await proxy.settled.wait(4)
    after = await scrape(proxy.url)
    assert moved(before, after, "tera_requests_total", model=MODEL, status="200") == 2
    assert moved(before, after, "tera_requests_total", model=BIG, status="200") == 1
    assert moved(before, after, "tera_requests_total", model=BIG, status="400") == 1


async def test_latency_histograms_observe_each_request(proxy: Tenant) -> None:
    """Each request adds one observation to its model's ttft and duration histograms."""
    before = await scrape(proxy.url)
    await chat(proxy.client)
    stream = await proxy.client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=16, stream=True
    )
    async for _ in stream:
        pass
    await proxy.settled.wait(2)
    after = await scrape(proxy.url)
    for name in ("tera_time_to_first_token_seconds", "tera_request_duration_seconds"):
        assert moved(before, after, f"{name}_count", model=MODEL) == 2
        assert moved(before, after, f"{name}_bucket", model=MODEL, le="+Inf") == 2
    ttft = moved(before, after, "tera_time_to_first_token_seconds_sum", model=MODEL)
    duration = moved(before, after, "tera_request_duration_seconds_sum", model=MODEL)
    assert 0 < ttft <= duration


async def test_token_and_cost_counters_match_the_usage(proxy: Tenant) -> None:
    """Token and cost counters move by exactly the usage the client was billed."""
    before = await scrape(proxy.url)
    usages = []
    for _ in range(3):
        resp = await proxy.client.chat.completions.create(model=BIG, messages=USER, max_tokens=24)
        assert resp.usage is not None and resp.usage.completion_tokens_details is not None
        usages.append(resp.usage)
    await proxy.settled.wait(3)
    after = await scrape(proxy.url)
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    reasoning = sum(u.completion_tokens_details.reasoning_tokens or 0 for u in usages)
    assert reasoning > 0
    assert moved(before, after, "tera_tokens_total", model=BIG, type="prompt") == prompt
    assert moved(before, after, "tera_tokens_total", model=BIG, type="completion") == completion
    assert moved(before, after, "tera_tokens_total", model=BIG, type="reasoning") == reasoning
    cost = moved(before, after, "tera_cost_usd_total", model=BIG)
    assert cost == pytest.approx(float(cost_of(BIG, prompt, completion)), rel=1e-9)


async def test_retries_counter_moves_on_a_retry(proxy: Tenant) -> None:
    """A request retried once on another replica adds one to tera_upstream_retries_total."""
    await chat(proxy.client)
    before = await scrape(proxy.url)
    first = next(s for s in proxy.sims if chats([s]))  # the prompt's replica
    first.faults.fail_next = 1
    await chat(proxy.client)
    await proxy.settled.wait(2)
    after = await scrape(proxy.url)
    assert first.stats.injected_errors_total == 1
    assert moved(before, after, "tera_upstream_retries_total", model=MODEL) == 1
    assert moved(before, after, "tera_requests_total", model=MODEL, status="200") == 1


async def test_limit_rejections_by_limit(proxy: Tenant) -> None:
    """Each 429 adds one to tera_limit_rejections_total under the limit that refused it."""
    _, rpm = await proxy.new_key("rpm", limits=KeyLimits(requests_per_minute=1))
    _, tpm = await proxy.new_key("tpm", limits=KeyLimits(tokens_per_minute=100))
    before = await scrape(proxy.url)
    await chat(rpm)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            await chat(rpm)
    await chat(tpm, max_tokens=60)  # reserves ~71 of 100; uses ~41
    with pytest.raises(openai.RateLimitError):
        await chat(tpm, max_tokens=60)  # ~71 more: no room, given back or not
    after = await scrape(proxy.url)
    assert moved(before, after, "tera_limit_rejections_total", limit="requests") == 2
    assert moved(before, after, "tera_limit_rejections_total", limit="tokens") == 1
    assert moved(before, after, "tera_limit_rejections_total", limit="concurrency") == 0


async def test_replica_states_and_inflight(tmp_path: Path) -> None:
    """/metrics shows each replica's state and its in-flight count, live."""
    async with tenant(tmp_path, sim={"token_delay": 0.02, "output_tokens": 100}) as t:
        stream = await t.client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=100, stream=True
        )
        await anext(aiter(stream))
        during = await scrape(t.url)
        await stream.close()
    busy = next(i for i, s in enumerate(t.sims) if chats([s]))
    for i in range(2):
        assert sample(during, "tera_replica_state", replica=f"r{i}", state="ready") == 1
        assert sample(during, "tera_replica_state", replica=f"r{i}", state="unhealthy") == 0
    assert sample(during, "tera_replica_inflight", replica=f"r{busy}") == 1
    assert sample(during, "tera_replica_inflight", replica=f"r{1 - busy}") == 0


async def test_one_log_line_per_request_with_its_id(proxy: Tenant) -> None:
    """Each request leaves exactly one `request` log line with its X-Tera-Request-ID."""
    ids = []
    with structlog.testing.capture_logs() as logs:
        ids.append(await chat(proxy.client))
        ids.append(await chat(proxy.client, BIG, extra_headers={"X-Request-ID": "user-chosen-1"}))
        raw = await proxy.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=USER, max_tokens=16, stream=True
        )
        async for _ in raw.parse():
            pass
        ids.append(raw.headers["x-tera-request-id"])
        for sim in proxy.sims:
            sim.faults.error_status, sim.faults.fail_next = 400, 1
        with pytest.raises(openai.BadRequestError) as caught:
            await chat(proxy.client)
        ids.append(caught.value.response.headers["x-tera-request-id"])
        await proxy.settled.wait(4)
    lines = request_lines(logs)
    assert sorted(line["request_id"] for line in lines) == sorted(ids)
    assert len(set(ids)) == 4 and "user-chosen-1" in ids
    assert [line["status"] for line in lines if line["request_id"] == ids[-1]] == [400]


async def test_refused_request_has_its_log_line(proxy: Tenant) -> None:
    """A request refused with 429 still leaves one log line with the id the client got."""
    _, client = await proxy.new_key("rpm", limits=KeyLimits(requests_per_minute=1))
    await chat(client)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(openai.RateLimitError) as caught:
            await chat(client)
        quoted = caught.value.response.headers["x-tera-request-id"]
    lines = [line for line in request_lines(logs) if line["request_id"] == quoted]
    assert [line["status"] for line in lines] == [429]


async def test_quoted_request_id_leads_to_log_line_and_ledger_row(tmp_path: Path) -> None:
    """The real CLI: a quoted request id finds one JSON log line and one ledger row."""
    state = tmp_path / "state"
    key = await create_key(state)
    async with AsyncExitStack() as stack:
        sims = await start_sims(stack, 2)
        config = config_dict([s.url for s in sims])
        config["state_dir"] = str(state)
        async with proxy_process(config, tmp_path) as proxy:
            client = make_client(stack, proxy.url, key.secret)
            for _ in range(3):  # neighbours the search must not confuse
                await chat(client)
            raw = await client.chat.completions.with_raw_response.create(
                model=BIG, messages=USER, max_tokens=16
            )
            usage = raw.parse().usage
            quoted = raw.headers["x-tera-request-id"]
            assert await proxy.terminate() == 0
        log = proxy.log_text()
    assert usage is not None
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    matching = [line for line in lines if quoted in json.dumps(line)]
    assert len([line for line in lines if line.get("event") == "request"]) == 4
    assert len(matching) == 1
    line = matching[0]
    assert (line["event"], line["request_id"], line["status"]) == ("request", quoted, 200)
    assert (line["key_id"], line["model"]) == (key.record.id, BIG)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert key.secret not in log
    rows = [r for r in await ledger_rows(state / "tera.db") if r["request_id"] == quoted]
    assert len(rows) == 1
    row = rows[0]
    assert (row["key_id"], row["model"], row["replica"]) == (key.record.id, BIG, line["replica"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    cost = cost_of(BIG, usage.prompt_tokens, usage.completion_tokens)
    assert row["cost_picousd"] == picousd(cost)
    assert Decimal(line["cost_usd"]) == cost
