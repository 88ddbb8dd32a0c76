"""Keys end to end: the official openai client against the proxy on Hypercorn with
simulator replicas. 401 authentication_error, 403 permission_error, /v1/models per key,
and a client's key never reaching logs, error bodies or replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import structlog

from tera_proxy.keys import KeyLimits, generate_secret
from tests.tenancy.e2e_support import (
    BIG,
    MODEL,
    REPLICA_KEY,
    USER,
    Tenant,
    chats,
    revoke_key,
    tenant,
)

REVOCATION_BOUND = 1.0  # seconds: the documented upper bound, refresh interval included


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Tenant]:
    async with tenant(tmp_path) as t:
        yield t


async def chat(client: openai.AsyncOpenAI, model: str = MODEL, **options: object) -> str:
    """One short chat; its response id."""
    resp = await client.chat.completions.create(
        model=model, messages=USER, max_tokens=12, **options
    )
    assert resp.choices[0].message.content
    return resp.id


@pytest.mark.parametrize(
    ("api_key", "authorization"),
    [
        pytest.param("unused", openai.Omit(), id="missing"),
        pytest.param("sk-tera-too-short", None, id="malformed"),
        pytest.param("unused", "Basic dXNlcjpwYXNz", id="not-bearer"),
        pytest.param(generate_secret(), None, id="unknown"),
    ],
)
async def test_bad_key_is_authentication_error(
    proxy: Tenant, api_key: str, authorization: object
) -> None:
    """A missing, malformed, non-Bearer or unknown key: AuthenticationError 401."""
    headers = {} if authorization is None else {"Authorization": authorization}
    with pytest.raises(openai.AuthenticationError) as caught:
        await chat(proxy.client_for(api_key), extra_headers=headers)
    assert caught.value.status_code == 401
    assert caught.value.type == "authentication_error"
    assert chats(proxy.sims) == []  # refused before any replica


async def test_revoked_key_is_authentication_error(proxy: Tenant) -> None:
    """A key revoked through the proxy's key store is refused on its next request."""
    assert await chat(proxy.client)
    assert await proxy.app.tenancy.keys.revoke(proxy.key.record.id)
    with pytest.raises(openai.AuthenticationError) as caught:
        await chat(proxy.client)
    assert caught.value.type == "authentication_error"


async def test_key_revoked_elsewhere_is_refused_within_a_second(proxy: Tenant) -> None:
    """A revocation written to the database by someone else is enforced within 1 s."""
    assert (await proxy.client.models.list()).data
    await revoke_key(proxy.state_dir, proxy.key.record.id)
    revoked_at = time.monotonic()
    for _ in range(1000):  # bounded: ~1 ms a call, the loop ends within the bound
        try:
            await proxy.client.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < REVOCATION_BOUND, "revocation not enforced"
        await asyncio.sleep(0.01)  # nothing to await: the proxy polls the database
    else:
        pytest.fail("the revoked key was still accepted")
    assert time.monotonic() - revoked_at < REVOCATION_BOUND


async def test_model_outside_scope_is_permission_error(proxy: Tenant) -> None:
    """A key scoped to one model gets PermissionDeniedError 403 on another."""
    _, client = await proxy.new_key("scoped", models=(MODEL,))
    assert await chat(client, MODEL)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await chat(client, BIG)
    assert caught.value.status_code == 403
    assert caught.value.type == "permission_error"
    assert BIG in caught.value.message


async def test_models_lists_only_the_keys_models(proxy: Tenant) -> None:
    """GET /v1/models shows a scoped key its models only; an all-models key sees all."""
    _, scoped = await proxy.new_key("scoped", models=("*-120b",))
    assert [m.id for m in (await scoped.models.list()).data] == [BIG]
    assert [m.id for m in (await proxy.client.models.list()).data] == [MODEL, BIG]


async def test_key_in_no_log_line_and_no_error_body(tmp_path: Path) -> None:
    """Successes, 401s, 403s, 429s and streams log and answer without the client's key."""
    async with tenant(tmp_path, sim={"token_delay": 0.02, "output_tokens": 100}) as proxy:
        limits = KeyLimits(max_concurrency=1)
        key, client = await proxy.new_key("leak", models=(MODEL,), limits=limits)
        malformed = "sk-tera-" + key.secret[8:30]  # a truncated paste of the real key
        with structlog.testing.capture_logs() as logs:
            assert await chat(client)
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, max_tokens=100, stream=True
            )
            async with stream:
                await anext(aiter(stream))  # a 2 s stream holds the only concurrency slot
                errors: list[openai.APIStatusError] = []
                for attempt in (
                    chat(client, MODEL),  # 429
                    chat(client, BIG),  # 403
                    chat(proxy.client_for(malformed)),  # 401 malformed
                ):
                    with pytest.raises(openai.APIStatusError) as caught:
                        await attempt
                    errors.append(caught.value)
            await proxy.app.tenancy.keys.revoke(key.record.id)
            with pytest.raises(openai.AuthenticationError) as revoked:
                await chat(client)
            errors.append(revoked.value)
            await proxy.settled.wait(2)
    assert [e.status_code for e in errors] == [429, 403, 401, 401]
    bodies = [e.response.text + repr(e.response.headers) for e in errors]
    served = [e for e in logs if e.get("event") == "request" and e["status"] == 200]
    assert [e["key_id"] for e in served] == [key.record.id] * 2  # the log names keys by id
    text = repr(logs) + "".join(bodies)
    for secret in (key.secret, key.secret[12:], malformed[8:]):
        assert secret not in text


async def test_replicas_never_see_the_clients_key(proxy: Tenant) -> None:
    """Replicas get their own Authorization, never the client's, streamed or not."""
    await chat(proxy.client)
    stream = await proxy.client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=8, stream=True
    )
    async for _ in stream:
        pass
    recorded = chats(proxy.sims)
    assert len(recorded) == 2
    for request in recorded:
        assert request.headers.getall("Authorization") == [f"Bearer {REPLICA_KEY}"]
        everything = repr(dict(request.headers)) + request.body.decode()
        assert proxy.key.secret not in everything
