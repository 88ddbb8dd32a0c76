"""One finish_reason for a choice, whatever the replica's vLLM version said.

- no tool call emitted: the replica's reason, except ``tool_calls`` becomes ``stop``
  (vLLM 0.32 says ``tool_calls`` for ``tool_choice: required`` even when it parsed none);
- a call emitted and the replica said ``length``: ``length`` (0.33 semantics);
- a call whose arguments are not a JSON object at the end, and the completion used the
  whole ``max_tokens`` budget: the call was cut, so ``length`` (≤0.29 say ``tool_calls``);
- otherwise ``stop`` when the client forced the tool by name, else ``tool_calls``;
  other engine reasons (``abort``, ``repetition``) are kept.

Arguments that are still not a JSON object: if the call was not cut, the two known vLLM
slips (missing ``{}``, missing closing braces) are repaired by appending the missing text;
anything else is kept as the replica sent it, and the choice carries a vendor field
``"tera_warning"`` naming the calls, so a client can tell a broken call from a good one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .hermes import is_json_object, repair_suffix
from .tools import CallRecord

WARNING_KEY = "tera_warning"
_DECIDED = ("stop", "tool_calls")


@dataclass(frozen=True, slots=True)
class FinishDecision:
    reason: str
    # (tool call index, text appended to its arguments)
    repairs: tuple[tuple[int, str], ...] = ()
    # tool call indexes whose arguments stay invalid
    invalid: tuple[int, ...] = ()

    @property
    def warning(self) -> str | None:
        if not self.invalid:
            return None
        names = ", ".join(f"tool_calls[{i}]" for i in self.invalid)
        return f"arguments of {names} are not a valid JSON object"


def needs_budget(upstream: str, calls: Sequence[CallRecord]) -> bool:
    """Whether the decision depends on the completion's token count (not known yet in a stream)."""
    return upstream in _DECIDED and any(not is_json_object(c.arguments) for c in calls)


def decide_finish(
    upstream: str,
    calls: Sequence[CallRecord],
    *,
    forced_name: str | None,
    hit_max_tokens: bool,
) -> FinishDecision:
    if not calls:
        return FinishDecision("stop" if upstream == "tool_calls" else upstream)
    bad = [c for c in calls if not is_json_object(c.arguments)]
    if upstream == "length" or (bad and hit_max_tokens):
        return FinishDecision("length", invalid=tuple(c.index for c in bad))
    repairs: list[tuple[int, str]] = []
    invalid: list[int] = []
    for call in bad:
        suffix = repair_suffix(call.arguments)
        if suffix is None:
            invalid.append(call.index)
        else:
            repairs.append((call.index, suffix))
    if upstream in _DECIDED:
        upstream = "stop" if forced_name else "tool_calls"
    return FinishDecision(upstream, tuple(repairs), tuple(invalid))
