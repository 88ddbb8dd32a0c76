"""The admin HTTP API: keys and usage for operators, behind the admin bearer token.

    POST   /admin/keys        create a key: 201 with its secret, the only time it is shown
    GET    /admin/keys        every key, revoked ones included; never a secret or digest
    DELETE /admin/keys/{id}   revoke: 404 unless an active key has this id
    GET    /admin/usage       ?key=ID&since=24h|7d|ISO: ledger totals per key and model

With no admin token configured the API does not exist (404): forgetting to set a token
must not leave key management open, as the plain `_check_admin` would. The token is
checked before the path is routed, so a caller without it cannot map the admin paths.
Costs are strings (exact decimals), as JSON numbers would round them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson

from tera_proxy.accounting import UsageTotal, parse_since
from tera_proxy.app import App, Handler, Scope, admin_token_matches, read_request
from tera_proxy.errors import (
    AuthenticationFailed,
    EndpointNotFound,
    InvalidRequest,
    MethodNotAllowed,
)
from tera_proxy.keys import KeyLimits, KeyRecord, check_new_key
from tera_proxy.proxy import JSON_HEADERS, Exchange, Receive, start_response

KEY_PATH = "/admin/keys/"
MAX_BODY_BYTES = 64 * 1024  # a key request is a few hundred bytes
LIMIT_FIELDS = ("max_concurrency", "tokens_per_minute", "requests_per_minute")
KEY_FIELDS = frozenset({"name", "models", *LIMIT_FIELDS})
USAGE_PARAMS = frozenset({"key", "since"})
# Answers carry secrets and billing data: no cache on the way may keep them.
NO_STORE = (b"cache-control", b"no-store")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A valid `POST /admin/keys` body."""

    name: str
    models: tuple[str, ...]
    limits: KeyLimits


@dataclass(frozen=True, slots=True)
class UsageQuery:
    key_id: str | None
    since: float | None


