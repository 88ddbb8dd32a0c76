"""A client's view of a rewritten response, assembled as the openai SDK does.

Assembly is strict: it fails on anything a strict client could trip on (a null or
unexpected reasoning key, a tool delta in the wrong shape, two entries for one index in
a chunk, a second finish or usage frame), so a test that assembles a view also checks the
wire shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

_REASONING_KEYS = {
    "reasoning": ("reasoning",),
    "reasoning_content": ("reasoning_content",),
    "both": ("reasoning", "reasoning_content"),
}


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str

    def key(self) -> tuple[str, Any]:
        """Name and arguments, parsed when they are JSON (replicas differ in spacing)."""
        try:
            return self.name, json.loads(self.arguments)
        except ValueError:
            return self.name, self.arguments


@dataclass(frozen=True)
class View:
    reasoning: str | None
    content: str | None
    tool_calls: tuple[Call, ...]
    finish_reason: str | None
    usage: dict[str, Any] | None
    warning: str | None = None

    def key(self) -> tuple[Any, ...]:
        """Everything a client acts on; tool call ids left out (they are random)."""
        return (
            self.reasoning,
            self.content,
            tuple(c.key() for c in self.tool_calls),
            self.finish_reason,
            self.usage,
            self.warning is not None,
        )


@dataclass
class _Calls:
    ids: dict[int, str] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    arguments: dict[int, list[str]] = field(default_factory=dict)

    def add(self, entry: dict[str, Any]) -> None:
        index = entry["index"]
        function = entry.get("function", {})
        if index not in self.ids:
            assert isinstance(entry.get("id"), str) and entry["id"], (
                f"first delta without id: {entry}"
            )
            assert entry.get("type") == "function", f"first delta without type: {entry}"
            assert isinstance(function.get("name"), str), f"first delta without name: {entry}"
            self.ids[index], self.names[index] = entry["id"], function["name"]
            self.arguments[index] = []
        else:
            assert "type" not in entry and "id" not in entry, f"later delta with header: {entry}"
            assert "name" not in function, f"later delta with a name: {entry}"
        arguments = function.get("arguments")
        if arguments is not None:
            assert isinstance(arguments, str)
            self.arguments[index].append(arguments)

    def calls(self) -> tuple[Call, ...]:
        return tuple(
            Call(self.ids[i], self.names[i], "".join(self.arguments[i])) for i in sorted(self.ids)
        )


def assemble_stream(payloads: Iterable[bytes], field_name: str = "reasoning") -> View:
    """The view of choice 0 of a chat stream."""
    reasoning: list[str] = []
    content: list[str] = []
    calls = _Calls()
    finish: list[str] = []
    usage: list[dict[str, Any]] = []
    warning = None
    for payload in payloads:
        frame = orjson.loads(payload)
        assert "error" not in frame
        if frame["choices"] == []:
            usage.append(frame["usage"])
            continue
        assert not usage, "a choice frame after the usage frame"
        if "usage" in frame and frame["usage"] is not None:
            assert isinstance(frame["usage"], dict)
        for choice in frame["choices"]:
            assert choice["index"] == 0
            assert not finish, "a frame after the finish frame"
            delta = choice["delta"]
            _check_reasoning_keys(delta, field_name)
            if (text := _reasoning_of(delta, field_name)) is not None:
                reasoning.append(text)
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            entries = delta.get("tool_calls") or []
            indexes = [e["index"] for e in entries]
            assert len(indexes) == len(set(indexes)), f"one index twice in a chunk: {entries}"
            for entry in entries:
                calls.add(entry)
            if choice.get("finish_reason") is not None:
                finish.append(choice["finish_reason"])
                warning = choice.get("tera_warning")
    assert len(usage) <= 1, "more than one usage frame"
    return View(
        reasoning="".join(reasoning) or None,
        content="".join(content) or None,
        tool_calls=calls.calls(),
        finish_reason=finish[0] if finish else None,
        usage=_counts(usage[0]) if usage else None,
        warning=warning,
    )


def assemble_message(payload: bytes, field_name: str = "reasoning") -> View:
    """The view of choice 0 of a non-streamed chat response."""
    body = orjson.loads(payload)
    choice = body["choices"][0]
    message = choice["message"]
    for key in ("reasoning", "reasoning_content"):
        wanted = key in _REASONING_KEYS[field_name]
        assert (key in message) == wanted, f"message reasoning keys: {sorted(message)}"
    calls = []
    for call in message.get("tool_calls") or []:
        assert isinstance(call["id"], str) and call["id"] and call["type"] == "function"
        calls.append(Call(call["id"], call["function"]["name"], call["function"]["arguments"]))
    return View(
        reasoning=_reasoning_of(message, field_name) or None,
        content=message.get("content") or None,
        tool_calls=tuple(calls),
        finish_reason=choice["finish_reason"],
        usage=_counts(body["usage"]),
        warning=choice.get("tera_warning"),
    )


def assemble_completion_stream(payloads: Iterable[bytes]) -> tuple[str, dict[str, Any] | None]:
    """Text and usage of a /v1/completions stream."""
    text: list[str] = []
    usage = None
    for payload in payloads:
        frame = orjson.loads(payload)
        if frame["choices"] == []:
            assert usage is None
            usage = _counts(frame["usage"])
        for choice in frame["choices"]:
            text.append(choice["text"])
    return "".join(text), usage


def _check_reasoning_keys(delta: dict[str, Any], field_name: str) -> None:
    for key in ("reasoning", "reasoning_content"):
        if key in delta:
            assert key in _REASONING_KEYS[field_name], f"unexpected {key} in {delta}"
            assert isinstance(delta[key], str) and delta[key], f"noise {key} in {delta}"
    if field_name == "both" and ("reasoning" in delta or "reasoning_content" in delta):
        assert delta.get("reasoning") == delta.get("reasoning_content"), delta


def _reasoning_of(part: dict[str, Any], field_name: str) -> str | None:
    value = part.get(_REASONING_KEYS[field_name][0])
    return value if isinstance(value, str) else None


def _counts(usage: dict[str, Any]) -> dict[str, Any]:
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "reasoning_tokens": details.get("reasoning_tokens"),
    }
