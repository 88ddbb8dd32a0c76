"""Request bodies, SSE parsing and a POST shortcut shared by the simulator tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from backends.sim import SimServer

SimFactory = Callable[..., contextlib.AbstractAsyncContextManager[SimServer]]

# Fast defaults: tests care about shapes and counts, not realistic pacing.
FAST = {"ttft": 0.0, "token_delay": 0.0005, "models": ("m",)}

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def sse(text: str) -> list[Any]:
    """The payloads of `data:` frames; '[DONE]' stays a string."""
    frames = [block for block in text.split("\n\n") if block]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[6:] if f[6:] == "[DONE]" else orjson.loads(f[6:]) for f in frames]


async def post(
    http: aiohttp.ClientSession, sim: SimServer, body: Any, path: str = "/v1/chat/completions",
    **kwargs: Any,
) -> tuple[int, Any]:  # fmt: skip
    """POST and return (status, parsed JSON body or the list of SSE payloads)."""
    async with http.post(sim.url + path, json=body, **kwargs) as resp:
        text = await resp.text()
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            return resp.status, sse(text)
        return resp.status, orjson.loads(text)


def chunks(frames: list[Any]) -> list[dict[str, Any]]:
    """Frames with choices (no usage-only chunk, no [DONE])."""
    return [f for f in frames if isinstance(f, dict) and f.get("choices")]


def deltas(frames: list[Any]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks(frames) if "delta" in c["choices"][0]]
