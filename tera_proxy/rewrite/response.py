"""The non-streaming rewriter: the same normalisation as the stream, on one body.

It reuses the stream's building blocks (text splitter, tool ledger, finish decision) on
the whole text at once, so a response and its streamed twin assemble to the same
reasoning, content, tool calls, finish_reason and usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tera_proxy.config import RewriteProfile

from .choice import parses_reasoning, parses_tools
from .facts import RequestFacts
from .fields import put_reasoning, take_reasoning
from .finish import WARNING_KEY, decide_finish
from .hermes import ParsedCall
from .text import Channel, TextSplitter
from .tools import JsonDict, ToolLedger
from .usage import (
    Usage,
    chars_to_tokens,
    normalise_usage_json,
    read_usage,
    settle_usage,
    usage_json,
)


@dataclass(frozen=True, slots=True)
class _Counted:
    """What one choice contributes to the usage."""

    generated_chars: int
    split_reasoning_chars: int | None


def rewrite_response(
    payload: bytes, profile: RewriteProfile, facts: RequestFacts
) -> tuple[bytes, Usage]:
    """The body to send the client (the same bytes object when unchanged) and its usage."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return payload, settle_usage(
            None, prompt_estimate=facts.prompt_estimate, completion_estimate=0, reasoning_chars=None
        )
    pristine = orjson.loads(payload)
    replica = read_usage(body.get("usage"))
    choices = body.get("choices")
    counted = [
        _rewrite_choice(c, profile, facts, replica) if facts.kind == "chat" else _count_text(c)
        for c in (choices if isinstance(choices, list) else [])
        if isinstance(c, dict)
    ]
    usage = _settle(replica, facts, counted)
    if isinstance(body.get("usage"), dict):
        normalise_usage_json(body["usage"], usage)
    else:
        body["usage"] = usage_json(usage)
    return (payload if body == pristine else orjson.dumps(body)), usage


def _settle(replica: Usage | None, facts: RequestFacts, counted: list[_Counted]) -> Usage:
    split = [c.split_reasoning_chars for c in counted if c.split_reasoning_chars is not None]
    return settle_usage(
        replica,
        prompt_estimate=facts.prompt_estimate,
        completion_estimate=chars_to_tokens(sum(c.generated_chars for c in counted)),
        reasoning_chars=sum(split) if split else None,
    )


def _count_text(choice: JsonDict) -> _Counted:
    text = choice.get("text")
    return _Counted(len(text) if isinstance(text, str) else 0, None)


def _rewrite_choice(
    choice: JsonDict, profile: RewriteProfile, facts: RequestFacts, replica: Usage | None
) -> _Counted:
    message = choice.get("message")
    if not isinstance(message, dict):
        return _Counted(0, None)
    ledger = ToolLedger()
    raw_calls = message.get("tool_calls")
    calls, _ = ledger.fix_message_calls(raw_calls if isinstance(raw_calls, list) else [])
    reasoning = take_reasoning(message)
    content = message.get("content")
    generated = len(reasoning or "") + (len(content) if isinstance(content, str) else 0)
    split_chars: int | None = None
    splitter = _splitter(profile, facts)
    if splitter is not None:
        if reasoning:
            splitter.trust_replica()
        split_reasoning, message["content"], parsed = _split(splitter, content)
        split_chars = len(split_reasoning) if splitter.decides_reasoning else None
        reasoning = (reasoning or "") + split_reasoning
        calls += [ledger.message_call(call) for call in parsed]
    put_reasoning(message, reasoning, profile.reasoning_field, message=True)
    if calls or isinstance(raw_calls, list):
        message["tool_calls"] = calls
    _finish(choice, ledger, calls, facts, replica)
    return _Counted(generated + sum(len(c.arguments) for c in ledger.calls), split_chars)


def _splitter(profile: RewriteProfile, facts: RequestFacts) -> TextSplitter | None:
    think, tools = parses_reasoning(profile), parses_tools(profile, facts)
    if not (think or tools):
        return None
    return TextSplitter(think=think, tools=tools, prefilled=facts.think_prefilled)


def _split(splitter: TextSplitter, content: Any) -> tuple[str, str | None, list[ParsedCall]]:
    """Reasoning, content and calls of a whole message's text."""
    pieces = splitter.feed(content) if isinstance(content, str) and content else []
    pieces += splitter.finish()
    reasoning: list[str] = []
    text: list[str] = []
    calls: list[ParsedCall] = []
    for piece in pieces:
        if isinstance(piece, ParsedCall):
            calls.append(piece)
        else:
            (reasoning if piece.channel is Channel.REASONING else text).append(piece.text)
    kept = "".join(text)
    # vLLM writes "" (not null) for content next to forced tool calls; keep its choice.
    return "".join(reasoning), kept or ("" if content == "" else None), calls


def _finish(
    choice: JsonDict,
    ledger: ToolLedger,
    calls: list[JsonDict],
    facts: RequestFacts,
    replica: Usage | None,
) -> None:
    upstream = choice.get("finish_reason")
    if not isinstance(upstream, str):
        return
    limit = facts.max_tokens
    decision = decide_finish(
        upstream,
        ledger.calls,
        forced_name=facts.tool_choice_name,
        hit_max_tokens=bool(replica and limit and replica.completion_tokens >= limit),
    )
    for index, suffix in decision.repairs:
        ledger.extend(index, suffix)
        _append_arguments(calls[index], suffix)
    choice["finish_reason"] = decision.reason
    if decision.warning:
        choice[WARNING_KEY] = decision.warning


def _append_arguments(call: JsonDict, suffix: str) -> None:
    function = call.get("function")
    if not isinstance(function, dict):
        function = call["function"] = {}
    arguments = function.get("arguments")
    function["arguments"] = (arguments if isinstance(arguments, str) else "") + suffix
