"""Who is calling (401) and what they may use (403).

`authenticate` turns the `Authorization: Bearer sk-tera-…` header into a `Principal`
through the key store's in-memory cache. No message or log line ever contains the
presented key, not even a prefix of it: a key pasted in the wrong place must not end up
in someone's logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from tera_proxy.errors import AuthenticationFailed, PermissionDenied
from tera_proxy.keys import KEY_PREFIX, KeyLimits, KeyRecord, well_formed

Headers = Iterable[tuple[bytes, bytes]]  # ASGI: lower-cased names


class KeyLookup(Protocol):
    async def lookup(self, secret: str) -> KeyRecord | None: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: an active key, its model scopes and its limits."""

    key_id: str
    name: str
    models: tuple[str, ...]
    limits: KeyLimits

    @classmethod
    def of(cls, record: KeyRecord) -> Principal:
        return cls(record.id, record.name, record.models, record.limits)


def bearer_secret(headers: Headers) -> str:
    """The key in the Authorization header, or AuthenticationFailed."""
    value = None
    for name, raw in headers:
        if name == b"authorization":
            value = raw
            break
    if value is None:
        raise AuthenticationFailed(
            "Missing API key. Send it as `Authorization: Bearer sk-tera-...`.",
            code="missing_api_key",
        )
    scheme, _, secret = value.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationFailed(
            "The Authorization header must use the Bearer scheme: "
            "`Authorization: Bearer sk-tera-...`."
        )
    secret = secret.strip()
    if not well_formed(secret):
        raise AuthenticationFailed(
            f"Malformed API key: Tera keys start with `{KEY_PREFIX}` followed by at least "
            "32 URL-safe characters."
        )
    return secret


async def authenticate(headers: Headers, keys: KeyLookup) -> Principal:
    """The Principal of an active key, or AuthenticationFailed (401)."""
    record = await keys.lookup(bearer_secret(headers))
    if record is None:
        # Unknown and revoked read the same: the answer must not confirm a key existed.
        raise AuthenticationFailed("Invalid API key: it is unknown or has been revoked.")
    return Principal.of(record)


def permits(principal: Principal, model_id: str) -> bool:
    return any(fnmatchcase(model_id, pattern) for pattern in principal.models)


def authorize(principal: Principal, model_id: str) -> None:
    """PermissionDenied (403) unless one of the key's patterns matches the model."""
    if not permits(principal, model_id):
        raise PermissionDenied(
            f"This API key is not allowed to use the model `{model_id}`. "
            "GET /v1/models lists the models it can use.",
            param="model",
        )


def visible_models(principal: Principal, catalog_ids: Iterable[str]) -> list[str]:
    """The catalog model ids this key may use, in catalog order."""
    return [model_id for model_id in catalog_ids if permits(principal, model_id)]
