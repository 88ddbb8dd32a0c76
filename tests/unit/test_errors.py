"""vLLM's error bodies map to the seeds' shape, keeping the status."""

from __future__ import annotations

import orjson
import pytest

from tera_proxy.errors import ServiceUnavailable, from_upstream, stream_error_payload


@pytest.mark.parametrize(
    ("status", "body", "etype"),
    [
        (400, b'{"error":{"message":"bad","type":"Bad Request","param":"x","code":400}}',
         "invalid_request_error"),
        (400, b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}',
         "invalid_request_error"),
        (404, b'{"error":{"message":"The model `x` does not exist.","type":"NotFoundError",'
              b'"param":"model","code":404}}', "model_not_found"),
        (500, b'{"error":{"message":"boom","type":"InternalServerError","code":500}}',
         "server_error"),
        (503, b'{"error":"The model is currently scaling. Please try again later."}',
         "service_unavailable"),
        (400, b'{"object":"error","message":"old","type":"BadRequestError","code":400}',
         "invalid_request_error"),
        (502, b"<html>bad gateway</html>", "server_error"),
    ],
)
def test_upstream_error_mapping(status: int, body: bytes, etype: str) -> None:
    """Each vLLM error body becomes {"error": {message, type, code}} with the status kept."""
    error = from_upstream(status, body)
    payload = orjson.loads(error.body())["error"]
    assert error.status == status
    assert payload["type"] == etype
    assert payload["message"]
    assert isinstance(payload["code"], str)


def test_upstream_unauthorized_is_a_gateway_fault() -> None:
    """A replica's 401 (the gateway's own key) is a server error, not the client's."""
    error = from_upstream(401, b'{"error":"Unauthorized"}')
    assert error.status == 500
    assert error.type == "server_error"


def test_flat_message_is_kept() -> None:
    """The message of a pre-0.10 flat error body is kept."""
    error = from_upstream(400, b'{"object":"error","message":"old style","code":400}')
    assert error.message == "old style"


def test_retry_after_header() -> None:
    """A 503 carries Retry-After rounded up to whole seconds."""
    assert ServiceUnavailable("x", retry_after=2.2).headers() == [(b"retry-after", b"3")]


def test_stream_error_frame_mapping() -> None:
    """An in-stream vLLM error object maps by its code."""
    error = stream_error_payload(
        {"message": "Request id x already running.", "type": "BadRequestError", "code": 400}
    )
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert stream_error_payload({"message": "boom", "code": 500}).type == "server_error"
