"""Hermes tool-call blocks and tool-call arguments: parse, validate, repair.

A hermes block is the text between ``<tool_call>`` and ``</tool_call>``:
``{"name": "get_weather", "arguments": {"city": "Paris"}}``. Arguments become the JSON
text of the ``arguments`` value (``json.dumps`` with spaces, as vLLM's own hermes parser
writes them). A block that is not valid JSON (a call cut by ``max_tokens``, a model slip)
is salvaged: the name by pattern, the arguments as the raw text after ``"arguments":``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import orjson

_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')
_CLOSERS = {"{": "}", "[": "]"}


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """A tool call the proxy found in generated text."""

    name: str
    arguments: str


def parse_block(block: str, *, closed: bool) -> ParsedCall | None:
    """The call in a hermes block, or None when it names no function (then it is text)."""
    try:
        value = json.loads(block)
    except ValueError:
        return _salvage(block, closed=closed)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ParsedCall(value["name"], arguments)


def _salvage(block: str, *, closed: bool) -> ParsedCall | None:
    found = _NAME.search(block)
    if found is None:
        return None
    try:
        name = json.loads(f'"{found.group(1)}"')
    except ValueError:
        name = found.group(1)
    start = _ARGUMENTS.search(block, found.end()) or _ARGUMENTS.search(block)
    arguments = block[start.end() :].rstrip() if start else ""
    if closed and arguments.endswith("}"):
        # The block's own closing brace; what is left is the arguments value as written.
        arguments = arguments[:-1].rstrip()
    return ParsedCall(name, arguments)


def is_json_object(text: str) -> bool:
    """Whether tool-call arguments are what OpenAI promises: the JSON text of an object."""
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def repair_suffix(text: str) -> str | None:
    """Text that completes arguments a replica left unclosed, or None if that cannot be done.

    Only two known vLLM hermes slips are repaired (wire notes §7.3): ``{}`` dropped for a
    parameterless tool, and final closing braces dropped with multi-token steps. Anything
    else (a cut string, a missing value) is left for the client to see.
    """
    if not text.strip():
        return "{}"
    closers = _missing_closers(text)
    if closers and is_json_object(text + closers):
        return closers
    return None


def _missing_closers(text: str) -> str | None:
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in "}]" and (not stack or stack.pop() != char):
            return None
    return None if in_string else "".join(reversed(stack))
