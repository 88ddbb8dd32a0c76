"""Errors real vLLM raises reach the client through the proxy with their status and in
the `{"error": {"message", "type", "code"}}` shape."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.vllm.conftest import NOT_SERVED, TINY

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session")]

HI = [{"role": "user", "content": "Hello"}]
# Far more than the workers' --max-model-len of 2048 tokens, far less than the body limit.
LONG = [{"role": "user", "content": "import os\n" * 3000}]


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The error object of the response body, checked for the documented shape."""
    body = exc.response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "code"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    return error


async def test_model_no_replica_lists_is_refused_with_503(client: openai.AsyncOpenAI) -> None:
    """A catalog model no worker serves: the prober saw /v1/models, so no replica is tried
    and the client gets 503 in the error shape (vLLM's 404 would need a stale listing)."""
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=NOT_SERVED, messages=HI, max_tokens=4)
    assert caught.value.status_code == 503
    error = error_of(caught.value)
    assert NOT_SERVED in error["message"]


async def test_invalid_temperature_is_a_400(client: openai.AsyncOpenAI) -> None:
    """temperature -1 is refused with 400 naming the parameter."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=TINY, messages=HI, max_tokens=4, temperature=-1)
    error = error_of(caught.value)
    assert "temperature" in error["message"]


async def test_parameter_only_vllm_checks_is_a_400(client: openai.AsyncOpenAI) -> None:
    """min_tokens above max_tokens passes the proxy; vLLM's 400 is relayed."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=TINY, messages=HI, max_tokens=4, extra_body={"min_tokens": 50}
        )
    error = error_of(caught.value)
    assert "min_tokens" in error["message"]


async def test_prompt_too_long_is_a_400(client: openai.AsyncOpenAI) -> None:
    """A prompt beyond the model's context gets vLLM's context-length 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=TINY, messages=LONG, max_tokens=4)
    error = error_of(caught.value)
    assert "context length" in error["message"]


async def test_prompt_too_long_is_a_400_even_when_streaming(client: openai.AsyncOpenAI) -> None:
    """With stream=true the validation error is still a plain HTTP 400, not a stream."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=TINY, messages=LONG, max_tokens=4, stream=True)
    assert caught.value.response.headers["content-type"].startswith("application/json")
    error_of(caught.value)
