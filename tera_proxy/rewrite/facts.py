"""What the rewriters need to know about the client's request, read once from its body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

RequestKind = Literal["chat", "completion"]

# Rough characters per token for the estimates used when a replica reports no usage.
CHARS_PER_TOKEN = 4
# Chat templates add a few tokens of framing per message (role markers, separators).
TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """The request as the rewriters see it.

    client_wants_usage: the client itself sent ``stream_options.include_usage: true`` (the
    proxy always asks replicas for usage, so the final usage frame is dropped otherwise).
    continuous_usage: the client also asked for ``continuous_usage_stats`` (vLLM only honours
    it together with include_usage); otherwise running per-chunk usage is removed.
    tool_choice_name: the function the client forced by name, if any.
    tools_sent: the client sent tools the model may call (``tool_choice`` is not "none").
    prompt_estimate: a rough prompt token count, used only when a replica reports no usage.
    max_tokens: the client's output budget, used to tell a truncated tool call from a
    malformed one when the replica reports ``tool_calls`` or ``stop`` for it.
    think_prefilled: the model's chat template already opened ``<think>`` in the prompt, so
    generated text starts inside the reasoning (Qwen3-*-Thinking-2507, DeepSeek-R1-0528).
    """

    kind: RequestKind
    stream: bool = False
    client_wants_usage: bool = False
    continuous_usage: bool = False
    tool_choice_name: str | None = None
    tools_sent: bool = False
    prompt_estimate: int = 0
    max_tokens: int | None = None
    n: int = 1
    think_prefilled: bool = False


def facts_from_request(kind: RequestKind, body: dict[str, Any]) -> RequestFacts:
    """Facts from a client's request body (already validated by the proxy)."""
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    stream = body.get("stream") is True
    wants_usage = stream and options.get("include_usage") is True
    tool_choice = body.get("tool_choice")
    return RequestFacts(
        kind=kind,
        stream=stream,
        client_wants_usage=wants_usage,
        continuous_usage=wants_usage and options.get("continuous_usage_stats") is True,
        tool_choice_name=_forced_name(tool_choice),
        tools_sent=bool(body.get("tools")) and tool_choice != "none",
        prompt_estimate=estimate_prompt_tokens(body),
        max_tokens=_max_tokens(body),
        n=_positive_int(body.get("n")) or 1,
    )


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough prompt size: characters / 4 plus per-message framing."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_message_chars(m) for m in messages if isinstance(m, dict))
        framing = TOKENS_PER_MESSAGE * len(messages)
    else:
        chars, framing = _text_chars(body.get("prompt")), 0
    tools = body.get("tools")
    if tools:
        chars += len(orjson.dumps(tools))
    return framing + -(-chars // CHARS_PER_TOKEN)


def _message_chars(message: dict[str, Any]) -> int:
    calls = message.get("tool_calls")
    return _text_chars(message.get("content")) + (len(orjson.dumps(calls)) if calls else 0)


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        # Content parts ({"type": "text", "text": ...}) or a list of prompts / token ids.
        return sum(
            _text_chars(v.get("text")) if isinstance(v, dict) else _text_chars(v) for v in value
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return CHARS_PER_TOKEN  # a token id
    return 0


def _forced_name(tool_choice: Any) -> str | None:
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        return None
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _max_tokens(body: dict[str, Any]) -> int | None:
    return _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
