"""Authentication (401) and model scopes (403); keys never leak into errors or logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import structlog

from tera_proxy.auth import Principal, authenticate, authorize, visible_models
from tera_proxy.errors import AuthenticationFailed, PermissionDenied
from tera_proxy.keys import KeyLimits, KeyStore, NewKey, generate_secret
from tera_proxy.store.sqlite import SqliteKeys
from tests.tenancy.support import SERVER_SECRET

CATALOG = ["openai/gpt-oss-20b", "openai/gpt-oss-120b", "Qwen/Qwen3-8B"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    keys = KeyStore(SqliteKeys(tmp_path / "keys.db"), SERVER_SECRET)
    await keys.start()
    yield keys
    await keys.stop()


@pytest.fixture
async def key(store: KeyStore) -> NewKey:
    limits = KeyLimits(max_concurrency=2, tokens_per_minute=1000)
    return await store.create("team-a", models=("openai/*",), limits=limits)


def bearer(secret: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"authorization", f"Bearer {secret}".encode())]


def principal(*patterns: str) -> Principal:
    return Principal("key_1", "n", patterns, KeyLimits())


async def test_valid_key_yields_its_principal(store: KeyStore, key: NewKey) -> None:
    """A valid Bearer key authenticates as its key id, name, scopes and limits."""
    who = await authenticate(bearer(key.secret), store)
    assert who == Principal(key.record.id, "team-a", ("openai/*",), key.record.limits)


async def test_scheme_is_case_insensitive(store: KeyStore, key: NewKey) -> None:
    """`bearer` in lower case is accepted, as HTTP auth schemes are case-insensitive."""
    headers = [(b"authorization", f"bearer  {key.secret} ".encode())]
    assert (await authenticate(headers, store)).key_id == key.record.id


async def test_missing_header_is_401(store: KeyStore) -> None:
    """No Authorization header: 401 authentication_error, code missing_api_key."""
    with pytest.raises(AuthenticationFailed) as caught:
        await authenticate([(b"host", b"x")], store)
    error = orjson.loads(caught.value.body())["error"]
    assert caught.value.status == 401
    assert (error["type"], error["code"]) == ("authentication_error", "missing_api_key")


async def test_non_bearer_scheme_is_401(store: KeyStore, key: NewKey) -> None:
    """A Basic (or any non-Bearer) credential is refused without echoing it."""
    with pytest.raises(AuthenticationFailed, match="Bearer scheme") as caught:
        await authenticate([(b"authorization", f"Basic {key.secret}".encode())], store)
    assert key.secret not in caught.value.message


async def test_malformed_key_is_401_without_echo(store: KeyStore) -> None:
    """A key not shaped like sk-tera-... is refused, and the message does not repeat it."""
    for bad in ("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", "sk-tera-tooshort", ""):
        with pytest.raises(AuthenticationFailed, match="Malformed API key") as caught:
            await authenticate(bearer(bad), store)
        assert not bad or bad not in caught.value.body().decode()


async def test_unknown_key_is_401_without_echo(store: KeyStore) -> None:
    """A well-formed unknown key is refused; the body names neither key nor prefix."""
    secret = generate_secret()
    with pytest.raises(AuthenticationFailed, match="unknown or has been revoked") as caught:
        await authenticate(bearer(secret), store)
    assert secret[:12] not in caught.value.body().decode()


async def test_revoked_key_is_401(store: KeyStore, key: NewKey) -> None:
    """A revoked key no longer authenticates."""
    await store.revoke(key.record.id)
    with pytest.raises(AuthenticationFailed):
        await authenticate(bearer(key.secret), store)


async def test_keys_never_reach_logs_or_errors(store: KeyStore) -> None:
    """Creating, using, revoking and misusing keys logs and answers without the secret."""
    with structlog.testing.capture_logs() as logs:
        new = await store.create("leak-check")
        await authenticate(bearer(new.secret), store)
        await store.revoke(new.record.id)
        bodies = []
        for headers in (bearer(new.secret), [(b"authorization", new.secret.encode())]):
            with pytest.raises(AuthenticationFailed) as caught:
                await authenticate(headers, store)
            bodies.append(caught.value.body().decode() + repr(caught.value))
    assert logs, "creation and revocation are logged"
    text = repr(logs) + "".join(bodies)
    assert new.secret not in text
    assert new.secret[12:] not in text  # nothing past the visible prefix either


def test_in_scope_model_is_authorized() -> None:
    """A model matching one of the key's globs passes."""
    authorize(principal("Qwen/*", "openai/*"), "openai/gpt-oss-20b")


def test_out_of_scope_model_is_403() -> None:
    """A model no glob matches: 403 permission_error naming the model."""
    with pytest.raises(PermissionDenied) as caught:
        authorize(principal("openai/*"), "Qwen/Qwen3-8B")
    error = orjson.loads(caught.value.body())["error"]
    assert caught.value.status == 403
    assert error["type"] == "permission_error"
    assert "Qwen/Qwen3-8B" in error["message"]


def test_scopes_are_case_sensitive() -> None:
    """Model ids are case-sensitive, so globs are too."""
    with pytest.raises(PermissionDenied):
        authorize(principal("qwen/*"), "Qwen/Qwen3-8B")


def test_exact_model_scope() -> None:
    """A pattern without wildcards allows exactly that model."""
    who = principal("openai/gpt-oss-20b")
    authorize(who, "openai/gpt-oss-20b")
    with pytest.raises(PermissionDenied):
        authorize(who, "openai/gpt-oss-120b")


def test_visible_models_filters_in_catalog_order() -> None:
    """visible_models keeps the catalog's order and drops models out of scope."""
    assert visible_models(principal("Qwen/*", "*-120b"), CATALOG) == [
        "openai/gpt-oss-120b",
        "Qwen/Qwen3-8B",
    ]
    assert visible_models(principal("*"), CATALOG) == CATALOG
