"""Turn a request body into a GenRequest, or the SimError vLLM would answer with.
Checks run in vLLM's order: JSON, request schema, model, tools, lengths, sampling."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import orjson

from backends.sim.config import SimConfig
from backends.sim.errors import SimError, bad_request, not_found, sampling_error, validation_error
from backends.sim.schema import example_value

_TOKENS_PER_MESSAGE = 4  # role and template tokens around each chat message


class Endpoint(enum.Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"


class ToolMode(enum.Enum):
    AUTO = "auto"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The single call the simulated model makes; arguments as hermes re-dumps them."""

    name: str
    arguments: str
    mode: ToolMode


@dataclass(frozen=True, slots=True)
class GenRequest:
    endpoint: Endpoint
    stream: bool
    include_usage: bool
    continuous_usage: bool
    n: int
    prompt_tokens: tuple[int, ...]  # one entry per prompt (completions may batch)
    max_tokens: int  # effective budget, after vLLM's defaults and clamping
    ignore_eos: bool
    thinking: bool
    tool: ToolCall | None
    json_doc: str | None  # response_format answer, compact JSON
    request_id: str | None  # the X-Request-Id header, which becomes the response id

    @property
    def choice_count(self) -> int:
        """Choices in the response: n per prompt (completions index = i + prompt*n)."""
        return self.n * len(self.prompt_tokens)

    def __repr__(self) -> str:
        mode = self.tool.mode.value if self.tool else "-"
        return (
            f"<GenRequest {self.endpoint.value} stream={self.stream} n={self.n} "
            f"prompt={sum(self.prompt_tokens)} max_tokens={self.max_tokens} tool={mode}>"
        )


def parse_request(
    endpoint: Endpoint, raw: bytes, config: SimConfig, request_id: str | None
) -> GenRequest:
    body = _decode(raw)
    _check_schema(endpoint, body)
    model = body.get("model")
    if model is not None and model not in config.models:
        raise not_found(config.wire, str(model), config.models)
    tool = _tool_call(body, config)
    prompts = _prompt_tokens(endpoint, body)
    stream_options = body.get("stream_options") or {}
    return GenRequest(
        endpoint=endpoint,
        stream=bool(body.get("stream")),
        include_usage=bool(stream_options.get("include_usage")),
        continuous_usage=bool(stream_options.get("continuous_usage_stats")),
        n=_sampling(body, config),
        prompt_tokens=prompts,
        max_tokens=_budget(endpoint, body, prompts, config),
        ignore_eos=body.get("ignore_eos") is True,
        thinking=endpoint is Endpoint.CHAT and config.reasoning and _thinking_on(body),
        tool=tool,
        json_doc=_json_doc(body) if endpoint is Endpoint.CHAT and tool is None else None,
        request_id=request_id,
    )


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise validation_error("json_invalid", f"body.{exc.pos}", "JSON decode error", 0) from None
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise validation_error("model_attributes_type", "body", msg, 0)
    return body


_TYPES: dict[str, tuple[type, ...]] = {
    "messages": (list,),
    "stream": (bool,),
    "n": (int,),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "tools": (list,),
    "stream_options": (dict,),
    "response_format": (dict,),
    "model": (str,),
}


def _check_schema(endpoint: Endpoint, body: dict[str, Any]) -> None:
    required = "messages" if endpoint is Endpoint.CHAT else "prompt"
    if required not in body:
        raise validation_error("missing", f"body.{required}", "Field required", len(body))
    for key, types in _TYPES.items():
        value = body.get(key)
        if value is not None and not _is_a(value, types):
            name = types[0].__name__
            msg = f"Input should be a valid {name}"
            raise validation_error(f"{name}_type", f"body.{key}", msg, len(body))
    if body.get("stream_options") is not None and not body.get("stream"):
        msg = "Value error, Stream options can only be defined when `stream=True`."
        raise validation_error("value_error", "body", msg, len(body))
    choice = body.get("tool_choice")
    if choice not in (None, "none", "auto") and not body.get("tools"):
        msg = "Value error, When using `tool_choice`, `tools` must be set."
        raise validation_error("value_error", "body", msg, len(body))


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int subclass: a JSON true is not a number here.
    return isinstance(value, types) and isinstance(value, bool) == (bool in types)


