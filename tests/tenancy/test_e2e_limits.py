"""Per-key limits end to end: the official openai client against the proxy on Hypercorn.
Concurrency, requests and tokens per minute (tokens by reservation, given back at the end),
429 rate_limit_error with Retry-After, x-ratelimit-* headers, and two proxies sharing one
limit through a real redis-server."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tera_proxy.app import create_app
from tera_proxy.keys import KeyLimits
from tera_proxy.limits import MemoryLimiter
from tera_proxy.rewrite.facts import estimate_prompt_tokens
from tests.helpers import asgi_call, serve_app, wait_ready
from tests.tenancy.e2e_support import (
    MODEL,
    USER,
    Tenant,
    chats,
    create_key,
    make_client,
    start_sims,
    tenant,
    tenant_config,
)

WINDOW = 60.0
# Long streams: 40 content tokens at 20 ms, so a stream outlives every admission below.
SLOW = {"token_delay": 0.02, "output_tokens": 40}


def reservation(max_tokens: int, messages: list[dict[str, str]] = USER) -> int:
    """What admission reserves: the proxy's prompt estimate plus max_tokens."""
    return estimate_prompt_tokens({"messages": messages}) + max_tokens


async def outcome(coro: Any) -> Any:
    """The response, or the openai error it raised."""
    try:
        return await coro
    except openai.APIStatusError as exc:
        return exc


def assert_rate_limited(error: Any, *, at_most: float) -> None:
    """A 429 in OpenAI's shape with a usable Retry-After."""
    assert isinstance(error, openai.RateLimitError), error
    assert error.status_code == 429
    assert error.type == "rate_limit_error"
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= at_most


@pytest.fixture
async def slow(tmp_path: Path) -> AsyncIterator[Tenant]:
    async with tenant(tmp_path, sim=SLOW) as t:
        yield t


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Tenant]:
    async with tenant(tmp_path) as t:
        yield t


async def test_concurrency_admits_exactly_the_limit(slow: Tenant) -> None:
    """8 simultaneous slow streams on max_concurrency=3: 3 stream, 5 get 429 + Retry-After."""
    _, client = await slow.new_key("c3", limits=KeyLimits(max_concurrency=3))
    calls = [
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=40, stream=True)
        for _ in range(8)
    ]
    results = await asyncio.gather(*(outcome(c) for c in calls))
    streams = [r for r in results if isinstance(r, openai.AsyncStream)]
    refused = [r for r in results if not isinstance(r, openai.AsyncStream)]
    try:
        assert len(streams) == 3
        assert len(refused) == 5
        for error in refused:
            assert_rate_limited(error, at_most=1)
        assert len(chats(slow.sims)) == 3  # the refused never reached a replica
    finally:
        for stream in streams:
            await stream.close()


async def test_finished_request_frees_its_concurrency_slot(slow: Tenant) -> None:
    """max_concurrency=1: refused while a stream runs, admitted once it has finished."""
    _, client = await slow.new_key("c1", limits=KeyLimits(max_concurrency=1))
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=20, stream=True
    )
    assert_rate_limited(
        await outcome(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)),
        at_most=1,
    )
    async for _ in stream:
        pass
    await slow.settled.wait(1)
    resp = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
    assert resp.usage is not None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_slot_is_free_before_the_last_byte(proxy: Tenant, stream: bool) -> None:
    """The key's concurrency slot is released before the last body message is sent, so a
    client that fires its next request the moment the response ends is never refused."""
    key, _ = await proxy.new_key("seq", limits=KeyLimits(max_concurrency=1))
    body = {"model": MODEL, "messages": USER, "max_tokens": 4, "stream": stream}
    headers = [(b"authorization", f"Bearer {key.secret}".encode())]
    inflight_at_end: list[int] = []
    limiter = proxy.app.tenancy.limiter
    assert isinstance(limiter, MemoryLimiter)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            inflight_at_end.append(limiter.inflight(key.record.id))

    status, _, _ = await asgi_call(
        proxy.app, "POST", "/v1/chat/completions", orjson.dumps(body), headers, send
    )
    assert status == 200
    assert inflight_at_end == [0]


async def test_requests_per_minute(proxy: Tenant) -> None:
    """requests_per_minute=2: two requests pass, the third gets 429 with the refill wait."""
    _, client = await proxy.new_key("rpm", limits=KeyLimits(requests_per_minute=2))
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
    error = await outcome(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4))
    assert_rate_limited(error, at_most=WINDOW / 2)  # one request refills in 30 s
    assert int(error.response.headers["retry-after"]) >= WINDOW / 2 - 2


