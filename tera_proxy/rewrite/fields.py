"""The reasoning field(s) a model's profile promises, whatever the replica's vLLM version sent.

vLLM ≤0.11.0 sends ``reasoning_content``; 0.11.1-0.15 both keys (and
``"reasoning_content": null`` on every other delta); ≥0.16 ``reasoning``. Read either,
preferring ``reasoning``; write exactly the profile's field, or both with equal values.
Deltas never carry a null or empty reasoning key; messages always carry the key(s), null
when there was no reasoning, like every other message field vLLM writes.
"""

from __future__ import annotations

from typing import Any

from tera_proxy.config import ReasoningField

REASONING, REASONING_CONTENT = "reasoning", "reasoning_content"
_KEYS: dict[str, tuple[str, ...]] = {
    "reasoning": (REASONING,),
    "reasoning_content": (REASONING_CONTENT,),
    "both": (REASONING, REASONING_CONTENT),
}


def take_reasoning(part: dict[str, Any]) -> str | None:
    """Remove both reasoning keys from a delta or message; the reasoning text, if any."""
    reasoning = part.pop(REASONING, None)
    legacy = part.pop(REASONING_CONTENT, None)
    if isinstance(reasoning, str):
        return reasoning
    return legacy if isinstance(legacy, str) else None


def put_reasoning(
    part: dict[str, Any], text: str | None, field: ReasoningField, *, message: bool
) -> None:
    if not text and not message:
        return
    for key in _KEYS[field]:
        part[key] = text or None


def snapshot(part: dict[str, Any]) -> tuple[Any, Any]:
    """The reasoning keys as they are, to tell afterwards whether a rewrite changed them."""
    return part.get(REASONING, _ABSENT), part.get(REASONING_CONTENT, _ABSENT)


_ABSENT = object()
