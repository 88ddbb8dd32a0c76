"""What the simulated model generates for a request, decided before any I/O: the token
sequence (Plan), the non-streaming message (Answer) and the streamed deltas (Steps)."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from backends.sim.config import SimConfig
from backends.sim.request import GenRequest, ToolCall, ToolMode
from backends.sim.wire import StreamToolFinish, Wire

CONTENT_WORDS = (
    " alpha", " beta", " gamma", " delta", " epsilon", " zeta", " eta", " theta",
    " iota", " kappa", " lambda", " mu", " nu", " xi", " omicron", " pi",
    " rho", " sigma", " tau", " upsilon", " phi", " chi", " psi", " omega",
)  # fmt: skip
REASONING_WORDS = (
    " consider", " recall", " weigh", " check", " plan", " verify", " compare", " infer",
)  # fmt: skip
# Characters per streamed fragment of tool arguments or JSON documents.
FRAGMENT_CHARS = 5


class Kind(enum.Enum):
    REASONING = "reasoning"
    CONTENT = "content"
    TOOL_HEADER = "tool_header"  # the hermes `<tool_call>` opening with the name
    TOOL_ARGS = "tool_args"
    HIDDEN = "hidden"  # generated, but held back by the parser (closing tags)
    FINISH = "finish"  # only on Steps: the finish chunk without new text


class Finish(enum.Enum):
    """The engine's reason; the API may still report tool_calls."""

    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True, slots=True)
class Piece:
    kind: Kind
    text: str


_CONTENT = tuple(Piece(Kind.CONTENT, w) for w in CONTENT_WORDS)
_REASONING = tuple(Piece(Kind.REASONING, w) for w in REASONING_WORDS)
_THINK_AS_TEXT = tuple(Piece(Kind.CONTENT, w) for w in REASONING_WORDS)
_OPEN_HIDDEN = Piece(Kind.HIDDEN, "<think>")
_CLOSE_HIDDEN = Piece(Kind.HIDDEN, "</think>")


@dataclass(frozen=True, slots=True)
class Plan:
    pieces: tuple[Piece, ...]  # one per generated token, after the max_tokens cut
    finish: Finish
    tool: ToolCall | None
    # The tool call is plain hermes text in content (no tool parser).
    tool_as_text: bool

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def reasoning_tokens(self) -> int:
        return sum(1 for p in self.pieces if p.kind is Kind.REASONING)

    @property
    def tool_streamed(self) -> bool:
        return any(p.kind is Kind.TOOL_HEADER for p in self.pieces)

    def __repr__(self) -> str:
        return f"<Plan tokens={len(self.pieces)} finish={self.finish.value}>"


def make_plan(req: GenRequest, config: SimConfig) -> Plan:
    taken = tuple(itertools.islice(_natural(req, config), req.max_tokens + 1))
    cut = len(taken) > req.max_tokens
    tool_as_text = req.tool is not None and req.tool.mode is ToolMode.AUTO and not config.parsers
    return Plan(
        pieces=taken[: req.max_tokens],
        finish=Finish.LENGTH if cut else Finish.STOP,
        tool=req.tool,
        tool_as_text=tool_as_text,
    )


def _natural(req: GenRequest, config: SimConfig) -> Iterator[Piece]:
    """Everything the model would say with no max_tokens; endless with ignore_eos."""
    if req.thinking:
        yield from _thinking(config)
    if req.tool is not None:
        yield from _tool_pieces(req.tool, config.parsers)
    elif req.json_doc is not None:
        yield from (Piece(Kind.CONTENT, f) for f in fragments(req.json_doc))
    elif req.ignore_eos:
        yield from itertools.cycle(_CONTENT)
    else:
        yield from itertools.islice(itertools.cycle(_CONTENT), config.output_tokens)


def _thinking(config: SimConfig) -> Iterator[Piece]:
    """The tags are generated tokens either way; a reasoning parser holds them back.
    Nothing else sits between them, so a proxy-side parser recovers exactly the
    reasoning and content a replica with --reasoning-parser sends."""
    count = config.reasoning_tokens
    if config.parsers:
        yield _OPEN_HIDDEN
        yield from itertools.islice(itertools.cycle(_REASONING), count)
        yield _CLOSE_HIDDEN
        return
    yield Piece(Kind.CONTENT, "<think>")
    yield from itertools.islice(itertools.cycle(_THINK_AS_TEXT), count)
    yield Piece(Kind.CONTENT, "</think>")


