"""Tool-call deltas in one shape, whatever the replica's vLLM version.

Every call's first delta carries ``index``, ``id`` and ``type: "function"`` (and the name);
later deltas carry ``index`` and argument fragments only. Fixed here: a first delta without
``type`` or ``id`` (named tool_choice, vLLM #16340), ``type: null`` / repeated ids on later
deltas (the finish catch-up delta, #38603), empty catch-up deltas. Several entries for one
index in one chunk (vLLM 0.32 hermes) are spread over frames by ``spread_entries``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .hermes import ParsedCall

JsonDict = dict[str, Any]


@dataclass(slots=True)
class CallRecord:
    """One tool call of a choice, as emitted to the client so far."""

    index: int
    name: str
    parts: list[str] = field(default_factory=list)

    @property
    def arguments(self) -> str:
        return "".join(self.parts)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class ToolLedger:
    """The tool calls of one choice: fixes their deltas and remembers their arguments."""

    def __init__(self) -> None:
        self._calls: dict[int, CallRecord] = {}

    def __repr__(self) -> str:
        return f"<ToolLedger calls={sorted(self._calls)}>"

    @property
    def calls(self) -> list[CallRecord]:
        return [self._calls[i] for i in sorted(self._calls)]

    def fix_deltas(self, entries: list[Any]) -> tuple[list[JsonDict], bool]:
        """A replica's ``delta.tool_calls`` in the one shape, and whether anything changed."""
        fixed: list[JsonDict] = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            out = self._fix_delta(entry, position)
            if out is not None:
                fixed.append(out)
        return fixed, fixed != entries

    def _fix_delta(self, entry: JsonDict, position: int) -> JsonDict | None:
        index = entry.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else position
        function = entry.get("function")
        function = function if isinstance(function, dict) else {}
        name, arguments = function.get("name"), function.get("arguments")
        record = self._calls.get(index)
        if record is None:
            record = self._calls[index] = CallRecord(index, name if isinstance(name, str) else "")
            out: JsonDict = {
                "index": index,
                "id": entry.get("id") or new_call_id(),
                "type": "function",
                "function": {k: v for k, v in function.items() if isinstance(v, str)},
            }
        else:
            later: JsonDict = {}
            if isinstance(name, str) and name and not record.name:
                record.name = later["name"] = name
            if isinstance(arguments, str) and arguments:
                later["arguments"] = arguments
            if not later:
                return None
            out = {"index": index, "function": later}
        if isinstance(arguments, str):
            record.parts.append(arguments)
        return out

    def fix_message_calls(self, calls: list[Any]) -> tuple[list[JsonDict], bool]:
        """A replica's ``message.tool_calls`` with ids and types, and whether anything changed."""
        fixed: list[JsonDict] = []
        for call in calls:
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            name, arguments = function.get("name"), function.get("arguments")
            record = self._add(name if isinstance(name, str) else "")
            record.parts.append(arguments if isinstance(arguments, str) else "")
            fixed.append({**call, "id": call.get("id") or new_call_id(), "type": "function"})
        return fixed, fixed != calls

    def add_parsed(self, call: ParsedCall) -> list[JsonDict]:
        """Deltas for a call the proxy parsed: a header, then the arguments as one fragment."""
        record = self._add(call.name)
        record.parts.append(call.arguments)
        header = {
            "index": record.index,
            "id": new_call_id(),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        if not call.arguments:
            return [header]
        return [header, {"index": record.index, "function": {"arguments": call.arguments}}]

    def message_call(self, call: ParsedCall) -> JsonDict:
        """``message.tool_calls`` entry for a call the proxy parsed."""
        self._add(call.name).parts.append(call.arguments)
        return {
            "id": new_call_id(),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }

    def extend(self, index: int, suffix: str) -> None:
        self._calls[index].parts.append(suffix)

    def _add(self, name: str) -> CallRecord:
        index = max(self._calls, default=-1) + 1
        record = self._calls[index] = CallRecord(index, name)
        return record


def spread_entries(entries: list[JsonDict]) -> list[list[JsonDict]]:
    """Entries in order, grouped so that no group holds one index twice (one group a frame)."""
    groups: list[list[JsonDict]] = []
    seen: set[int] = set()
    for entry in entries:
        index = entry["index"]
        if not groups or index in seen:
            groups.append([])
            seen = set()
        groups[-1].append(entry)
        seen.add(index)
    return groups
