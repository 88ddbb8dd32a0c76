"""The key store: generation, keyed hashing, both SQL backends, and the lookup cache."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog

from tera_proxy.config import ConfigError
from tera_proxy.keys import (
    KEY_PREFIX,
    KeyBackend,
    KeyLimits,
    KeyRecord,
    KeyStore,
    KeyStoreConfig,
    generate_secret,
    key_digest,
    server_secret,
    well_formed,
)
from tests.tenancy.support import SERVER_SECRET, Database, FakeClock

URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class Counting:
    """A KeyBackend wrapper that counts the calls reaching the database."""

    def __init__(self, inner: KeyBackend, fail: bool = False) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def counted(*args: Any) -> Any:
            self.calls.append(name)
            if self.fail and name in ("version", "active"):
                raise OSError("database unreachable")
            return await method(*args)

        return counted


Start = Callable[..., Awaitable[KeyStore]]


@pytest.fixture
async def started() -> AsyncIterator[Start]:
    """Starts key stores and stops them all at teardown, even after a failure (an open
    aiosqlite connection's thread would keep the test process alive)."""
    stores: list[KeyStore] = []

    async def start(backend: Any, clock: FakeClock | None = None) -> KeyStore:
        store = KeyStore(backend, SERVER_SECRET, clock=clock or FakeClock())
        stores.append(store)
        await store.start()
        return store

    yield start
    for store in stores:
        await store.stop()


def test_generated_key_shape() -> None:
    """A key is sk-tera- followed by at least 32 URL-safe random characters."""
    secret = generate_secret()
    body = secret.removeprefix(KEY_PREFIX)
    assert secret.startswith(KEY_PREFIX)
    assert len(body) >= 32
    assert set(body) <= URL_SAFE
    assert well_formed(secret)


def test_generated_keys_are_unique() -> None:
    """Two generated keys never repeat."""
    assert len({generate_secret() for _ in range(1000)}) == 1000


def test_digest_is_keyed_by_the_server_secret() -> None:
    """The stored digest is an HMAC: it depends on the server secret, unlike a plain hash."""
    secret = generate_secret()
    one, other = key_digest(b"a" * 32, secret), key_digest(b"b" * 32, secret)
    assert one != other
    assert one != hashlib.sha256(secret.encode()).digest()
    assert one == hmac.new(b"a" * 32, secret.encode(), "sha256").digest()


def test_server_secret_from_environment() -> None:
    """Without a configured secret, the named environment variable supplies it."""
    config = KeyStoreConfig(secret_env="TERA_TEST_SECRET")
    assert server_secret(config, {"TERA_TEST_SECRET": "x" * 40}) == b"x" * 40


def test_server_secret_missing_is_a_config_error() -> None:
    """No secret (or a short one) refuses to start rather than hashing with a weak key."""
    with pytest.raises(ConfigError, match="TERA_KEY_SECRET"):
        server_secret(KeyStoreConfig(), {"TERA_KEY_SECRET": "short"})


def test_limits_must_be_positive() -> None:
    """A zero limit is refused; None is the way to say unlimited."""
    with pytest.raises(ValueError, match="tokens_per_minute"):
        KeyLimits(tokens_per_minute=0)


def test_new_key_repr_hides_the_secret() -> None:
    """The repr of a freshly created key does not contain its secret."""
    from tera_proxy.keys import NewKey

    record = KeyRecord("key_1", "n", "sk-tera-abcd", ("*",), KeyLimits(), 0.0)
    secret = generate_secret()
    assert secret not in repr(NewKey(record, secret))


# -- both backends --------------------------------------------------------------------


async def test_create_then_lookup(started: Start, database: Database) -> None:
    """A created key is found by its secret, with its name, scopes and limits."""
    store = await started(database.keys())
    limits = KeyLimits(max_concurrency=4, tokens_per_minute=10_000, requests_per_minute=60)
    new = await store.create("ci", models=("openai/*",), limits=limits)
    found = await store.lookup(new.secret)
    assert found == new.record
    assert found.models == ("openai/*",) and found.limits == limits


async def test_only_the_digest_and_prefix_are_stored(started: Start, database: Database) -> None:
    """The database holds the key's HMAC and visible prefix, never the key itself."""
    store = await started(database.keys())
    new = await store.create("ci")
    rows = await database.raw_rows("tera_keys")
    stored = repr(rows)
    assert new.secret not in stored
    assert new.secret[len(KEY_PREFIX) :] not in stored
    assert new.record.prefix in stored and new.record.prefix == new.secret[:12]
    assert any(bytes(v) == key_digest(SERVER_SECRET, new.secret) for v in rows[0] if
               isinstance(v, bytes | memoryview))  # fmt: skip


async def test_unknown_key_is_not_found(started: Start, database: Database) -> None:
    """A well-formed key that was never created looks up as None."""
    store = await started(database.keys())
    assert await store.lookup(generate_secret()) is None


async def test_list_returns_every_key_with_its_fields(started: Start, database: Database) -> None:
    """list() returns all keys, revoked ones included, round-tripping every field."""
    store = await started(database.keys())
    a = await store.create("a", limits=KeyLimits(tokens_per_minute=5))
    b = await store.create("b", models=("Qwen/*", "openai/gpt-oss-20b"))
    await store.revoke(a.record.id)
    listed = {r.id: r for r in await store.list()}
    assert listed[b.record.id] == b.record
    assert listed[a.record.id].revoked_at is not None
    assert listed[a.record.id].limits == KeyLimits(tokens_per_minute=5)


async def test_revoke_takes_effect_at_once_on_the_same_store(
    started: Start, database: Database
) -> None:
    """The store that revokes a key stops accepting it immediately."""
    store = await started(database.keys())
    new = await store.create("ci")
    assert await store.revoke(new.record.id)
    assert await store.lookup(new.secret) is None


async def test_revoke_twice_reports_false(started: Start, database: Database) -> None:
    """Revoking an unknown or already revoked key returns False and changes nothing."""
    store = await started(database.keys())
    new = await store.create("ci")
    assert await store.revoke(new.record.id)
    first = [r.revoked_at for r in await store.list()]
    assert not await store.revoke(new.record.id)
    assert not await store.revoke("key_unknown")
    assert [r.revoked_at for r in await store.list()] == first


async def test_revocation_elsewhere_is_seen_within_the_refresh_interval(
    started: Start,
    database: Database,
) -> None:
    """A key revoked by another proxy stops working on this one within 0.5 s."""
    clock = FakeClock()
    proxy = await started(database.keys(), clock)
    admin = await started(database.keys())
    new = await admin.create("ci")
    clock.advance(0.5)
    assert await proxy.lookup(new.secret) is not None
    await admin.revoke(new.record.id)
    clock.advance(0.4)
    assert await proxy.lookup(new.secret) is not None  # still cached
    clock.advance(0.1)
    assert await proxy.lookup(new.secret) is None


async def test_key_created_elsewhere_is_found_after_the_interval(
    started: Start, database: Database
) -> None:
    """A key another proxy created is accepted once this proxy's cache refreshes."""
    clock = FakeClock()
    proxy = await started(database.keys(), clock)
    admin = await started(database.keys())
    new = await admin.create("ci")
    assert await proxy.lookup(new.secret) is None
    clock.advance(0.5)
    assert await proxy.lookup(new.secret) == new.record


# -- the cache ------------------------------------------------------------------------


async def test_lookups_within_the_interval_do_not_query(started: Start, database: Database) -> None:
    """Lookups between refreshes are answered from memory, without a database call."""
    clock = FakeClock()
    backend = Counting(database.keys())
    store = await started(backend, clock)
    new = await store.create("ci")
    backend.calls.clear()
    for _ in range(1000):
        assert await store.lookup(new.secret) is not None
        assert await store.lookup(generate_secret()) is None
    assert backend.calls == []


async def test_unchanged_keys_cost_one_counter_query_per_interval(
    started: Start, database: Database
) -> None:
    """After the interval, one version query; the keys are reloaded only if it moved."""
    clock = FakeClock()
    backend = Counting(database.keys())
    store = await started(backend, clock)
    new = await store.create("ci")
    clock.advance(0.5)
    await store.lookup(new.secret)  # the create moved the counter: one reload
    backend.calls.clear()
    clock.advance(0.5)
    await store.lookup(new.secret)
    assert backend.calls == ["version"]


async def test_concurrent_stale_lookups_share_one_refresh(
    started: Start, database: Database
) -> None:
    """Many lookups arriving when the cache is due trigger a single refresh."""
    clock = FakeClock()
    backend = Counting(database.keys())
    store = await started(backend, clock)
    new = await store.create("ci")
    backend.calls.clear()
    clock.advance(0.5)
    found = await asyncio.gather(*(store.lookup(new.secret) for _ in range(20)))
    assert all(r == new.record for r in found)
    assert backend.calls.count("version") == 1


async def test_refresh_failure_keeps_serving_cached_keys(
    started: Start, database: Database
) -> None:
    """If the database is unreachable, known keys keep working and a warning is logged."""
    clock = FakeClock()
    backend = Counting(database.keys())
    store = await started(backend, clock)
    new = await store.create("ci")
    backend.fail = True
    clock.advance(0.5)
    with structlog.testing.capture_logs() as logs:
        assert await store.lookup(new.secret) == new.record
    assert [e["event"] for e in logs] == ["key refresh failed; serving cached keys"]
    backend.fail = False


async def test_malformed_key_is_rejected_without_a_query(
    started: Start, database: Database
) -> None:
    """A string that is not a Tera key is refused before any hashing or refresh."""
    clock = FakeClock()
    backend = Counting(database.keys())
    store = await started(backend, clock)
    backend.calls.clear()
    clock.advance(10)
    for bad in ("sk-tera-short", "sk-other-" + "a" * 40, "sk-tera-" + "a" * 40 + "!"):
        assert await store.lookup(bad) is None
    assert backend.calls == []


async def test_lookup_compares_whole_digests_in_constant_time(
    started: Start, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached digest is checked against the computed one with hmac.compare_digest."""
    store = await started(database.keys())
    new = await store.create("ci")
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr("tera_proxy.keys.hmac.compare_digest", spy)
    assert await store.lookup(new.secret) is not None
    assert seen == [(key_digest(SERVER_SECRET, new.secret),) * 2]


async def test_keys_survive_a_restart(started: Start, database: Database) -> None:
    """A new store on the same database accepts keys created before it started."""
    first = await started(database.keys())
    new = await first.create("ci")
    await first.stop()
    second = await started(database.keys())
    assert await second.lookup(new.secret) == new.record


async def test_create_refuses_a_key_without_scopes(started: Start, database: Database) -> None:
    """A key must name at least one model pattern."""
    store = await started(database.keys())
    with pytest.raises(ValueError, match="model pattern"):
        await store.create("ci", models=())
