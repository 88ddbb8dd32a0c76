"""One typed, validated configuration loaded from TOML.

Every section is a frozen dataclass with defaults written in units. `load_config`
rejects unknown keys, wrong types and broken cross-references with a `ConfigError`
whose message names the offending key path (``models[1].max_output_tokens``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

SECONDS = 1.0
MIB = 1024 * 1024

ReasoningField = Literal["reasoning", "reasoning_content", "both"]
ReasoningParse = Literal["none", "think"]
ToolParse = Literal["none", "hermes"]
WorkerKind = Literal["sim", "vllm"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * MIB
    # Seconds in-flight requests get to finish on shutdown before they are cut.
    graceful_timeout: float = 30 * SECONDS


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    connect_timeout: float = 2 * SECONDS
    # Longest silence between two reads of an upstream response (first byte included).
    read_timeout: float = 120 * SECONDS
    max_attempts: int = 3
    # Upper bound on the time spent trying replicas before the client gets an answer.
    retry_deadline: float = 30 * SECONDS
    # Full-jitter backoff: attempt n waits uniform(0, min(max, backoff * 2**(n-1))).
    retry_backoff: float = 0.05 * SECONDS
    retry_backoff_max: float = 1 * SECONDS
    max_connections: int = 4096


@dataclass(frozen=True, slots=True)
class HealthConfig:
    # Off: replicas are READY from the start and only passive failures eject them.
    enabled: bool = True
    interval: float = 2 * SECONDS
    jitter: float = 0.2
    timeout: float = 2 * SECONDS
    warmup: bool = True
    warmup_timeout: float = 120 * SECONDS
    # Consecutive upstream failures before a replica is ejected.
    failure_threshold: int = 3
    eject_for: float = 5 * SECONDS
    # Prefix affinity spills a key to its next replica above (1 + epsilon) * mean load.
    affinity_epsilon: float = 0.25


@dataclass(frozen=True, slots=True)
class RewriteProfile:
    """How a model's responses are normalised (see README, "Reasoning and tools")."""

    reasoning_field: ReasoningField = "reasoning"
    parse_reasoning: ReasoningParse = "none"
    parse_tools: ToolParse = "none"
    # The chat template opens <think> in the prompt (Qwen3 Thinking-2507, DeepSeek-R1-0528):
    # generated text starts inside the reasoning.
    think_prefilled: bool = False


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    name: str
    url: str
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    context_length: int
    max_output_tokens: int
    input_price_per_million: float
    output_price_per_million: float
    replicas: tuple[str, ...]
    # The name the replicas serve this model under (vLLM's --served-model-name).
    served_name: str = ""
    owned_by: str = ""
    rewrite: RewriteProfile = field(default_factory=RewriteProfile)

    @property
    def upstream_name(self) -> str:
        return self.served_name or self.id


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A process the proxy launches and supervises; it also becomes a replica."""

    name: str
    kind: WorkerKind
    port: int
    model: str = ""
    served_name: str = ""
    # "cpu", or "cuda:N" for the GPU with index N.
    device: str = "cpu"
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    log: str = ""
    startup_timeout: float = 300 * SECONDS


@dataclass(frozen=True, slots=True)
class KeyStoreConfig:
    """`[keys]`: API keys are stored only as HMAC digests under this server secret."""

    # The HMAC secret; when empty it is read from the environment variable `secret_env`,
    # else from `secret_file` (relative to state_dir), which is created on first use.
    secret: str = ""
    secret_env: str = "TERA_KEY_SECRET"
    secret_file: str = "key-secret"
    # Upper bound on how long a revocation made elsewhere goes unnoticed.
    refresh_interval: float = 0.5 * SECONDS


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """`[database]`: shared by the key store and the ledger."""

    # Relative to the state directory; used unless `postgres_dsn` is set.
    sqlite_path: str = "tera.db"
    # e.g. postgresql://tera@127.0.0.1:5432/tera
    postgres_dsn: str = ""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """`[limits]`: where per-key counters live."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tera:rl:"
    # Longer than any request may run; bounds how long a dead proxy's tickets count.
    lease_ttl: float = 15 * 60 * SECONDS
    # With Redis unreachable: admit (True) or answer 503 (False).
    fail_open: bool = True


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """`[ledger]`: one row per request, written in batches off the event loop."""

    batch_size: int = 500
    # Longest a recorded row waits before it is written.
    flush_interval: float = 0.25 * SECONDS
    # Rows held while the database is unreachable; beyond this, new rows are dropped
    # (and counted) rather than growing without bound.
    max_pending: int = 100_000


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """`[auth]`: off only for a private sidecar; a provider keeps it on."""

    enabled: bool = True
    # The admin HTTP API (/admin/*) answers only to this bearer token; when empty it is
    # read from `admin_token_env`; with neither, the admin API is off.
    admin_token: str = ""
    admin_token_env: str = "TERA_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    replicas: tuple[ReplicaConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    workers: tuple[WorkerConfig, ...] = ()
    auth: AuthConfig = field(default_factory=AuthConfig)
    keys: KeyStoreConfig = field(default_factory=KeyStoreConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    # Where state (logs, scratch) lives; relative paths are relative to the config file.
    state_dir: str = "var"

    def replica_configs(self) -> tuple[ReplicaConfig, ...]:
        """Configured replicas plus one per launched worker."""
        launched = tuple(
            ReplicaConfig(name=w.name, url=f"http://127.0.0.1:{w.port}") for w in self.workers
        )
        return self.replicas + launched


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(raw)


def parse_config(raw: dict[str, Any]) -> Config:
    config: Config = _build(Config, raw, "")
    _check(config)
    return config


def _build(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a table, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"{_join(path, key)}: unknown key (allowed: {allowed})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], _join(path, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, f.name)}: required key is missing")
    return cls(**values)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{path}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected an array, got {_kind(value)}")
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {_kind(value)}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(tp, value, path)


def _scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{path}: expected an integer, got a boolean")
    if not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {_kind(value)}")
    return value


def _check(config: Config) -> None:
    _positive(config.server.port, "server.port")
    _positive(config.upstream.max_attempts, "upstream.max_attempts")
    if not 0 < config.keys.refresh_interval <= 1:
        raise ConfigError("keys.refresh_interval: must be in (0, 1] seconds (revocation bound)")
    _positive(config.ledger.batch_size, "ledger.batch_size")
    for name in ("connect_timeout", "read_timeout", "retry_deadline"):
        _positive(getattr(config.upstream, name), f"upstream.{name}")
    replicas = config.replica_configs()
    _unique([r.name for r in replicas], "replicas", "name")
    for i, r in enumerate(config.replicas):
        parts = urlsplit(r.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"replicas[{i}].url: {r.url!r} is not an http(s) URL")
    ports = [w.port for w in config.workers]
    _unique(ports, "workers", "port")
    for i, w in enumerate(config.workers):
        _positive(w.port, f"workers[{i}].port")
        if w.kind == "vllm" and not w.model:
            raise ConfigError(f"workers[{i}].model: required for a vllm worker")
        if w.device != "cpu" and not (w.device.startswith("cuda:") and w.device[5:].isdigit()):
            raise ConfigError(f"workers[{i}].device: {w.device!r} is not 'cpu' or 'cuda:N'")
    _unique([m.id for m in config.models], "models", "id")
    known = {r.name for r in replicas}
    for i, m in enumerate(config.models):
        _positive(m.context_length, f"models[{i}].context_length")
        _positive(m.max_output_tokens, f"models[{i}].max_output_tokens")
        if m.max_output_tokens > m.context_length:
            raise ConfigError(f"models[{i}].max_output_tokens: larger than context_length")
        for price in ("input_price_per_million", "output_price_per_million"):
            if getattr(m, price) < 0:
                raise ConfigError(f"models[{i}].{price}: must not be negative")
        if not m.replicas:
            raise ConfigError(f"models[{i}].replicas: a model needs at least one replica")
        for j, name in enumerate(m.replicas):
            if name not in known:
                raise ConfigError(f"models[{i}].replicas[{j}]: no replica or worker named {name!r}")


def _positive(value: float, path: str) -> None:
    if value <= 0:
        raise ConfigError(f"{path}: must be greater than 0, got {value}")


def _unique(values: list[Any], section: str, key: str) -> None:
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(f"{section}[{i}].{key}: duplicate value {v!r}")
        seen.add(v)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
