"""One generation request in flight, and the timed frames of a streamed answer."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from backends.sim.plan import Plan, make_steps, stream_finish
from backends.sim.render import DONE, ChatStream, CompletionStream, Renderer
from backends.sim.request import Endpoint, GenRequest

_ids = random.Random()


def random_hex(chars: int) -> str:
    return f"{_ids.getrandbits(chars * 4):0{chars}x}"


@dataclass(eq=False, slots=True)
class Exchange:
    """Bookkeeping for one generation request; the handler owns it."""

    response_id: str = ""
    dropped: bool = False  # the simulator cut it on purpose: not a client abort
    finished: bool = False  # the whole response was handed to the transport
    tokens: int = 0  # completion tokens generated so far, all choices

    def __repr__(self) -> str:
        state = "dropped" if self.dropped else "finished" if self.finished else "open"
        return f"<Exchange {self.response_id} {state} tokens={self.tokens}>"


def response_id(req: GenRequest, long_ids: bool) -> str:
    prefix = "chatcmpl-" if req.endpoint is Endpoint.CHAT else "cmpl-"
    return prefix + (req.request_id or random_hex(32 if long_ids else 16))


@dataclass(frozen=True, slots=True)
class Pace:
    """When frames are due: first output after `first`, then one token per `per_token`."""

    start: float
    first: float
    per_token: float

    def due(self, ticks: int) -> float:
        return self.start + self.first + max(0, ticks - 1) * self.per_token


def stream_frames(
    r: Renderer, req: GenRequest, plan: Plan, ex: Exchange, pace: Pace, tool_ids: list[str]
) -> Iterator[tuple[float, bytes]]:
    """(due time, frame) pairs, ending with data: [DONE]; updates ex.tokens as it goes."""
    created = int(time.time())
    model = r.config.models[0]
    choices = range(req.choice_count)
    steps = make_steps(plan, r.config.tokens_per_chunk, stream_finish(plan, r.wire))
    stream: ChatStream | CompletionStream
    if req.endpoint is Endpoint.CHAT:
        stream = ChatStream(r, req, plan, ex.response_id, created, model, tool_ids)
        for i in choices:
            yield pace.due(0), stream.role(i)
    else:
        stream = CompletionStream(r, req, plan, ex.response_id, created, model)
    ticks = 0
    for n, step in enumerate(steps):
        ticks += step.ticks
        due = pace.due(ticks)
        ex.tokens = step.tokens * len(choices)
        for i in choices:
            yield due, stream.step(i, step, n == 0)
    if req.include_usage:
        yield pace.due(ticks), stream.usage_chunk()
    yield pace.due(ticks), DONE
