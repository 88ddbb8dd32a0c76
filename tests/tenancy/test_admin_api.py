"""The admin HTTP API (/admin/keys, /admin/usage) through a real Hypercorn server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from tera_proxy.app import App, create_app
from tera_proxy.config import parse_config
from tera_proxy.keys import KeyLimits, well_formed
from tera_proxy.store import ledger_backend
from tests.helpers import serve_app
from tests.tenancy.support import ledger_row

TOKEN = "admin-" + "t" * 32


@dataclass
class Admin:
    url: str
    app: App
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as r:
            return r.status, await r.json(), r


@asynccontextmanager
async def start_admin(state: Path, admin_token: str) -> AsyncIterator[Admin]:
    config = parse_config({"auth": {"admin_token": admin_token}, "health": {"enabled": False}})
    app = create_app(config, state_dir=state)
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        yield Admin(url, app, http)


@pytest.fixture
async def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Admin]:
    monkeypatch.delenv("TERA_ADMIN_TOKEN", raising=False)
    async with start_admin(tmp_path, TOKEN) as a:
        yield a


def error_of(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    return error


NEW_KEY = {
    "name": "team-a",
    "models": ["openai/*"],
    "max_concurrency": 2,
    "tokens_per_minute": 1000,
    "requests_per_minute": None,
}


async def test_create_answers_201_with_a_working_secret(admin: Admin) -> None:
    """POST /admin/keys answers 201 with the record and a secret the proxy accepts."""
    status, body, _ = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    assert status == 201
    assert well_formed(body["secret"])
    assert body["prefix"] == body["secret"][:12]
    assert (body["name"], body["models"], body["revoked_at"]) == ("team-a", ["openai/*"], None)
    record = await admin.app.tenancy.keys.lookup(body["secret"])
    assert record is not None and record.id == body["id"]
    assert record.limits == KeyLimits(max_concurrency=2, tokens_per_minute=1000)


async def test_create_defaults_to_every_model_unlimited(admin: Admin) -> None:
    """A key created with only a name may use every model, without limits."""
    status, body, _ = await admin.call("POST", "/admin/keys", json={"name": "all"})
    assert status == 201
    assert body["models"] == ["*"]
    assert [body[f] for f in ("max_concurrency", "tokens_per_minute", "requests_per_minute")] == [
        None,
        None,
        None,
    ]


async def test_responses_are_not_cacheable(admin: Admin) -> None:
    """The answer carrying the secret tells caches not to store it."""
    _, _, response = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    assert response.headers["Cache-Control"] == "no-store"


async def test_create_logs_without_the_secret(admin: Admin) -> None:
    """Creating a key through the API logs it without its secret."""
    with structlog.testing.capture_logs() as logs:
        _, body, _ = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    assert logs
    assert body["secret"] not in repr(logs)
    assert body["secret"][12:] not in repr(logs)


async def test_list_shows_every_key_and_no_secret(admin: Admin) -> None:
    """GET /admin/keys lists revoked keys too, with no secret and no digest."""
    _, first, _ = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    _, second, _ = await admin.call("POST", "/admin/keys", json={"name": "b"})
    await admin.app.tenancy.keys.revoke(second["id"])
    status, body, response = await admin.call("GET", "/admin/keys")
    assert status == 200
    assert [k["id"] for k in body["data"]] == [first["id"], second["id"]]
    assert body["data"][0]["revoked_at"] is None
    assert body["data"][1]["revoked_at"] is not None
    text = await response.text()
    assert first["secret"] not in text and second["secret"] not in text
    assert not any("secret" in k or "digest" in k for k in body["data"])


async def test_delete_revokes_the_key(admin: Admin) -> None:
    """DELETE /admin/keys/{id} revokes: the secret stops authenticating."""
    _, new, _ = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    status, body, _ = await admin.call("DELETE", f"/admin/keys/{new['id']}")
    assert (status, body) == (200, {"id": new["id"], "revoked": True})
    assert await admin.app.tenancy.keys.lookup(new["secret"]) is None


async def test_delete_unknown_key_is_404(admin: Admin) -> None:
    """Revoking an id no active key has answers 404 in the error shape."""
    status, body, _ = await admin.call("DELETE", "/admin/keys/key_0000000000000000")
    assert status == 404
    assert error_of(body)["code"] == "key_not_found"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer caf\u00e9"],
    ids=["missing", "wrong", "not-bearer", "longer", "non-ascii"],
)
async def test_without_the_admin_token_is_401(admin: Admin, authorization: str | None) -> None:
    """A missing or wrong admin token answers 401 authentication_error."""
    headers = {} if authorization is None else {"Authorization": authorization}
    async with admin.http.get(admin.url + "/admin/keys", headers=headers) as response:
        status, body = response.status, await response.json()
    assert status == 401
    assert error_of(body)["type"] == "authentication_error"


async def test_token_is_checked_before_routing(admin: Admin) -> None:
    """Without the token even an unknown admin path answers 401, revealing nothing."""
    status, body, _ = await admin.call("GET", "/admin/nothing-here", token=None)
    assert status == 401
    assert error_of(body)["code"] == "invalid_admin_token"


async def test_api_key_is_not_an_admin_token(admin: Admin) -> None:
    """A valid API key does not open the admin API."""
    _, new, _ = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    status, _, _ = await admin.call("GET", "/admin/keys", token=new["secret"])
    assert status == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("DELETE", "/admin/keys/k"),
     ("GET", "/admin/usage")],
)  # fmt: skip
async def test_disabled_without_an_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, path: str
) -> None:
    """With no admin token configured, every admin endpoint answers 404: disabled."""
    monkeypatch.delenv("TERA_ADMIN_TOKEN", raising=False)
    async with start_admin(tmp_path, "") as admin:
        status, body, _ = await admin.call(method, path, json=NEW_KEY)
        assert status == 404
        assert error_of(body)["code"] == "admin_api_disabled"
        assert "disabled" in body["error"]["message"]
        assert await admin.app.tenancy.keys.list() == []


async def test_token_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin token may come from TERA_ADMIN_TOKEN instead of the config file."""
    monkeypatch.setenv("TERA_ADMIN_TOKEN", TOKEN)
    async with start_admin(tmp_path, "") as admin:
        status, _, _ = await admin.call("GET", "/admin/keys")
        assert status == 200


