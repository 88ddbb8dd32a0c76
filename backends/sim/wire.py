"""Which vLLM release the simulator imitates, reduced to the switches that change bytes on
the wire (see /work/shared/reference/vllm-wire.md; section numbers in comments)."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """'0.11.0' or 'v0.10.1.1' -> (0, 11, 0) / (0, 10, 1, 1); ValueError otherwise."""
    parts = text.strip().removeprefix("v").split(".")
    try:
        version = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"wire_version {text!r}: expected digits like 0.11.0") from None
    if len(version) < 2:
        raise ValueError(f"wire_version {text!r}: expected at least major.minor")
    return version


class StreamToolFinish(enum.Enum):
    """How streaming chat turns a tool call into finish_reason (section 2)."""

    # <=0.11.0: tool_calls whenever a tool delta was streamed, even named and cut.
    ALWAYS = "always"
    # 0.11.1-0.32: named keeps the engine reason; others tool_calls, even when cut.
    UNLESS_NAMED = "unless_named"
    # >=0.33: tool_calls only after an engine stop, not named; length stays length.
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Wire:
    """Version-dependent switches; built once per server from the version tuple."""

    version: Version
    # Names of the reasoning field on messages and deltas.
    reasoning_keys: tuple[str, ...]
    # 0.11.1-0.15: every delta carries "reasoning_content":null.
    null_reasoning_content: bool
    empty_tool_calls: bool  # <=0.23: "tool_calls":[] when there are none
    reasoning_tokens_details: bool  # >=0.29: completion_tokens_details.reasoning_tokens
    flat_errors: bool  # <=0.9: {"object":"error",...}
    reject_over_budget: bool  # <=0.15: prompt+max_tokens > max_model_len is a 400
    reject_duplicate_ids: bool  # <=0.13: in-flight X-Request-Id reuse fails
    stream_tool_finish: StreamToolFinish
    required_stops: bool  # <=0.11.0 non-streaming: tool_choice required -> stop
    fingerprint: str | None  # >=0.21: system_fingerprint
    gpu_cache_metric: bool  # <=0.10: vllm:gpu_cache_usage_perc
    kv_cache_metric: bool  # >=0.10: vllm:kv_cache_usage_perc
    long_ids: bool  # <=0.11.2: random ids are 32 hex, later 16
    prompt_text: bool  # >=0.21: "prompt_text":null
    recent_keys: bool  # >=0.30: routed_experts, ec_transfer_params, metrics
    v033_keys: bool  # >=0.33: kv_transfer_params on chunks, weight_versions
    compact_stream_errors: bool  # >=0.33: in-stream error JSON without spaces
    completions_usage_null: bool  # <=0.20: completion chunks carry "usage":null
    completions_prompt_ids: bool  # 0.10.2-0.11.0: first completion chunk lists prompt ids
    verbose_errors: bool  # >=0.30: "(parameter=..., value=...)" and param set

    @property
    def text(self) -> str:
        return ".".join(str(p) for p in self.version)

    def __repr__(self) -> str:
        return f"<Wire {self.text}>"

    @classmethod
    def for_version(cls, v: Version) -> Wire:
        if v <= (0, 11, 0):
            reasoning_keys: tuple[str, ...] = ("reasoning_content",)
        elif v < (0, 16):
            reasoning_keys = ("reasoning", "reasoning_content")
        else:
            reasoning_keys = ("reasoning",)
        if v <= (0, 11, 0):
            tool_finish = StreamToolFinish.ALWAYS
        elif v < (0, 33):
            tool_finish = StreamToolFinish.UNLESS_NAMED
        else:
            tool_finish = StreamToolFinish.RESOLVED
        return cls(
            version=v,
            reasoning_keys=reasoning_keys,
            null_reasoning_content=(0, 11, 1) <= v < (0, 16),
            empty_tool_calls=v < (0, 24),
            reasoning_tokens_details=v >= (0, 29),
            flat_errors=v < (0, 10),
            reject_over_budget=v < (0, 16),
            reject_duplicate_ids=v < (0, 14),
            stream_tool_finish=tool_finish,
            required_stops=v <= (0, 11, 0),
            fingerprint=_fingerprint(v) if v >= (0, 21) else None,
            gpu_cache_metric=v < (0, 11),
            kv_cache_metric=v >= (0, 10),
            long_ids=v < (0, 12),
            prompt_text=v >= (0, 21),
            recent_keys=v >= (0, 30),
            v033_keys=v >= (0, 33),
            compact_stream_errors=v >= (0, 33),
            completions_usage_null=v < (0, 21),
            completions_prompt_ids=(0, 10, 2) <= v <= (0, 11, 0),
            verbose_errors=v >= (0, 30),
        )


def _fingerprint(v: Version) -> str:
    text = ".".join(str(p) for p in v)
    return f"vllm-{text}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
