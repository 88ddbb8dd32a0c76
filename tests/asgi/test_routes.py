"""Routing and the error boundary, through real ASGI calls (no network)."""

from __future__ import annotations

import orjson
import pytest

from tera_proxy.app import create_app
from tera_proxy.config import parse_config
from tests.helpers import asgi_call

CONFIG = {
    "replicas": [{"name": "a", "url": "http://127.0.0.1:9"}],
    "models": [
        {
            "id": "openai/gpt-oss-20b",
            "context_length": 131072,
            "max_output_tokens": 4096,
            "input_price_per_million": 0.07,
            "output_price_per_million": 0.25,
            "replicas": ["a"],
        }
    ],
}


@pytest.fixture
def app(tmp_path):  # type: ignore[no-untyped-def]
    return create_app(parse_config({**CONFIG, "auth": {"enabled": False}}), state_dir=tmp_path)


def error_of(body: bytes) -> dict:
    payload = orjson.loads(body)
    assert set(payload) == {"error"}
    assert {"message", "type", "code"} <= set(payload["error"])
    return payload["error"]


async def chat(app, body: bytes, headers=None):  # type: ignore[no-untyped-def]
    return await asgi_call(app, "POST", "/v1/chat/completions", body, headers)


@pytest.mark.parametrize(
    "path",
    ["/v1/moderations", "/v1/embeddings", "/v1/images/generations", "/v1/fine_tuning/jobs"],
)
async def test_not_offered_endpoints(app, path: str) -> None:  # type: ignore[no-untyped-def]
    """Endpoints the product does not offer answer 404 saying so, in JSON."""
    status, headers, body = await asgi_call(app, "POST", path, b"{}")
    assert status == 404
    assert "not offered" in error_of(body)["message"]
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-tera-request-id"]


async def test_unknown_path(app) -> None:  # type: ignore[no-untyped-def]
    """An unknown path answers 404 in the same JSON shape."""
    status, _, body = await asgi_call(app, "GET", "/nope")
    assert status == 404
    assert error_of(body)["type"] == "not_found_error"


async def test_wrong_method(app) -> None:  # type: ignore[no-untyped-def]
    """GET on a POST route answers 405 with Allow and the JSON shape."""
    status, headers, body = await asgi_call(app, "GET", "/v1/chat/completions")
    assert status == 405
    assert headers[b"allow"] == b"POST"
    assert error_of(body)["code"] == "method_not_allowed"


async def test_malformed_json(app) -> None:  # type: ignore[no-untyped-def]
    """A body that is not JSON is a 400 invalid_request_error."""
    status, _, body = await chat(app, b'{"model": ')
    assert status == 400
    assert error_of(body)["type"] == "invalid_request_error"


async def test_unknown_model(app) -> None:  # type: ignore[no-untyped-def]
    """A model outside the catalog is 404 model_not_found pointing to /v1/models."""
    body = b'{"model":"nope","messages":[{"role":"user","content":"x"}]}'
    status, _, body = await chat(app, body)
    assert status == 404
    error = error_of(body)
    assert error["type"] == "model_not_found"
    assert "/v1/models" in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": None}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"max_completion_tokens": 4097}, "max_completion_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"n": 0}, "n"),
    ],
)
async def test_invalid_values(app, extra: dict, param: str) -> None:  # type: ignore[no-untyped-def]
    """Invalid sampling values and limits are 400 naming the parameter."""
    body = {"model": "openai/gpt-oss-20b", "messages": [{"role": "user", "content": "x"}]}
    body.update(extra)
    if body["messages"] is None:
        del body["messages"]
    status, _, out = await chat(app, orjson.dumps(body))
    assert status == 400
    assert error_of(out)["param"] == param


async def test_image_input_is_text_only(app) -> None:  # type: ignore[no-untyped-def]
    """An image content part is rejected as text-only."""
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    body = {"model": "openai/gpt-oss-20b", "messages": [{"role": "user", "content": content}]}
    status, _, out = await chat(app, orjson.dumps(body))
    assert status == 400
    assert "text-only" in error_of(out)["message"]


async def test_models_list_shape(app) -> None:  # type: ignore[no-untyped-def]
    """/v1/models is an OpenAI list with context, max output and pricing."""
    status, _, body = await asgi_call(app, "GET", "/v1/models")
    assert status == 200
    data = orjson.loads(body)
    assert data["object"] == "list"
    model = data["data"][0]
    assert model["id"] == "openai/gpt-oss-20b"
    assert model["object"] == "model"
    assert model["context_length"] == 131072
    assert model["max_output_tokens"] == 4096
    assert model["pricing"]["input_per_million_tokens"] == 0.07


async def test_model_by_id_with_slash(app) -> None:  # type: ignore[no-untyped-def]
    """/v1/models/{id} works for ids that contain a slash, 404 for unknown ones."""
    status, _, body = await asgi_call(app, "GET", "/v1/models/openai/gpt-oss-20b")
    assert status == 200
    assert orjson.loads(body)["id"] == "openai/gpt-oss-20b"
    status, _, body = await asgi_call(app, "GET", "/v1/models/openai/nope")
    assert status == 404
    assert error_of(body)["type"] == "model_not_found"


async def test_client_request_id_kept_when_sane(app) -> None:  # type: ignore[no-untyped-def]
    """A well-formed X-Request-ID is echoed; a bad one is replaced."""
    _, headers, _ = await asgi_call(app, "GET", "/health", headers=[(b"x-request-id", b"abc-123")])
    assert headers[b"x-tera-request-id"] == b"abc-123"
    bad = b"x" * 500
    _, headers, _ = await asgi_call(app, "GET", "/health", headers=[(b"x-request-id", bad)])
    assert headers[b"x-tera-request-id"].startswith(b"req_")


async def test_generated_request_ids_are_unique(app) -> None:  # type: ignore[no-untyped-def]
    """Each request without an id gets a fresh one."""
    ids = {(await asgi_call(app, "GET", "/health"))[1][b"x-tera-request-id"] for _ in range(20)}
    assert len(ids) == 20


async def test_body_too_large(app) -> None:  # type: ignore[no-untyped-def]
    """A body over the limit is a 413 in the JSON shape."""
    status, _, body = await chat(app, b" " * (4 * 1024 * 1024 + 1))
    assert status == 413
    assert error_of(body)["type"] == "invalid_request_error"
