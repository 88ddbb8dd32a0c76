"""Bytes on the wire for one wire version: non-streaming bodies and SSE frames.
Static parts of frames are built once per request so a frame is a join of a few bytes."""

from __future__ import annotations

from typing import Any

import orjson

from backends.sim.config import SimConfig
from backends.sim.plan import Answer, Kind, Plan, Step
from backends.sim.request import GenRequest, ToolMode

DONE = b"data: [DONE]\n\n"
_MID = b',"logprobs":null,"finish_reason":null,"token_ids":null}]'
_DELTA_CACHE_MAX = 4096


class Renderer:
    """Per-server knowledge of field names; caches the JSON of common deltas."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.wire = config.wire
        self._deltas: dict[tuple[Kind, str, bool], bytes] = {}

    def __repr__(self) -> str:
        return f"<Renderer {self.wire.text} cached={len(self._deltas)}>"

    def usage(
        self, prompt: int, completion: int, reasoning: int, *, body: bool, chat: bool
    ) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }
        details = None
        if chat and self.wire.reasoning_tokens_details and self.config.reasoning_parser:
            details = {"reasoning_tokens": reasoning}
        if body:
            usage["prompt_tokens_details"] = None
            if self.wire.reasoning_tokens_details:
                usage["completion_tokens_details"] = details
        elif details is not None:
            # Streamed usage is dumped with exclude_none.
            usage["completion_tokens_details"] = details
        return usage

    def delta(self, kind: Kind, text: str, forced: bool) -> bytes:
        key = (kind, text, forced)
        cached = self._deltas.get(key)
        if cached is None:
            cached = orjson.dumps(self._delta_dict(kind, text, forced))
            if len(self._deltas) < _DELTA_CACHE_MAX:
                self._deltas[key] = cached
        return cached

    def _delta_dict(self, kind: Kind, text: str, forced: bool) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if kind is Kind.CONTENT:
            delta["content"] = text
        elif kind is Kind.REASONING:
            delta.update(dict.fromkeys(self.wire.reasoning_keys, text))
        elif kind is Kind.TOOL_ARGS:
            if forced:
                delta["content"] = None
            delta["tool_calls"] = [{"index": 0, "function": {"arguments": text}}]
        if self.wire.null_reasoning_content and "reasoning_content" not in delta:
            delta["reasoning_content"] = None
        return delta

    def tool_header(self, tool_id: str, name: str, forced: bool) -> bytes:
        delta: dict[str, Any] = {"content": None} if forced else {}
        header = {"id": tool_id, "type": "function", "index": 0, "function": {"name": name}}
        delta["tool_calls"] = [header]
        if self.wire.null_reasoning_content:
            delta["reasoning_content"] = None
        return orjson.dumps(delta)


def _head(response_id: str, obj: bytes, created: int, model: str) -> bytes:
    return (
        b'data: {"id":' + orjson.dumps(response_id) + b',"object":"' + obj + b'","created":'
        + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":['
    )  # fmt: skip


class ChatStream:
    """The SSE frames of one streamed chat completion."""

    def __init__(
        self, r: Renderer, req: GenRequest, plan: Plan, response_id: str, created: int,
        model: str, tool_ids: list[str],
    ) -> None:  # fmt: skip
        self.r, self.req, self.plan, self.tool_ids = r, req, plan, tool_ids
        wire = r.wire
        self.forced = req.tool is not None and req.tool.mode is not ToolMode.AUTO
        self.head = _head(response_id, b"chat.completion.chunk", created, model)
        self.index = [b'{"index":%d,"delta":' % i for i in range(req.n)]
        self.kv = b',"kv_transfer_params":null' if wire.v033_keys else b""
        self.tail = self.kv + b"}\n\n"
        fp = wire.fingerprint
        self.fingerprint = b',"system_fingerprint":' + orjson.dumps(fp) if fp else b""
        self.prompt = req.prompt_tokens[0]

    def _usage(self, tokens: int, reasoning: int) -> bytes:
        if not self.req.continuous_usage:
            return b""
        u = self.r.usage(self.prompt, tokens, reasoning, body=False, chat=True)
        return b',"usage":' + orjson.dumps(u)

    def role(self, i: int) -> bytes:
        delta: dict[str, Any] = {"role": "assistant", "content": ""}
        if self.r.wire.null_reasoning_content:
            delta["reasoning_content"] = None
        extra = b',"prompt_text":null' if self.r.wire.prompt_text else b""
        return b"".join((
            self.head, self.index[i], orjson.dumps(delta),
            b',"logprobs":null,"finish_reason":null}]', self._usage(0, 0),
            b',"prompt_token_ids":null', extra, b"}\n\n",
        ))  # fmt: skip

    def step(self, i: int, step: Step, first: bool = False) -> bytes:
        if step.kind is Kind.TOOL_HEADER:
            assert self.req.tool is not None
            delta = self.r.tool_header(self.tool_ids[i], self.req.tool.name, self.forced)
        else:
            delta = self.r.delta(step.kind, step.text, self.forced)
        usage = self._usage(step.tokens, step.reasoning)
        if step.finish is None:
            return b"".join((self.head, self.index[i], delta, _MID, usage, self.tail))
        weights = b',"weight_versions":null' if self.r.wire.v033_keys else b""
        fp = b"" if self.req.include_usage else self.fingerprint
        return b"".join((
            self.head, self.index[i], delta, b',"logprobs":null,"finish_reason":"',
            step.finish.encode(), b'","stop_reason":null,"token_ids":null', weights, b"}]",
            usage, fp, self.tail,
        ))  # fmt: skip

    def usage_chunk(self) -> bytes:
        n, plan = self.req.n, self.plan
        completion, reasoning = n * plan.completion_tokens, n * plan.reasoning_tokens
        u = self.r.usage(self.prompt, completion, reasoning, body=False, chat=True)
        return b"".join((self.head, b'],"usage":', orjson.dumps(u), self.fingerprint, self.tail))


class CompletionStream:
    """The SSE frames of one streamed /v1/completions answer (no role chunk)."""

    def __init__(
        self, r: Renderer, req: GenRequest, plan: Plan, response_id: str, created: int, model: str
    ) -> None:
        self.r, self.req, self.plan = r, req, plan
        self.head = _head(response_id, b"text_completion", created, model)
        self.null_usage = b',"usage":null' if r.wire.completions_usage_null else b""
        fp = r.wire.fingerprint
        self.fingerprint = b',"system_fingerprint":' + orjson.dumps(fp) if fp else b""

    def step(self, i: int, step: Step, first: bool = False) -> bytes:
        finish = b'"' + step.finish.encode() + b'"' if step.finish else b"null"
        prompt_ids = b"null"
        if first and self.r.wire.completions_prompt_ids:
            # Made-up ids, one per prompt token: only the shape matters.
            prompt_ids = orjson.dumps(list(range(self.req.prompt_tokens[i // self.req.n])))
        usage = self.null_usage
        if self.req.continuous_usage:
            prompt = self.req.prompt_tokens[i // self.req.n]
            u = self.r.usage(prompt, step.tokens, 0, body=False, chat=False)
            usage = b',"usage":' + orjson.dumps(u)
        return b"".join((
            self.head, b'{"index":%d,"text":' % i, orjson.dumps(step.text),
            b',"logprobs":null,"finish_reason":', finish,
            b',"stop_reason":null,"prompt_token_ids":', prompt_ids, b',"token_ids":null}]',
            usage, b"}\n\n",
        ))  # fmt: skip

    def usage_chunk(self) -> bytes:
        req = self.req
        u = self.r.usage(
            sum(req.prompt_tokens), req.choice_count * self.plan.completion_tokens,
            0, body=False, chat=False,
        )  # fmt: skip
        return b"".join((self.head, b'],"usage":', orjson.dumps(u), self.fingerprint, b"}\n\n"))


def chat_body(
    r: Renderer, req: GenRequest, plan: Plan, answer: Answer, response_id: str, created: int,
    model: str, tool_ids: list[str],
) -> bytes:  # fmt: skip
    wire = r.wire
    choices = []
    for i in range(req.n):
        message: dict[str, Any] = {
            "role": "assistant", "content": answer.content, "refusal": None,
            "annotations": None, "audio": None, "function_call": None,
        }  # fmt: skip
        if answer.tool_arguments is not None and req.tool is not None:
            function = {"name": req.tool.name, "arguments": answer.tool_arguments}
            message["tool_calls"] = [{"id": tool_ids[i], "type": "function", "function": function}]
        elif wire.empty_tool_calls:
            message["tool_calls"] = []
        message.update(dict.fromkeys(wire.reasoning_keys, answer.reasoning))
        choices.append(_choice(r, i, {"message": message}, answer.finish_reason))
    usage = r.usage(
        req.prompt_tokens[0], req.n * plan.completion_tokens, req.n * plan.reasoning_tokens,
        body=True, chat=True,
    )  # fmt: skip
    body: dict[str, Any] = {
        "id": response_id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "service_tier": None, "system_fingerprint": wire.fingerprint,
        "usage": usage, "prompt_logprobs": None, "prompt_token_ids": None,
    }  # fmt: skip
    return orjson.dumps(_trailer(r, body))


def completion_body(
    r: Renderer, req: GenRequest, plan: Plan, response_id: str, created: int, model: str
) -> bytes:
    finish = plan.finish.value
    text = "".join(p.text for p in plan.pieces)
    extra = {"prompt_logprobs": None, "prompt_token_ids": None}
    choices = [_choice(r, i, {"text": text}, finish, extra) for i in range(req.choice_count)]
    completion = len(choices) * plan.completion_tokens
    usage = r.usage(sum(req.prompt_tokens), completion, 0, body=True, chat=False)
    body: dict[str, Any] = {
        "id": response_id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "service_tier": None, "system_fingerprint": r.wire.fingerprint,
        "usage": usage,
    }  # fmt: skip
    return orjson.dumps(_trailer(r, body, prompt_text=False))


def _choice(
    r: Renderer, i: int, payload: dict[str, Any], finish: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": i, **payload, "logprobs": None, "finish_reason": finish}
    choice.update(stop_reason=None, token_ids=None)
    choice.update(extra or {})
    if r.wire.recent_keys:
        choice["routed_experts"] = None
    if r.wire.v033_keys:
        choice["weight_versions"] = None
    return choice


def _trailer(r: Renderer, body: dict[str, Any], prompt_text: bool = True) -> dict[str, Any]:
    if prompt_text and r.wire.prompt_text:
        body["prompt_text"] = None
    body["kv_transfer_params"] = None
    if r.wire.recent_keys:
        body["ec_transfer_params"] = None
        body["metrics"] = None
    return body
