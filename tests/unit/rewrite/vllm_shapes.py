"""Synthetic upstream responses in the shape each vLLM version sends (wire notes §1, §2, §7).

- "0.11.0": ``reasoning_content`` only; a tool call makes the stream's finish_reason
  ``tool_calls`` even when named or cut by length; non-streaming ``required`` says
  ``stop``; the named-tool stream's first delta has no ``type`` (emulated, #16340).
- "0.13" (0.11.1-0.15): ``reasoning`` and ``reasoning_content``, with
  ``"reasoning_content": null`` on every other delta; the last argument fragment comes as
  a ``type: null`` catch-up delta on the finish chunk (#38603); cut calls say tool_calls.
- "0.32" (>=0.16): ``reasoning`` only; the first tool delta and the first argument fragment
  are two entries for one index in one chunk; ``length`` is kept; usage has
  ``completion_tokens_details.reasoning_tokens``.
- "inline": a replica started without parsers: ``<think>`` and ``<tool_call>`` are text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

REPLICA_VERSIONS = ("0.11.0", "0.13", "0.32")
VERSIONS = (*REPLICA_VERSIONS, "inline")
Splitter = Callable[[str], list[str]]

_TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]
_ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def every(n: int) -> Splitter:
    return lambda text: [text[i : i + n] for i in range(0, len(text), n)]


@dataclass(frozen=True)
class Scenario:
    reasoning: str = ""
    content: str = ""
    # (name, arguments as the model wrote them); the last one may be cut (not valid JSON)
    calls: tuple[tuple[str, str], ...] = ()
    engine_finish: str = "stop"
    tool_choice: str = "auto"  # auto | required | named
    prompt_tokens: int = 20
    completion_tokens: int = 40
    reasoning_tokens: int = 12
    max_tokens: int = 100
    # False: the budget ran out inside the reasoning (no </think>, no content)
    thinking_done: bool = True

    @property
    def cut(self) -> bool:
        return bool(self.calls) and not _is_json(self.calls[-1][1])

    def request(self, *, stream: bool, include_usage: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "m",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "max_tokens": self.max_tokens,
            "stream": stream,
        }
        if stream and include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.calls or self.tool_choice != "auto":
            body["tools"] = _TOOLS
            body["tool_choice"] = (
                {"type": "function", "function": {"name": self.calls[0][0]}}
                if self.tool_choice == "named"
                else self.tool_choice
            )
        return body

    def inline_text(self) -> str:
        close = "</think>" if self.thinking_done else ""
        think = f"<think>{self.reasoning}{close}" if self.reasoning else ""
        calls = "\n".join(_call_text(name, args) for name, args in self.calls)
        return think + self.content + calls


BY_THREE = every(3)


def stream(s: Scenario, version: str, split: Splitter = BY_THREE) -> list[bytes]:
    """The ``data:`` payloads the replica sends (include_usage on, as the proxy asks)."""
    if version == "inline":
        deltas = [{"content": piece} for piece in split(s.inline_text())]
        return _frames(version, deltas, {}, s.engine_finish, _usage(s, version))
    deltas = [_reasoning_delta(version, r) for r in split(s.reasoning)]
    deltas += [_content_delta(version, c) for c in split(s.content)]
    catch_up: dict[str, Any] = {}
    for index, (name, arguments) in enumerate(s.calls):
        tool_deltas = _tool_deltas(version, index, name, split(arguments), s)
        if version == "0.13" and index == len(s.calls) - 1 and len(tool_deltas) > 1:
            catch_up = tool_deltas.pop()
        deltas += tool_deltas
    return _frames(version, deltas, catch_up, _stream_finish(s, version), _usage(s, version))


def response(s: Scenario, version: str) -> bytes:
    """The non-streamed body the replica sends."""
    message: dict[str, Any] = {"role": "assistant", "content": _message_content(s, version)}
    message.update(refusal=None, annotations=None, audio=None, function_call=None)
    calls = (
        [] if version == "inline" else [_message_call(i, n, a) for i, (n, a) in enumerate(s.calls)]
    )
    if calls or version in ("0.11.0", "0.13"):
        message["tool_calls"] = calls
    reasoning = s.reasoning if version != "inline" and s.reasoning else None
    if version != "0.11.0":
        message["reasoning"] = reasoning
    if version in ("0.11.0", "0.13"):
        message["reasoning_content"] = reasoning
    choice = {"index": 0, "message": message, "logprobs": None}
    choice.update(finish_reason=_body_finish(s, version), stop_reason=None, token_ids=None)
    usage = _usage(s, version)
    usage["prompt_tokens_details"] = None
    return orjson.dumps(
        {**_ENVELOPE, "object": "chat.completion", "choices": [choice], "usage": usage}
    )


def _frames(
    version: str,
    deltas: list[dict[str, Any]],
    last: dict[str, Any],
    finish: str,
    usage: dict[str, Any],
) -> list[bytes]:
    role: dict[str, Any] = {"role": "assistant", "content": ""}
    if version == "0.13":
        role["reasoning_content"] = None
    frames = [_chunk(role, first=True)]
    frames += [_chunk(d) for d in deltas]
    frames.append(_chunk(last, finish=finish))
    frames.append(orjson.dumps({**_ENVELOPE, "choices": [], "usage": usage}))
    return frames


def _chunk(delta: dict[str, Any], *, first: bool = False, finish: str | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    if not first:
        choice["token_ids"] = None
    frame: dict[str, Any] = {**_ENVELOPE, "choices": [choice]}
    if first:
        frame["prompt_token_ids"] = None
    return orjson.dumps(frame)


def _reasoning_delta(version: str, text: str) -> dict[str, Any]:
    if version == "0.11.0":
        return {"reasoning_content": text}
    if version == "0.13":
        return {"reasoning": text, "reasoning_content": text}
    return {"reasoning": text}


def _content_delta(version: str, text: str) -> dict[str, Any]:
    if version == "0.13":
        return {"content": text, "reasoning_content": None}
    return {"content": text}


def _tool_deltas(
    version: str, index: int, name: str, fragments: list[str], s: Scenario
) -> list[dict[str, Any]]:
    header: dict[str, Any] = {"id": f"chatcmpl-tool-{index}", "type": "function", "index": index}
    header["function"] = {"name": name}
    if version == "0.11.0" and s.tool_choice == "named":
        del header["type"]
    later = [{"index": index, "function": {"arguments": f}} for f in fragments]
    if version == "0.32":
        entries = [[header, *later[:1]], *([e] for e in later[1:])]
        return [{"content": None, "tool_calls": group} for group in entries]
    deltas = [{"tool_calls": [header]}, *({"tool_calls": [e]} for e in later)]
    if version == "0.13":
        for delta in deltas:
            delta["reasoning_content"] = None
        if len(deltas) > 1:
            deltas[-1]["tool_calls"][0]["type"] = None
    return deltas


def _stream_finish(s: Scenario, version: str) -> str:
    if not s.calls:
        return "stop" if s.engine_finish == "tool_calls" else s.engine_finish
    if version == "0.11.0":
        return "tool_calls"
    if s.tool_choice == "named":
        return s.engine_finish if version == "0.32" and s.engine_finish == "length" else "stop"
    if version == "0.32" and s.engine_finish == "length":
        return "length"
    return "tool_calls"


def _body_finish(s: Scenario, version: str) -> str:
    if not s.calls or version == "inline" or s.engine_finish == "length":
        return s.engine_finish
    if s.tool_choice == "named" or (version == "0.11.0" and s.tool_choice == "required"):
        return "stop"
    return "tool_calls"


def _message_content(s: Scenario, version: str) -> str | None:
    if version == "inline":
        return s.inline_text()
    if s.calls and s.tool_choice != "auto":
        return s.content
    return s.content or None


def _message_call(index: int, name: str, arguments: str) -> dict[str, Any]:
    # vLLM re-dumps non-streamed hermes arguments with json.dumps (spaces after ':' and ',').
    text = json.dumps(json.loads(arguments), ensure_ascii=False)
    function = {"name": name, "arguments": text}
    return {"id": f"chatcmpl-tool-{index}", "type": "function", "function": function}


def _usage(s: Scenario, version: str) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": s.prompt_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "completion_tokens": s.completion_tokens,
    }
    if version == "0.32":
        usage["completion_tokens_details"] = {"reasoning_tokens": s.reasoning_tokens}
    return usage


def _call_text(name: str, arguments: str) -> str:
    opened = f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}'
    return opened if not _is_json(arguments) else opened + "}\n</tool_call>"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
