"""Incremental splitting of generated text into reasoning, content and hermes tool calls.

For replicas started without ``--reasoning-parser`` / ``--tool-call-parser``: the model's
``<think>...</think>`` and ``<tool_call>...</tool_call>`` arrive as plain content. The
splitter takes the text in pieces cut anywhere (inside a tag too) and gives the same
result for every cut: a suffix that could still become a tag is held, and released as
soon as the next text shows it cannot be one. Held text is bounded by the longest tag,
except inside a tool call, which is kept whole until ``</tool_call>`` (hermes calls are
short, and a client cannot act on half a call).

Rules, matching vLLM's qwen3 reasoning parser and hermes tool parser on the same text:
- reasoning is recognised only when the text opens with ``<think>`` (whitespace before it
  is dropped); otherwise all text is content and a stray ``</think>`` stays in it. With
  ``prefilled`` (the template opened ``<think>`` in the prompt) the text starts inside the
  reasoning; without a ``</think>`` it is all reasoning, as vLLM's deepseek_r1 parser does;
- only the first reasoning block is split out, and text inside it is never a tool call
  (vLLM loses such calls too); nothing is stripped from the reasoning or the content;
- ``<tool_call>`` blocks become calls; whitespace after a call is dropped (templates put
  newlines between calls); a block that names no function is released as content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from .hermes import ParsedCall, parse_block

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


class Phase(Enum):
    START = "start"
    REASONING = "reasoning"
    CONTENT = "content"
    CALL = "call"


class Channel(Enum):
    REASONING = "reasoning"
    CONTENT = "content"


@dataclass(frozen=True, slots=True)
class Text:
    channel: Channel
    text: str


Piece = Text | ParsedCall


class TextSplitter:
    """Splits one choice's generated text; ``feed`` as it streams, ``finish`` at the end."""

    def __init__(self, *, think: bool, tools: bool, prefilled: bool = False) -> None:
        self._tools = tools
        self._prefilled = prefilled
        self._think = think
        self._trusting = False
        self._phase = Phase.START if think else Phase.CONTENT
        self._hold = ""
        self._after_call = False
        self._call_parts: list[str] = []
        self._call_tail = ""

    def __repr__(self) -> str:
        return f"<TextSplitter {self._phase.value} hold={self._hold!r}>"

    @property
    def idle(self) -> bool:
        """True when text without a ``<`` would pass through as content unchanged."""
        return self._phase is Phase.CONTENT and not self._hold and not self._after_call

    @property
    def decides_reasoning(self) -> bool:
        """Whether this splitter, not the replica, decides what is reasoning."""
        return self._think and not self._trusting

    def trust_replica(self) -> list[Piece]:
        """The replica parses reasoning itself: stop looking for ``<think>``."""
        if self._phase is not Phase.START:
            return []
        self._trusting = True
        held, self._hold = self._hold, ""
        self._phase = Phase.CONTENT
        return self.feed(held) if held else []

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        rest = self._hold + text
        self._hold = ""
        while rest:
            rest = self._STEPS[self._phase](self, rest, out)
        return out

    def finish(self) -> list[Piece]:
        """Everything still held, as the stream ends (an open call is parsed as it stands)."""
        out: list[Piece] = []
        held, self._hold = self._hold, ""
        if self._phase is Phase.CALL:
            block = "".join(self._call_parts)
            self._call_parts, self._call_tail = [], ""
            self._take_block(block, out, closed=False)
        elif self._phase is Phase.REASONING or (self._phase is Phase.START and self._prefilled):
            _emit(out, Channel.REASONING, held)
        else:
            _emit(out, Channel.CONTENT, held)
        return out

    def _start(self, text: str, out: list[Piece]) -> str:
        opened = text.lstrip()
        if opened.startswith(THINK_OPEN):
            self._phase = Phase.REASONING
            return opened[len(THINK_OPEN) :]
        if THINK_OPEN.startswith(opened):
            self._hold = text
            return ""
        self._phase = Phase.REASONING if self._prefilled else Phase.CONTENT
        return text

    def _reasoning(self, text: str, out: list[Piece]) -> str:
        end = text.find(THINK_CLOSE)
        if end >= 0:
            _emit(out, Channel.REASONING, text[:end])
            self._phase = Phase.CONTENT
            return text[end + len(THINK_CLOSE) :]
        self._hold_partial(text, THINK_CLOSE, Channel.REASONING, out)
        return ""

    def _content(self, text: str, out: list[Piece]) -> str:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return ""
            self._after_call = False
        if not self._tools:
            _emit(out, Channel.CONTENT, text)
            return ""
        start = text.find(CALL_OPEN)
        if start >= 0:
            _emit(out, Channel.CONTENT, text[:start])
            self._phase = Phase.CALL
            return text[start + len(CALL_OPEN) :]
        self._hold_partial(text, CALL_OPEN, Channel.CONTENT, out)
        return ""

    def _call(self, text: str, out: list[Piece]) -> str:
        probe = self._call_tail + text
        found = probe.find(CALL_CLOSE)
        if found < 0:
            self._call_parts.append(text)
            self._call_tail = probe[-(len(CALL_CLOSE) - 1) :]
            return ""
        end = found - len(self._call_tail)  # negative when the tag began in earlier text
        block = "".join(self._call_parts)
        block = block[: len(block) + end] if end < 0 else block + text[:end]
        self._call_parts, self._call_tail = [], ""
        self._phase = Phase.CONTENT
        self._take_block(block, out, closed=True)
        return text[end + len(CALL_CLOSE) :]

    def _take_block(self, block: str, out: list[Piece], *, closed: bool) -> None:
        call = parse_block(block, closed=closed)
        if call is None:
            _emit(out, Channel.CONTENT, CALL_OPEN + block + (CALL_CLOSE if closed else ""))
            return
        out.append(call)
        self._after_call = True

    def _hold_partial(self, text: str, tag: str, channel: Channel, out: list[Piece]) -> None:
        keep = _partial_tag(text, tag)
        _emit(out, channel, text[: len(text) - keep])
        self._hold = text[len(text) - keep :]

    _STEPS: ClassVar[dict[Phase, Callable[[TextSplitter, str, list[Piece]], str]]] = {
        Phase.START: _start,
        Phase.REASONING: _reasoning,
        Phase.CONTENT: _content,
        Phase.CALL: _call,
    }


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of text that is a proper beginning of tag."""
    # A tag has one "<", at its start, so only the last "<" can begin a partial tag.
    start = text.rfind("<", max(0, len(text) - len(tag) + 1))
    if start < 0 or not tag.startswith(text[start:]):
        return 0
    return len(text) - start


def _emit(out: list[Piece], channel: Channel, text: str) -> None:
    if not text:
        return
    last = out[-1] if out else None
    if isinstance(last, Text) and last.channel is channel:
        out[-1] = Text(channel, last.text + text)
    else:
        out.append(Text(channel, text))