async def test_unknown_admin_path_is_404(admin: Admin) -> None:
    """An unknown path under /admin/ answers 404 not_found_error to the admin."""
    status, body, _ = await admin.call("GET", "/admin/users")
    assert status == 404
    assert error_of(body)["type"] == "not_found_error"


async def test_wrong_method_is_405(admin: Admin) -> None:
    """PUT on /admin/keys answers 405 with an Allow header."""
    status, body, response = await admin.call("PUT", "/admin/keys", json=NEW_KEY)
    assert status == 405
    assert response.headers["Allow"] == "GET, POST"
    assert error_of(body)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b"{}", "name"),
        (b'{"name": 7}', "name"),
        (b'{"name": "  "}', "name"),
        (b'{"name": "a", "models": "openai/*"}', "models"),
        (b'{"name": "a", "models": []}', "models"),
        (b'{"name": "a", "models": [""]}', "models"),
        (b'{"name": "a", "max_concurrency": 0}', "max_concurrency"),
        (b'{"name": "a", "tokens_per_minute": "100"}', "tokens_per_minute"),
        (b'{"name": "a", "requests_per_minute": true}', "requests_per_minute"),
        (b'{"name": "a", "requests_per_minute": 1.5}', "requests_per_minute"),
        (b'{"name": "a", "tokens_per_min": 100}', "tokens_per_min"),
    ],
)
async def test_invalid_key_request_is_400(admin: Admin, body: bytes, param: str | None) -> None:
    """A malformed key request answers 400 invalid_request_error naming the field."""
    status, answer, _ = await admin.call("POST", "/admin/keys", data=body)
    assert status == 400
    error = error_of(answer)
    assert error["type"] == "invalid_request_error"
    assert error.get("param") == param
    assert await admin.app.tenancy.keys.list() == []


async def write_rows(admin: Admin, *rows: Any) -> None:
    """Ledger rows written as the proxy's ledger writes them, then committed."""
    backend = ledger_backend(admin.app.config.database, admin.app.state_dir)
    await backend.open()
    try:
        await backend.write(rows)
    finally:
        await backend.close()


async def test_usage_totals_equal_the_ledger_rows(admin: Admin) -> None:
    """GET /admin/usage sums the ledger per key and model, with exact costs."""
    _, key, _ = await admin.call("POST", "/admin/keys", json=NEW_KEY)
    rows = [
        ledger_row(1, key_id=key["id"], prompt=10, completion=5, reasoning=2, cost="0.000001"),
        ledger_row(2, key_id=key["id"], prompt=20, completion=7, cost="0.000000000001"),
        ledger_row(3, key_id=key["id"], model="Qwen/Qwen3-8B", prompt=3, completion=1),
        ledger_row(4, key_id="key_gone", prompt=100, completion=50, cost="0.5"),
    ]
    await write_rows(admin, *rows)
    status, body, _ = await admin.call("GET", "/admin/usage")
    assert status == 200
    by = {(row["key_id"], row["model"]): row for row in body["data"]}
    assert len(by) == 3
    mine = by[key["id"], "openai/gpt-oss-20b"]
    assert (mine["key_name"], mine["requests"], mine["prompt_tokens"]) == ("team-a", 2, 30)
    assert (mine["completion_tokens"], mine["reasoning_tokens"]) == (12, 2)
    assert mine["cost_usd"] == "0.000001000001"
    assert by["key_gone", "openai/gpt-oss-20b"]["key_name"] is None  # no longer in the store
    assert body["total"] == {
        "requests": 4,
        "prompt_tokens": 133,
        "completion_tokens": 63,
        "reasoning_tokens": 2,
        "cost_usd": "0.500002000001",
    }


async def test_usage_filters_by_key(admin: Admin) -> None:
    """?key= keeps only that key's rows."""
    await write_rows(admin, ledger_row(1, key_id="key_a"), ledger_row(2, key_id="key_b"))
    _, body, _ = await admin.call("GET", "/admin/usage", params={"key": "key_b"})
    assert [row["key_id"] for row in body["data"]] == ["key_b"]
    assert body["key"] == "key_b"


async def test_usage_filters_by_since(admin: Admin) -> None:
    """?since= keeps only rows created at or after that time."""
    await write_rows(admin, ledger_row(1, at=1_000.0), ledger_row(2, at=2_000_000_000.0))
    _, body, _ = await admin.call("GET", "/admin/usage", params={"since": "2030-01-01"})
    assert body["total"]["requests"] == 1
    assert body["since"] == 1_893_456_000.0


async def test_usage_bad_since_is_400(admin: Admin) -> None:
    """A since that is neither a duration nor an ISO date answers 400 naming it."""
    status, body, _ = await admin.call("GET", "/admin/usage", params={"since": "last week"})
    assert status == 400
    assert error_of(body)["param"] == "since"


async def test_usage_unknown_parameter_is_400(admin: Admin) -> None:
    """A misspelt filter is refused rather than silently ignored."""
    status, body, _ = await admin.call("GET", "/admin/usage", params={"keys": "key_a"})
    assert status == 400
    assert error_of(body)["param"] == "keys"