def _tool_pieces(tool: ToolCall, parsers: bool) -> Iterator[Piece]:
    args = (Piece(Kind.TOOL_ARGS, f) for f in fragments(tool.arguments))
    if tool.mode is not ToolMode.AUTO:
        # Forced choices are guided JSON: the engine emits the arguments directly.
        yield Piece(Kind.TOOL_HEADER, "")
        yield from args
        return
    head = f'<tool_call>\n{{"name": "{tool.name}", "arguments": '
    tail = "}\n</tool_call>"
    if not parsers:
        yield Piece(Kind.CONTENT, head)
        yield from (Piece(Kind.CONTENT, f) for f in fragments(tool.arguments))
        yield Piece(Kind.CONTENT, tail)
        return
    yield Piece(Kind.TOOL_HEADER, head)
    yield from args
    yield Piece(Kind.HIDDEN, tail)


def fragments(text: str) -> list[str]:
    return [text[i : i + FRAGMENT_CHARS] for i in range(0, len(text), FRAGMENT_CHARS)] or [""]


@dataclass(frozen=True, slots=True)
class Answer:
    """One non-streaming choice."""

    reasoning: str | None
    content: str | None
    tool_arguments: str | None  # None: the message has no tool call
    finish_reason: str


def make_answer(plan: Plan, wire: Wire) -> Answer:
    by_kind: dict[Kind, list[str]] = {}
    for piece in plan.pieces:
        by_kind.setdefault(piece.kind, []).append(piece.text)
    reasoning = "".join(by_kind[Kind.REASONING]) if Kind.REASONING in by_kind else None
    content = "".join(by_kind[Kind.CONTENT]) if Kind.CONTENT in by_kind else None
    arguments = None
    tool = plan.tool
    if tool is not None and not plan.tool_as_text and Kind.TOOL_HEADER in by_kind:
        args = "".join(by_kind.get(Kind.TOOL_ARGS, []))
        if tool.mode is not ToolMode.AUTO:
            arguments, content = args, ""
        elif plan.finish is Finish.STOP:
            arguments = args
        else:
            # A cut hermes call does not parse: the raw text stays in content.
            content = "".join(by_kind[Kind.TOOL_HEADER]) + args
    return Answer(reasoning, content, arguments, _nonstream_finish(plan, wire, arguments))


def _nonstream_finish(plan: Plan, wire: Wire, arguments: str | None) -> str:
    tool = plan.tool
    if plan.finish is Finish.LENGTH or tool is None or arguments is None:
        return plan.finish.value
    if tool.mode is ToolMode.NAMED or (tool.mode is ToolMode.REQUIRED and wire.required_stops):
        return "stop"
    return "tool_calls"


def stream_finish(plan: Plan, wire: Wire) -> str:
    engine = plan.finish.value
    if plan.tool is None or not plan.tool_streamed:
        return engine
    named = plan.tool.mode is ToolMode.NAMED
    rule = wire.stream_tool_finish
    if rule is StreamToolFinish.ALWAYS:
        return "tool_calls"
    if rule is StreamToolFinish.UNLESS_NAMED:
        return engine if named else "tool_calls"
    return "tool_calls" if plan.finish is Finish.STOP and not named else engine


@dataclass(frozen=True, slots=True)
class Step:
    """One streamed delta per choice; `ticks` token-times after the previous one."""

    kind: Kind
    text: str
    ticks: int
    tokens: int  # completion tokens so far (continuous usage)
    reasoning: int  # reasoning tokens so far
    finish: str | None = None


def make_steps(plan: Plan, per_chunk: int, finish_reason: str) -> list[Step]:
    steps: list[Step] = []
    texts: list[str] = []
    kind, since, count, reasoning = Kind.FINISH, 0, 0, 0
    for piece in plan.pieces:
        full = len(texts) == per_chunk or kind is Kind.TOOL_HEADER
        if texts and (piece.kind is not kind or full):
            steps.append(Step(kind, "".join(texts), since, count, reasoning))
            texts, since = [], 0
        since, count = since + 1, count + 1
        reasoning += piece.kind is Kind.REASONING
        if piece.kind is not Kind.HIDDEN:
            kind = piece.kind
            texts.append(piece.text)
    if plan.finish is Finish.LENGTH and texts:
        steps.append(Step(kind, "".join(texts), since, count, reasoning, finish_reason))
        return steps
    if texts:
        steps.append(Step(kind, "".join(texts), since, count, reasoning))
        since = 0
    # The end-of-sequence token takes one more token-time and shows no text.
    steps.append(Step(Kind.FINISH, "", since + 1, count, reasoning, finish_reason))
    return steps
