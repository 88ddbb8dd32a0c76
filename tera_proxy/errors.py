"""The proxy's error tree and the one JSON shape every error takes.

    ProxyError                      {"error": {"message", "type", "code"}} + status
    ├── InvalidRequest              400 invalid_request_error
    ├── AuthenticationFailed        401 authentication_error
    ├── PermissionDenied            403 permission_error
    ├── ModelNotFound               404 model_not_found
    ├── EndpointNotFound            404 not_found_error
    ├── MethodNotAllowed            405 method_not_allowed
    ├── PayloadTooLarge             413 invalid_request_error
    ├── RateLimited                 429 rate_limit_error      (+ Retry-After)
    ├── ServerError                 500 server_error
    └── ServiceUnavailable          503 service_unavailable   (+ Retry-After)

Errors that come back from a replica are mapped once, in `from_upstream`, keeping the
replica's status and message and replacing vLLM's inconsistent type strings.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

RETRY_AFTER_DEFAULT = 1.0


class ProxyError(Exception):
    status = 500
    type = "server_error"
    code = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after))).encode())]


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_error"
    code = "model_not_permitted"


class ModelNotFound(ProxyError):
    status = 404
    type = "model_not_found"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or is not served here. "
            "GET /v1/models lists the models you can use.",
            param="model",
        )


class EndpointNotFound(ProxyError):
    status = 404
    type = "not_found_error"
    code = "endpoint_not_offered"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", self.allow.encode())]


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServerError(ProxyError):
    status = 500
    type = "server_error"
    code = "server_error"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = RETRY_AFTER_DEFAULT) -> None:
        super().__init__(message, retry_after=retry_after)


_BY_STATUS: dict[int, type[ProxyError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    413: PayloadTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
}


def from_upstream(status: int, body: bytes) -> ProxyError:
    """Map a replica's error response to the seeds' shape, keeping its status.

    Handles vLLM's `{"error": {...}}`, the flat pre-0.10 `{"object": "error", ...}`,
    `{"error": "Unauthorized"}` and bodies that are not JSON at all.
    """
    message, param = _upstream_message(body)
    if status == 404:
        # A replica that does not know the model is a catalog/replica mismatch, not
        # the client's fault in the catalog sense, but the status is kept.
        err: ProxyError = ProxyError(message, param=param)
        err.status, err.type, err.code = 404, "model_not_found", "model_not_found"
        return err
    if status == 401:
        # The replica rejected the proxy's own credentials: a gateway fault.
        return ServerError("The upstream replica rejected the gateway's credentials.")
    cls = _BY_STATUS.get(status)
    if cls is ServiceUnavailable:
        return ServiceUnavailable(message)
    if cls is not None:
        return cls(message, param=param)
    err = ServerError(message) if status >= 500 else InvalidRequest(message, param=param)
    err.status = status
    return err


def _upstream_message(body: bytes) -> tuple[str, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "The upstream replica returned an error."), None
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict):
            param = inner.get("param")
            return str(inner.get("message") or "Upstream error."), (
                str(param) if param is not None else None
            )
        if isinstance(inner, str):
            return inner, None
    return "The upstream replica returned an error.", None


def stream_error_payload(frame_error: Any) -> ProxyError:
    """Map the `error` object of a vLLM in-stream error frame to our shape."""
    if isinstance(frame_error, dict):
        code = frame_error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        message = str(frame_error.get("message") or "The upstream replica failed.")
        return from_upstream(status, orjson.dumps({"error": {"message": message}}))
    return ServerError(str(frame_error) if frame_error else "The upstream replica failed.")
