"""The streaming rewriter: upstream ``data:`` payloads in, client payloads out.

Hot path: ``feed`` first searches the payload for a few byte patterns (the triggers,
compiled into one regular expression: three times cheaper than a loop of ``in`` tests)
that any frame needing work must contain: a reasoning key the profile does not want, tool
calls, a non-null finish_reason, a usage object, and text or reasoning while the proxy is
splitting ``<think>`` or ``<tool_call>``. vLLM writes compact JSON (pydantic), and a key
pattern such as ``"tool_calls"`` cannot occur inside a JSON string (its quotes would be
escaped), so a frame with none of them is returned as the very same bytes object,
undecoded. Frames written with spaces after colons (not vLLM's style) always take the
slow path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import orjson

from tera_proxy.config import RewriteProfile

from .choice import ChoiceRewriter, DeltaOut, parses_reasoning, parses_tools
from .facts import RequestFacts
from .finish import WARNING_KEY, FinishDecision, decide_finish, needs_budget
from .tools import JsonDict
from .usage import Usage, normalise_usage_json, read_usage, settle_usage, usage_json

_REASONING_TRIGGERS = {
    "reasoning": (b'"reasoning_content"', b'"reasoning":null'),
    "reasoning_content": (b'"reasoning"', b'"reasoning_content":null'),
    "both": (b'"reasoning',),
}
_TEXT = b'"content":"'
_TAG = b"<"


def _static_triggers(profile: RewriteProfile, facts: RequestFacts) -> tuple[bytes, ...]:
    found = [b'"choices":[]', b'": ']
    if not facts.continuous_usage:
        found.append(b'"usage":{')
    if facts.kind == "chat":
        found += [
            b'"finish_reason":"',
            b'"tool_calls"',
            *_REASONING_TRIGGERS[profile.reasoning_field],
        ]
    return tuple(found)


@functools.cache
def _watcher(triggers: tuple[bytes, ...]) -> Callable[[bytes], re.Match[bytes] | None]:
    return re.compile(b"|".join(re.escape(t) for t in triggers)).search


class StreamRewriter:
    """Rewrites one streamed response; see the package docstring for what it normalises."""

    def __init__(self, profile: RewriteProfile, facts: RequestFacts) -> None:
        self._profile = profile
        self._facts = facts
        self._chat = facts.kind == "chat"
        self._think = self._chat and parses_reasoning(profile)
        self._hermes = self._chat and parses_tools(profile, facts)
        self._static = _static_triggers(profile, facts)
        self._choices: dict[int, ChoiceRewriter] = {}
        self._pending: list[tuple[list[JsonDict], list[tuple[int, str]]]] = []
        self._replica_usage: Usage | None = None
        self._usage_sent = False
        self._frames = 0
        self._silent_frames = 0
        self._last = b""
        self._watch = _watcher(self._static + self._text_triggers())

    def __repr__(self) -> str:
        return f"<StreamRewriter {self._facts.kind} frames={self._frames} choices={self._choices}>"

    def feed(self, payload: bytes) -> list[bytes]:
        if self._watch(payload) is not None:
            return self._rewrite(payload)
        self._frames += 1
        self._last = payload
        return [payload]

    def finish(self) -> list[bytes]:
        """Held text of unfinished choices, held finish frames, and a usage frame if owed."""
        out: list[bytes] = []
        for index, choice in self._choices.items():
            if not choice.finished and choice.splitter is not None:
                out += self._flush(index, choice)
        out += self._release()
        if self._facts.client_wants_usage and not self._usage_sent and self._last:
            frame = self._envelope()
            frame.update(choices=[], usage=usage_json(self.usage))
            out.append(orjson.dumps(frame))
            self._usage_sent = True
        return out

    @property
    def usage(self) -> Usage:
        """The replica's final counts, or an estimate (estimated=True) when it sent none."""
        split = [c for c in self._choices.values() if c.splitter and c.splitter.decides_reasoning]
        return settle_usage(
            self._replica_usage,
            prompt_estimate=self._facts.prompt_estimate,
            completion_estimate=self._completion_estimate(),
            reasoning_chars=sum(c.reasoning_chars for c in split) if split else None,
        )

    def _completion_estimate(self) -> int:
        # vLLM streams one token per chunk by default (stream_interval=1); a chat stream
        # also has one role chunk per choice and finish chunks that may carry no text.
        roles = max(len(self._choices), 1) if self._chat else 0
        return max(self._frames - roles - self._silent_frames, 0)

    def _text_triggers(self) -> tuple[bytes, ...]:
        if not (self._think or self._hermes):
            return ()
        # A choice not seen yet starts out looking for <think>.
        idle = len(self._choices) >= self._facts.n and all(c.idle for c in self._choices.values())
        if not idle:
            # Reasoning keys too: a replica that parses reasoning itself ends the split.
            return (_TEXT, b'"reasoning')
        return (_TAG,) if self._hermes else ()

    def _rewrite(self, payload: bytes) -> list[bytes]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [payload]
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list):
            return [payload]
        if not choices:
            return self._usage_frame(chunk, payload) if "usage" in chunk else [payload]
        self._frames += 1
        self._last = payload
        changed = False
        if "usage" in chunk and not self._facts.continuous_usage:
            del chunk["usage"]
            changed = True
        if not self._chat:
            return [orjson.dumps(chunk)] if changed else [payload]
        frames, decide, changed_choices = self._rewrite_choices(chunk)
        self._watch = _watcher(self._static + self._text_triggers())
        if not (changed or changed_choices or decide):
            return [payload]
        return self._settle(frames, decide, None if changed or changed_choices else payload)

    def _rewrite_choices(
        self, chunk: JsonDict
    ) -> tuple[list[JsonDict], list[tuple[int, str]], bool]:
        """The chunk's frames, the (choice, upstream finish_reason) pairs, whether it changed."""
        extra: list[JsonDict] = []
        kept: list[JsonDict] = []
        decide: list[tuple[int, str]] = []
        changed = False
        for choice in chunk["choices"]:
            index, out, reason = self._rewrite_choice(choice)
            changed = changed or out.changed
            if not out.keep:
                continue
            kept.append(choice)
            if out.more:
                extra += self._more_frames(chunk, choice, index, out)
            if reason is not None:
                decide.append((index, reason))
        chunk["choices"] = kept
        frames = ([chunk] if kept else []) + extra
        return frames, decide, changed

    def _rewrite_choice(self, choice: JsonDict) -> tuple[int, DeltaOut, str | None]:
        index = choice.get("index", 0)
        rewriter = self._choices.get(index)
        if rewriter is None:
            rewriter = self._choices[index] = ChoiceRewriter(self._profile, self._facts)
        reason = choice.get("finish_reason")
        reason = reason if isinstance(reason, str) else None
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice["delta"] = {}
        if reason is not None and not _has_text(delta):
            self._silent_frames += 1
        return index, rewriter.rewrite(delta, finishing=reason is not None), reason

    def _more_frames(
        self, chunk: JsonDict, choice: JsonDict, index: int, out: DeltaOut
    ) -> list[JsonDict]:
        frames = [_tool_frame(_bare(chunk), index, group) for group in out.more]
        _move_finish(choice, frames[-1]["choices"][0])
        return frames

    def _settle(
        self, frames: list[JsonDict], decide: list[tuple[int, str]], unchanged: bytes | None
    ) -> list[bytes]:
        """Decide finish reasons now, or hold the frames until the usage frame tells the budget.

        unchanged: the upstream payload, when nothing but the finish decision could change it.
        """
        if self._pending or any(self._needs_usage(i, r) for i, r in decide):
            self._pending.append((frames, decide))
            return []
        changed = False
        for index, reason in decide:
            changed = self._apply(frames, index, self._decide(index, reason)) or changed
        if unchanged is not None and not changed:
            return [unchanged]
        return [orjson.dumps(frame) for frame in frames]

    def _needs_usage(self, index: int, reason: str) -> bool:
        return (
            self._replica_usage is None
            and self._facts.max_tokens is not None
            and needs_budget(reason, self._choices[index].ledger.calls)
        )

    def _decide(self, index: int, reason: str) -> FinishDecision:
        usage, limit = self._replica_usage, self._facts.max_tokens
        return decide_finish(
            reason,
            self._choices[index].ledger.calls,
            forced_name=self._facts.tool_choice_name,
            hit_max_tokens=bool(usage and limit and usage.completion_tokens >= limit),
        )

    def _apply(self, frames: list[JsonDict], index: int, decision: FinishDecision) -> bool:
        """Write a decision into the choice's finish frame; whether anything changed."""
        carrier = _finish_carrier(frames, index)
        changed = bool(decision.repairs or decision.warning)
        changed = changed or carrier.get("finish_reason") != decision.reason
        if decision.repairs:
            ledger = self._choices[index].ledger
            entries = []
            for call_index, suffix in decision.repairs:
                ledger.extend(call_index, suffix)
                entries.append({"index": call_index, "function": {"arguments": suffix}})
            frame = _tool_frame(_bare(frames[0]), index, entries)
            frames.append(frame)
            _move_finish(carrier, frame["choices"][0])
            carrier = frame["choices"][0]
        carrier["finish_reason"] = decision.reason
        if decision.warning:
            carrier[WARNING_KEY] = decision.warning
        return changed

    def _release(self) -> list[bytes]:
        pending, self._pending = self._pending, []
        out: list[bytes] = []
        for frames, decide in pending:
            for index, reason in decide:
                self._apply(frames, index, self._decide(index, reason))
            out += [orjson.dumps(frame) for frame in frames]
        return out

    def _usage_frame(self, chunk: JsonDict, payload: bytes) -> list[bytes]:
        self._replica_usage = read_usage(chunk.get("usage")) or self._replica_usage
        out = self._release()
        if not self._facts.client_wants_usage or self._usage_sent:
            return out
        self._usage_sent = True
        value = chunk.get("usage")
        if isinstance(value, dict) and normalise_usage_json(value, self.usage):
            out.append(orjson.dumps(chunk))
        else:
            out.append(payload)
        return out

    def _flush(self, index: int, choice: ChoiceRewriter) -> list[bytes]:
        """A stream cut before its finish chunk: release the choice's held text."""
        delta: JsonDict = {}
        out = choice.rewrite(delta, finishing=True)
        if not (delta or out.more):
            return []
        envelope = self._envelope()
        frame = {**envelope, "choices": [_choice(index, delta)]}
        more = [_tool_frame(envelope, index, group) for group in out.more]
        return [orjson.dumps(f) for f in [frame, *more]]

    def _envelope(self) -> JsonDict:
        last = orjson.loads(self._last)
        return _bare(last) if isinstance(last, dict) else {}


def _bare(chunk: JsonDict) -> JsonDict:
    """The chunk's envelope (id, object, created, model, ...), without choices or usage."""
    return {k: v for k, v in chunk.items() if k not in ("choices", "usage")}


def _has_text(delta: JsonDict) -> bool:
    texts = (delta.get(k) for k in ("content", "reasoning", "reasoning_content"))
    return any(isinstance(t, str) and t for t in texts) or bool(delta.get("tool_calls"))


def _choice(index: int, delta: JsonDict) -> JsonDict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def _tool_frame(envelope: JsonDict, index: int, entries: list[JsonDict]) -> JsonDict:
    return {**envelope, "choices": [_choice(index, {"tool_calls": entries})]}


def _move_finish(source: JsonDict, target: JsonDict) -> None:
    for key in ("finish_reason", "stop_reason", WARNING_KEY):
        if key in source:
            target[key] = source.pop(key)
    source["finish_reason"] = None


def _finish_carrier(frames: list[JsonDict], index: int) -> JsonDict:
    for frame in reversed(frames):
        for choice in frame["choices"]:
            if choice.get("index", 0) == index and choice.get("finish_reason") is not None:
                return choice  # type: ignore[no-any-return]
    raise LookupError(f"no finish chunk for choice {index}")