def _tool_call(body: dict[str, Any], config: SimConfig) -> ToolCall | None:
    tools: list[dict[str, Any]] = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    choice = body.get("tool_choice", "auto" if tools else "none")
    if not tools:
        return None
    if choice == "none":
        # The model still sees the tools in its prompt and calls one; a server without a
        # tool parser returns that call as text, one with a parser is told not to parse.
        return None if config.parsers else _call(tools[0], ToolMode.AUTO)
    if choice == "auto":
        if not config.auto_tool_choice:
            raise bad_request(
                '"auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set"
            )
        return _call(tools[0], ToolMode.AUTO)
    if choice == "required":
        return _call(tools[0], ToolMode.REQUIRED)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    chosen = [t for t in tools if t["name"] == name]
    if not chosen:
        msg = "The tool specified in `tool_choice` does not match any of the specified `tools`"
        if config.wire.verbose_errors:
            raise bad_request(msg + " (parameter=tool_choice)", "tool_choice")
        raise bad_request(msg)
    return _call(chosen[0], ToolMode.NAMED)


def _call(function: dict[str, Any], mode: ToolMode) -> ToolCall:
    arguments = example_value(function.get("parameters") or {"type": "object"})
    # hermes re-serialises with json.dumps, so separators carry spaces.
    return ToolCall(function["name"], json.dumps(arguments), mode)


def _prompt_tokens(endpoint: Endpoint, body: dict[str, Any]) -> tuple[int, ...]:
    if endpoint is Endpoint.CHAT:
        messages = body["messages"]
        words = sum(_words(m.get("content")) for m in messages if isinstance(m, dict))
        return (words + _TOKENS_PER_MESSAGE * len(messages),)
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return (max(1, len(prompt.split())),)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return (len(prompt),)
    if isinstance(prompt, list) and prompt:
        return tuple(max(1, len(p.split())) if isinstance(p, str) else len(p) for p in prompt)
    raise validation_error("list_type", "body.prompt", "Input should be a valid list", len(body))


def _words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(len(str(p.get("text", "")).split()) for p in content if isinstance(p, dict))
    return 0


def _budget(
    endpoint: Endpoint, body: dict[str, Any], prompts: tuple[int, ...], config: SimConfig
) -> int:
    limit, wire, longest = config.max_model_len, config.wire, max(prompts)
    if longest >= limit:
        raise _prompt_too_long(config, longest)
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if asked is None and endpoint is Endpoint.COMPLETIONS:
        asked = 16
    if asked is None:
        return limit - longest
    if asked < 1:
        msg = f"max_tokens must be at least 1, got {asked}."
        raise sampling_error(wire, msg, "max_tokens", asked)
    if wire.reject_over_budget and longest + asked > limit:
        raise bad_request(
            f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's "
            f"maximum context length is {limit} tokens and your request has {longest} input "
            f"tokens ({asked} > {limit} - {longest})."
        )
    if asked > limit:
        msg = (
            f"max_tokens={asked} cannot be greater than max_model_len={limit}. "
            "Please request fewer output tokens."
        )
        raise sampling_error(wire, msg, "max_tokens", asked)
    return min(int(asked), limit - longest)


def _prompt_too_long(config: SimConfig, tokens: int) -> SimError:
    limit = config.max_model_len
    if config.wire.reject_over_budget:
        return bad_request(
            f"This model's maximum context length is {limit} tokens. However, your request "
            f"has {tokens} input tokens. Please reduce the length of the input messages."
        )
    msg = (
        f"This model's maximum context length is {limit} tokens. However, your prompt contains "
        f"{tokens} input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt."
    )
    return sampling_error(config.wire, msg, "input_tokens", tokens)


def _sampling(body: dict[str, Any], config: SimConfig) -> int:
    wire = config.wire
    temperature = body.get("temperature")
    if temperature is not None and temperature < 0:
        msg = f"temperature must be non-negative, got {float(temperature)}."
        raise sampling_error(wire, msg, "temperature", float(temperature))
    if temperature is not None and temperature > 2:
        msg = f"temperature must be at most 2.0, got {float(temperature)}."
        raise sampling_error(wire, msg, "temperature", float(temperature))
    top_p = body.get("top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise sampling_error(wire, f"top_p must be in (0, 1], got {float(top_p)}.", "top_p", top_p)
    n = body.get("n")
    n = 1 if n is None else n
    if n < 1:
        raise sampling_error(wire, f"n must be at least 1, got {n}.", "n", n)
    return int(n)


def _thinking_on(body: dict[str, Any]) -> bool:
    kwargs = body.get("chat_template_kwargs")
    return not (isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False)


def _json_doc(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(example_value(schema or {"type": "object"})).decode()
    if fmt.get("type") == "json_object":
        return '{"result":"alpha"}'
    return None
