"""Rewriting of one streamed choice's deltas: a chain of small steps over a decoded delta.

Like a structlog processor chain, each step reads and edits the delta in turn:
``take reasoning`` (either vLLM field name) → ``fix tool deltas`` → ``split text``
(proxy-side ``<think>`` and ``<tool_call>`` parsing, only when the profile asks) →
``write reasoning`` (the profile's field). State that outlives a frame (held text, tool calls
emitted so far, reasoning characters the proxy split out) lives in ``ChoiceRewriter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tera_proxy.config import RewriteProfile

from .facts import RequestFacts
from .fields import put_reasoning, snapshot, take_reasoning
from .hermes import ParsedCall
from .text import Channel, Piece, TextSplitter
from .tools import JsonDict, ToolLedger, spread_entries

_ABSENT = object()


@dataclass(slots=True)
class DeltaWork:
    """One delta on its way through the steps."""

    delta: JsonDict
    finishing: bool
    reasoning: list[str] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    entries: list[JsonDict] = field(default_factory=list)
    changed: bool = False


@dataclass(frozen=True, slots=True)
class DeltaOut:
    delta: JsonDict
    # Tool-call entries beyond the delta's own, one frame per group (see spread_entries).
    more: tuple[list[JsonDict], ...]
    changed: bool
    # False when the delta has nothing left to say (all its text is held for later).
    keep: bool


def parses_reasoning(profile: RewriteProfile) -> bool:
    return profile.parse_reasoning == "think"


def parses_tools(profile: RewriteProfile, facts: RequestFacts) -> bool:
    # Like vLLM, look for calls only when the client offered tools the model may call.
    return profile.parse_tools == "hermes" and facts.tools_sent


class ChoiceRewriter:
    def __init__(self, profile: RewriteProfile, facts: RequestFacts) -> None:
        think, tools = parses_reasoning(profile), parses_tools(profile, facts)
        self.splitter = (
            TextSplitter(think=think, tools=tools, prefilled=facts.think_prefilled)
            if think or tools
            else None
        )
        self.ledger = ToolLedger()
        self.reasoning_chars = 0
        self.finished = False
        self._field = profile.reasoning_field

    def __repr__(self) -> str:
        return f"<ChoiceRewriter {self.splitter!r} {self.ledger!r} finished={self.finished}>"

    @property
    def idle(self) -> bool:
        return self.splitter is None or self.splitter.idle

    def rewrite(self, delta: JsonDict, *, finishing: bool) -> DeltaOut:
        work = DeltaWork(delta, finishing)
        before = snapshot(delta)
        self._take_reasoning(work)
        self._fix_tool_deltas(work)
        self._split_text(work)
        put_reasoning(delta, "".join(work.reasoning), self._field, message=False)
        work.changed = work.changed or snapshot(delta) != before
        groups = spread_entries(work.entries)
        if groups:
            delta["tool_calls"] = groups[0]
        self.finished = self.finished or finishing
        return DeltaOut(delta, tuple(groups[1:]), work.changed or len(groups) > 1, _says(work))

    def _take_reasoning(self, work: DeltaWork) -> None:
        upstream = take_reasoning(work.delta)
        if upstream:
            work.reasoning.append(upstream)
            if self.splitter is not None:
                work.pieces.extend(self.splitter.trust_replica())

    def _split_text(self, work: DeltaWork) -> None:
        if self.splitter is None:
            return
        delta = work.delta
        original = delta.get("content", _ABSENT)
        text = original if isinstance(original, str) else ""
        if text:
            work.pieces.extend(self.splitter.feed(text))
        if work.finishing:
            work.pieces.extend(self.splitter.finish())
        if not work.pieces and not text:
            return
        content = self._sort_pieces(work)
        if content:
            delta["content"] = content
        elif text:
            del delta["content"]
        work.changed = work.changed or delta.get("content", _ABSENT) != original

    def _sort_pieces(self, work: DeltaWork) -> str:
        """Reasoning and calls into the work; the content text is returned."""
        content: list[str] = []
        for piece in work.pieces:
            if isinstance(piece, ParsedCall):
                work.entries.extend(self.ledger.add_parsed(piece))
                work.changed = True
            elif piece.channel is Channel.REASONING:
                work.reasoning.append(piece.text)
                self.reasoning_chars += len(piece.text)
            else:
                content.append(piece.text)
        return "".join(content)

    def _fix_tool_deltas(self, work: DeltaWork) -> None:
        entries = work.delta.pop("tool_calls", None)
        if entries is None:
            return
        fixed, changed = self.ledger.fix_deltas(entries if isinstance(entries, list) else [])
        work.entries.extend(fixed)
        work.changed = work.changed or changed or not fixed


def _says(work: DeltaWork) -> bool:
    """Whether the rewritten delta is worth a frame (a finish always is)."""
    delta = work.delta
    if work.finishing or not work.changed:
        return True
    text = delta.get("content")
    return bool(
        "role" in delta or work.entries or (isinstance(text, str) and text) or work.reasoning
    )
