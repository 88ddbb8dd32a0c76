"""What a simulated vLLM server is (SimConfig, fixed at start) and what is wrong with it
right now (Faults, mutable while it runs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from backends.sim.wire import Wire, parse_version

SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated `vllm serve`; every field is also a CLI flag (see README)."""

    # Served names (aliases of one model, like repeated --served-model-name).
    models: tuple[str, ...] = ("sim-model",)
    wire_version: str = "0.32.0"
    ttft: float = 0.02 * SECONDS
    token_delay: float = 0.005 * SECONDS
    tokens_per_chunk: int = 1
    # Natural answer length (content tokens) when max_tokens does not cut it.
    output_tokens: int = 24
    max_model_len: int = 8192
    # The model thinks first; with parsers on, as with --reasoning-parser.
    reasoning: bool = True
    reasoning_tokens: int = 6
    # False: no --reasoning-parser/--tool-call-parser, tags stay inline in content.
    parsers: bool = True
    # False: tools with tool_choice auto get vLLM's 400 (no --enable-auto-tool-choice).
    auto_tool_choice: bool = True
    api_key: str | None = None
    # Bench mode: no request recording, fewer stats updates per frame.
    fast: bool = False
    max_num_seqs: int = 256
    # KV cache capacity in tokens, the denominator of kv_cache_usage_perc.
    kv_cache_tokens: int = 262144
    # Seed of the fault RNG (error_rate), so failures are reproducible.
    seed: int = 0
    wire: Wire = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        else:
            object.__setattr__(self, "models", tuple(self.models))
        if not self.models or not all(self.models):
            raise ValueError("models: at least one non-empty served name is needed")
        for name in ("tokens_per_chunk", "max_model_len", "max_num_seqs", "kv_cache_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("ttft", "token_delay", "output_tokens", "reasoning_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        object.__setattr__(self, "wire", Wire.for_version(parse_version(self.wire_version)))

    @property
    def reasoning_parser(self) -> bool:
        """Whether the server behaves as if started with --reasoning-parser."""
        return self.parsers and self.reasoning


@dataclass(slots=True)
class Faults:
    """Injected failures; tests mutate this in place while the simulator runs."""

    # Seconds without a listening socket (connection refused), as while vLLM loads.
    # Read at start; at run time use SimServer.restart() or POST /sim/faults.
    refuse_for: float = 0.0
    # Fraction of generation requests answered with error_status (seeded RNG).
    error_rate: float = 0.0
    error_status: int = 500
    # The next N generation requests get error_status, then the count runs down.
    fail_next: int = 0
    # Streaming: close the connection after k data frames, no [DONE].
    die_after_frames: int | None = None
    # Streaming: after k data frames, vLLM's in-stream error frame and [DONE].
    stream_error_after: int | None = None
    # Accept generation requests and never answer until the client leaves.
    hang: bool = False
    # Close the connection without any response (streaming or not).
    drop_connection: bool = False
    # Multiplies ttft and token delays.
    slow: float = 1.0
    # /health 503 and every generation request 500.
    engine_dead: bool = False
    # Extra TTFT for the first generation request after (re)start: a cold engine.
    cold_ttft: float = 0.0

    def merge(self, changes: dict[str, Any]) -> None:
        """Apply a JSON object of changes; raises ValueError naming a bad key."""
        known = {f.name: f for f in dataclasses.fields(self)}
        checked = {key: _checked(known, key, value) for key, value in changes.items()}
        for key, value in checked.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> Faults:
        return dataclasses.replace(self)


_FAULT_TYPES: dict[str, tuple[type, ...]] = {
    "refuse_for": (int, float),
    "error_rate": (int, float),
    "error_status": (int,),
    "fail_next": (int,),
    "die_after_frames": (int, type(None)),
    "stream_error_after": (int, type(None)),
    "hang": (bool,),
    "drop_connection": (bool,),
    "slow": (int, float),
    "engine_dead": (bool,),
    "cold_ttft": (int, float),
}


def _checked(known: dict[str, Any], key: str, value: Any) -> Any:
    if key not in known:
        raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(known))}")
    types = _FAULT_TYPES[key]
    # bool is an int subclass: refuse True where a number is meant and vice versa.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"fault {key!r}: bad value {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    number = float(value)
    if number < 0:
        raise ValueError(f"fault {key!r}: must not be negative")
    if key == "error_rate" and number > 1:
        raise ValueError("fault 'error_rate': must be within [0, 1]")
    if key == "error_status" and not 400 <= number <= 599:
        raise ValueError("fault 'error_status': must be an HTTP error status")
    return number if float in types else value
