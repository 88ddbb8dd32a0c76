"""Request validation: pure checks on a parsed body, raising `InvalidRequest`.

Only what a replica would reject late, or what the catalog promises (max output,
text-only), is checked here; unknown fields pass through as vLLM ignores them.
"""

from __future__ import annotations

from typing import Any

from tera_proxy.config import ModelConfig
from tera_proxy.errors import InvalidRequest

INT64 = 2**63
IMAGE_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "audio_url"})
# (low, high, low_inclusive, high_inclusive) for numeric sampling parameters.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "temperature": (0.0, 2.0, True, True),
    "top_p": (0.0, 1.0, False, True),
    "min_p": (0.0, 1.0, True, True),
    "frequency_penalty": (-2.0, 2.0, True, True),
    "presence_penalty": (-2.0, 2.0, True, True),
    "repetition_penalty": (0.0, 2.0**31, False, True),
}
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4
MISSING = "missing_required_parameter"


def check_chat(body: dict[str, Any], model: ModelConfig) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages", MISSING)
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array of message objects.", "messages")
    for i, message in enumerate(messages):
        _check_message(message, i)
    _check_common(body, model)
    _check_tools(body)
    if "logprobs" in body and not isinstance(body["logprobs"], bool | None):
        raise _bad("'logprobs' must be a boolean for chat completions.", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        _int_in(top, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if not body.get("logprobs"):
            raise _bad("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    _check_response_format(body.get("response_format"))


def check_completion(body: dict[str, Any], model: ModelConfig) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("Missing required parameter: 'prompt'.", "prompt", MISSING)
    if not _valid_prompt(prompt):
        raise _bad(
            "'prompt' must be a string, an array of strings, or an array of token ids.", "prompt"
        )
    _check_common(body, model)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        _int_in(logprobs, "logprobs", 0, MAX_TOP_LOGPROBS)


def check_speech(body: dict[str, Any]) -> None:
    if not isinstance(body.get("input"), str) or not body["input"]:
        raise _bad("Missing required parameter: 'input'.", "input", MISSING)


def _check_message(message: Any, i: int) -> None:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _bad(f"messages[{i}] must be an object with a 'role'.", f"messages[{i}]")
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                raise _bad(
                    "This model is text-only: image and audio inputs are not supported.",
                    f"messages[{i}].content[{j}]",
                    "unsupported_content_type",
                )


def _check_common(body: dict[str, Any], model: ModelConfig) -> None:
    for name, (low, high, low_in, high_in) in RANGES.items():
        value = body.get(name)
        if value is not None:
            _number_in(value, name, low, high, low_in, high_in)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        _int_in(value, name, 1, INT64)
        if value > model.max_output_tokens:
            raise _bad(
                f"'{name}' is {value}, above the maximum output of `{model.id}` "
                f"({model.max_output_tokens} tokens).",
                name,
                "max_tokens_too_large",
            )
    _check_optional_ints(body)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean.", "stream")
    if body.get("stream_options") is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        if not isinstance(body["stream_options"], dict):
            raise _bad("'stream_options' must be an object.", "stream_options")
    _check_stop(body.get("stop"))


def _check_optional_ints(body: dict[str, Any]) -> None:
    if body.get("n") is not None:
        _int_in(body["n"], "n", 1, MAX_N)
    if body.get("top_k") is not None:
        _int_in(body["top_k"], "top_k", -1, INT64)
    if body.get("seed") is not None:
        _int_in(body["seed"], "seed", -INT64, INT64 - 1)


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("'stop' must be a string or an array of strings.", "stop")
    if len(stop) > MAX_STOP:
        raise _bad(f"'stop' takes at most {MAX_STOP} sequences.", "stop")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array.", "tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(
                fn.get("name"), str
            ):
                raise _bad(
                    f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}.",
                    f"tools[{i}]",
                )
            names.add(fn["name"])
    _check_tool_choice(body.get("tool_choice"), tools, names)


def _check_tool_choice(choice: Any, tools: Any, names: set[str]) -> None:
    if choice is None or choice == "none":
        return
    if not tools:
        raise _bad("'tool_choice' is only allowed when 'tools' are given.", "tool_choice")
    if choice in ("auto", "required"):
        return
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(
            "'tool_choice' must be 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}.",
            "tool_choice",
        )
    if fn["name"] not in names:
        raise _bad(f"tool_choice names `{fn['name']}`, which is not in 'tools'.", "tool_choice")


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _bad(
            "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
            "response_format",
        )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise _bad(
                "'response_format.json_schema' must be an object with a 'schema'.",
                "response_format",
            )


def _valid_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt)
    if not isinstance(prompt, list) or not prompt:
        return False
    if all(isinstance(p, str) for p in prompt):
        return True
    if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return True
    return all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt
    )


def _number_in(
    value: Any, name: str, low: float, high: float, low_in: bool, high_in: bool
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{name}' must be a number.", name)
    ok_low = value >= low if low_in else value > low
    ok_high = value <= high if high_in else value < high
    if not (ok_low and ok_high):
        lo, hi = ("[" if low_in else "("), ("]" if high_in else ")")
        raise _bad(f"'{name}' is {value}; it must be in {lo}{low:g}, {high:g}{hi}.", name)


def _int_in(value: Any, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer.", name)
    if not low <= value <= high:
        raise _bad(f"'{name}' is {value}; it must be between {low} and {high}.", name)


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)