class AdminApi:
    """Every `/admin/` request goes through `handle`, a Handler for App._route."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._routes: dict[str, dict[str, Handler]] = {
            "/admin/keys": {"GET": self._list_keys, "POST": self._create_key},
            "/admin/usage": {"GET": self._usage},
        }
        self._key_route: dict[str, Handler] = {"DELETE": self._revoke_key}

    async def handle(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        self._gate(scope["headers"])
        handler = self.resolve(scope["method"], scope["path"])
        await handler(ex, scope, receive)

    def resolve(self, method: str, path: str) -> Handler:
        """The handler for an admin path, or the same 404/405 errors as the app's."""
        methods = self._routes.get(path)
        if methods is None and path.startswith(KEY_PATH) and len(path) > len(KEY_PATH):
            methods = self._key_route
        if methods is None:
            raise EndpointNotFound(f"Unknown admin endpoint `{path}`.")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allow = ", ".join(methods)
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allow}.", allow=allow)
        return handler

    def _gate(self, headers: list[tuple[bytes, bytes]]) -> None:
        token = self._app.admin_token
        if not token:
            env = self._app.config.auth.admin_token_env
            raise EndpointNotFound(
                f"The admin API is disabled: set [auth] admin_token or {env} to enable it.",
                code="admin_api_disabled",
            )
        if not admin_token_matches(headers, token):
            raise AuthenticationFailed(
                "The admin API needs the admin token: `Authorization: Bearer <token>`.",
                code="invalid_admin_token",
            )

    async def _create_key(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        spec = parse_key_spec(await read_request(receive, MAX_BODY_BYTES))
        new = await self._app.tenancy.keys.create(spec.name, models=spec.models, limits=spec.limits)
        await send_admin_json(ex, 201, {**key_json(new.record), "secret": new.secret})

    async def _list_keys(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        records = await self._app.tenancy.keys.list()
        await send_admin_json(ex, 200, {"object": "list", "data": [key_json(r) for r in records]})

    async def _revoke_key(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        key_id = scope["path"][len(KEY_PATH) :]
        if not await self._app.tenancy.keys.revoke(key_id):
            raise EndpointNotFound(f"No active key has the id `{key_id}`.", code="key_not_found")
        await send_admin_json(ex, 200, {"id": key_id, "revoked": True})

    async def _usage(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        query = parse_usage_query(scope.get("query_string", b""))
        tenancy = self._app.tenancy
        totals = await tenancy.ledger.totals(since=query.since, key_id=query.key_id)
        names = {r.id: r.name for r in await tenancy.keys.list()}
        await send_admin_json(ex, 200, usage_json(query, totals, names))


# -- pure: request bodies and queries in, JSON-ready values out -------------------------


def parse_key_spec(raw: bytes) -> KeySpec:
    """The key to create, or InvalidRequest (400) naming the offending field."""
    data = _json_object(raw)
    name = data.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("`name` is required and must be a string.", param="name")
    models = data.get("models", ["*"])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidRequest("`models` must be a list of model id globs.", param="models")
    try:
        check_new_key(name, models)
    except ValueError as exc:
        param = "models" if "model" in str(exc) else "name"
        raise InvalidRequest(f"Invalid key: {exc}.", param=param) from None
    limits = KeyLimits(*(_limit(data, field) for field in LIMIT_FIELDS))
    return KeySpec(name, tuple(models), limits)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    # Strict, like the config: a misspelt limit must not silently mean "unlimited".
    unknown = sorted(set(data) - KEY_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(KEY_FIELDS))
        raise InvalidRequest(
            f"Unknown field `{unknown[0]}` (allowed: {allowed}).", param=unknown[0]
        )
    return data


def _limit(data: Mapping[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{field}` must be a positive integer or null.", param=field)
    return value


def parse_usage_query(query_string: bytes, now: float | None = None) -> UsageQuery:
    """`key` and `since` from the query string; an empty value means no filter."""
    try:
        pairs = parse_qsl(query_string.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise InvalidRequest("The query string is not valid UTF-8.") from None
    params = dict(pairs)
    unknown = sorted(set(params) - USAGE_PARAMS)
    if unknown:
        raise InvalidRequest(
            f"Unknown query parameter `{unknown[0]}`; /admin/usage takes key and since.",
            param=unknown[0],
        )
    since = params.get("since") or None
    if since is None:
        return UsageQuery(params.get("key") or None, None)
    try:
        when = parse_since(since, time.time() if now is None else now)
    except ValueError:
        raise InvalidRequest(
            f"since={since!r}: expected a duration like 24h or 7d, or an ISO date.",
            param="since",
        ) from None
    return UsageQuery(params.get("key") or None, when)


def key_json(record: KeyRecord) -> dict[str, Any]:
    limits = record.limits
    return {
        "object": "api_key",
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "models": list(record.models),
        "max_concurrency": limits.max_concurrency,
        "tokens_per_minute": limits.tokens_per_minute,
        "requests_per_minute": limits.requests_per_minute,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


def usage_json(
    query: UsageQuery, totals: Sequence[UsageTotal], names: Mapping[str, str]
) -> dict[str, Any]:
    rows = [
        {"key_id": t.key_id, "key_name": names.get(t.key_id), "model": t.model, **_sums([t])}
        for t in totals
    ]
    return {
        "object": "usage",
        "key": query.key_id,
        "since": query.since,
        "data": rows,
        "total": _sums(totals),
    }


def _sums(totals: Sequence[UsageTotal]) -> dict[str, Any]:
    return {
        "requests": sum(t.requests for t in totals),
        "prompt_tokens": sum(t.prompt_tokens for t in totals),
        "completion_tokens": sum(t.completion_tokens for t in totals),
        "reasoning_tokens": sum(t.reasoning_tokens for t in totals),
        # Fixed-point: str() of a tiny Decimal would be scientific (1E-12).
        "cost_usd": f"{sum((t.cost_usd for t in totals), Decimal(0)):f}",
    }


async def send_admin_json(ex: Exchange, status: int, payload: Mapping[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = [*JSON_HEADERS, NO_STORE, (b"content-length", str(len(body)).encode())]
    await start_response(ex, status, headers)
    await ex.send({"type": "http.response.body", "body": body, "more_body": False})