async def test_tokens_are_reserved_at_admission(slow: Tenant) -> None:
    """prompt estimate + max_tokens is reserved at admission, however short the answer."""
    _, client = await slow.new_key("tpm", limits=KeyLimits(tokens_per_minute=1000))
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=600, stream=True
    )
    try:
        error = await outcome(
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=600)
        )
        assert_rate_limited(error, at_most=WINDOW)
        assert "tokens per minute" in error.message
        assert 1000 - reservation(600) >= reservation(300)
        fits = await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=300, stream=True
        )
        await fits.close()  # admitted: the response has started
    finally:
        await stream.close()


async def test_short_answer_gives_reserved_tokens_back(proxy: Tenant) -> None:
    """A short answer gives back its unused reservation: a request that needs it fits."""
    tpm = 1000
    _, client = await proxy.new_key("tpm", limits=KeyLimits(tokens_per_minute=tpm))
    max_tokens = 600
    first = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=max_tokens)
    assert first.usage is not None
    assert first.usage.total_tokens < 100  # the simulator answers in ~32 tokens
    assert tpm - reservation(max_tokens) < reservation(max_tokens)  # kept, no room for two
    await proxy.settled.wait(1)
    second = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=max_tokens
    )
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    refill = 2 * tpm / WINDOW  # generous: the test takes well under 2 s
    expected = tpm - first.usage.total_tokens - reservation(max_tokens)
    assert expected <= remaining <= expected + refill


async def test_concurrent_load_never_exceeds_the_token_budget(tmp_path: Path) -> None:
    """40 concurrent requests on tokens_per_minute=2000: admitted tokens stay in budget."""
    tpm, max_tokens = 2000, 200
    sim = {"token_delay": 0.002, "output_tokens": 400}  # every answer runs to max_tokens
    async with tenant(tmp_path, sim=sim, limits=KeyLimits(tokens_per_minute=tpm)) as t:
        started = time.monotonic()
        calls = [
            t.client.chat.completions.create(model=MODEL, messages=USER, max_tokens=max_tokens)
            for _ in range(40)
        ]
        results = await asyncio.gather(*(outcome(c) for c in calls))
        elapsed = time.monotonic() - started
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(e, openai.RateLimitError) for e in refused)
    budget = tpm + tpm * elapsed / WINDOW
    assert len(served) * reservation(max_tokens) <= budget
    assert sum(r.usage.total_tokens for r in served) <= budget
    assert len(served) >= tpm // reservation(max_tokens)
    assert all(r.usage.completion_tokens == max_tokens for r in served)


async def test_ratelimit_headers_on_success(proxy: Tenant) -> None:
    """A success carries x-ratelimit-{limit,remaining,reset}-{requests,tokens}."""
    limits = KeyLimits(requests_per_minute=100, tokens_per_minute=10_000)
    _, client = await proxy.new_key("headers", limits=limits)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=50
    )
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - reservation(50))
    # Time until full again: one request refills in 600 ms; the reservation in ~0.35 s.
    assert headers["x-ratelimit-reset-requests"] == "600ms"
    assert headers["x-ratelimit-reset-tokens"].endswith("ms")
    assert raw.parse().usage is not None


async def test_ratelimit_headers_on_streams(proxy: Tenant) -> None:
    """A streamed response carries the x-ratelimit-* headers in its head too."""
    _, client = await proxy.new_key("headers", limits=KeyLimits(requests_per_minute=10))
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=8, stream=True
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "10"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    async for _ in raw.parse():
        pass


async def test_two_proxies_share_one_limit_through_redis(tmp_path: Path, redis_url: str) -> None:
    """Two proxies on one redis-server enforce one key's requests_per_minute together."""
    key = await create_key(tmp_path, "shared", limits=KeyLimits(requests_per_minute=4))
    limits = {
        "backend": "redis",
        "redis_url": redis_url,
        "redis_prefix": f"t{secrets.token_hex(4)}:",
    }
    async with AsyncExitStack() as stack:
        sims = await start_sims(stack, 2)
        clients = []
        for _ in range(2):
            app = create_app(
                tenant_config([s.url for s in sims], limits=limits), state_dir=tmp_path
            )
            url = await stack.enter_async_context(serve_app(app))
            await wait_ready(app)
            clients.append(make_client(stack, url, key.secret))
        calls = [
            clients[i % 2].chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
            for i in range(10)
        ]
        results = await asyncio.gather(*(outcome(c) for c in calls))
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(served) == 4
    assert len(refused) == 6
    for error in refused:
        assert_rate_limited(error, at_most=WINDOW / 4)
