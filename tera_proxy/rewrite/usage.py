"""Token usage: read from a replica, normalised for the client, estimated when missing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .facts import CHARS_PER_TOKEN


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed tokens of one response; completion_tokens include reasoning_tokens."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None = None
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def read_usage(value: Any) -> Usage | None:
    """The Usage in a replica's ``usage`` object, or None when it is absent or malformed."""
    if not isinstance(value, dict):
        return None
    prompt, completion = _count(value.get("prompt_tokens")), _count(value.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = value.get("completion_tokens_details")
    reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    return Usage(prompt, completion, reasoning)


def normalise_usage_json(value: dict[str, Any], usage: Usage) -> bool:
    """Write totals and a known reasoning count into a replica's usage object; True if changed."""
    changed = False
    if value.get("total_tokens") != usage.total_tokens:
        value["total_tokens"] = usage.total_tokens
        changed = True
    if usage.reasoning_tokens is None:
        return changed
    details = value.get("completion_tokens_details")
    if not isinstance(details, dict):
        value["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
        return True
    if details.get("reasoning_tokens") != usage.reasoning_tokens:
        details["reasoning_tokens"] = usage.reasoning_tokens
        return True
    return changed


def usage_json(usage: Usage) -> dict[str, Any]:
    """The OpenAI ``usage`` object for a Usage the proxy had to compute itself."""
    value: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.reasoning_tokens is not None:
        value["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return value


def settle_usage(
    replica: Usage | None,
    *,
    prompt_estimate: int,
    completion_estimate: int,
    reasoning_chars: int | None,
) -> Usage:
    """The response's Usage: the replica's counts when it sent them, else an estimate.

    reasoning_chars is the length of the reasoning the proxy split out itself (None when it
    split nothing); it yields a reasoning count only where the replica reported none.
    """
    if replica is None:
        replica = Usage(prompt_estimate, completion_estimate, estimated=True)
    if replica.reasoning_tokens is not None or reasoning_chars is None:
        return replica
    counted = min(replica.completion_tokens, chars_to_tokens(reasoning_chars))
    return Usage(replica.prompt_tokens, replica.completion_tokens, counted, replica.estimated)


def chars_to_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
