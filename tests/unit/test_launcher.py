"""What backends.vllm.launcher builds for sim, CPU vLLM and GPU vLLM workers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backends.vllm.launcher import (
    DEFAULT_VLLM_PYTHON,
    REPO_ROOT,
    build_launch,
    log_path,
    vllm_python,
)
from tera_proxy.config import WorkerConfig

STATE = Path("/srv/tera/var")
PARENT_ENV = {"PATH": "/usr/bin", "HOME": "/root"}


def vllm_worker(**overrides: object) -> WorkerConfig:
    fields: dict[str, object] = {
        "name": "w1",
        "kind": "vllm",
        "port": 8101,
        "model": "/models/tiny",
        "served_name": "tiny",
    }
    fields.update(overrides)
    return WorkerConfig(**fields)  # type: ignore[arg-type]


def flag_value(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_cpu_worker_runs_the_project_serve_module_with_the_vllm_python() -> None:
    """A CPU vLLM worker is `<vllm python> -m backends.vllm.serve MODEL` on loopback."""
    spec = build_launch(vllm_worker(), STATE, PARENT_ENV)
    assert spec.argv[:4] == (str(DEFAULT_VLLM_PYTHON), "-m", "backends.vllm.serve", "/models/tiny")
    assert flag_value(spec.argv, "--served-model-name") == "tiny"
    assert flag_value(spec.argv, "--host") == "127.0.0.1"
    assert flag_value(spec.argv, "--port") == "8101"


def test_cpu_worker_gets_the_cpu_flags() -> None:
    """CPU workers run eager, float32, with an explicit context and KV cache size."""
    argv = build_launch(vllm_worker(), STATE, PARENT_ENV).argv
    assert "--enforce-eager" in argv
    assert flag_value(argv, "--dtype") == "float32"
    assert flag_value(argv, "--max-model-len") == "2048"
    assert flag_value(argv, "--kv-cache-memory-bytes") == str(256 * 1024 * 1024)


def test_worker_args_come_last_and_replace_a_default_flag() -> None:
    """A flag in the worker's args replaces the CPU default instead of repeating it."""
    args = ("--max-model-len", "4096", "--reasoning-parser", "qwen3")
    argv = build_launch(vllm_worker(args=args), STATE, PARENT_ENV).argv
    assert argv.count("--max-model-len") == 1
    assert argv[-4:] == args


def test_served_model_name_in_args_replaces_the_served_name() -> None:
    """Aliases given in args (`--served-model-name a b`) are passed once, as given."""
    args = ("--served-model-name", "tiny", "any")
    argv = build_launch(vllm_worker(args=args), STATE, PARENT_ENV).argv
    assert argv.count("--served-model-name") == 1
    assert argv[-3:] == args


def test_worker_args_with_equals_sign_replace_a_default_flag() -> None:
    """`--dtype=bfloat16` in the args counts as naming --dtype."""
    argv = build_launch(vllm_worker(args=("--dtype=bfloat16",)), STATE, PARENT_ENV).argv
    assert "--dtype" not in argv
    assert "--dtype=bfloat16" in argv


def test_cpu_worker_env_points_vllm_state_at_the_scratch_dir() -> None:
    """Sockets, temp files and caches of a CPU worker all live in its scratch dir."""
    spec = build_launch(vllm_worker(), STATE, PARENT_ENV)
    scratch = STATE / "scratch" / "w1"
    assert spec.scratch == scratch
    for key in ("TMPDIR", "VLLM_RPC_BASE_PATH", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"):
        assert Path(spec.env[key]).is_relative_to(scratch), key


def test_cpu_worker_env_is_offline_cpu_only_and_without_telemetry() -> None:
    """A CPU worker never reaches the hub, never probes a GPU, sends no usage stats."""
    env = build_launch(vllm_worker(), STATE, PARENT_ENV).env
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_TARGET_DEVICE"] == "cpu"
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_gpu_worker_sees_only_its_gpu() -> None:
    """A cuda:N worker gets CUDA_VISIBLE_DEVICES=N."""
    env = build_launch(vllm_worker(device="cuda:3"), STATE, PARENT_ENV).env
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


def test_gpu_worker_has_no_cpu_flags() -> None:
    """A GPU worker is plain `vllm serve`: no eager mode, dtype or KV cache override."""
    argv = build_launch(vllm_worker(device="cuda:0"), STATE, PARENT_ENV).argv
    for flag in ("--enforce-eager", "--dtype", "--max-model-len", "--kv-cache-memory-bytes"):
        assert flag not in argv


def test_gpu_worker_has_no_cpu_env() -> None:
    """A GPU worker may download weights and keeps vLLM's compile cache between starts."""
    env = build_launch(vllm_worker(device="cuda:0"), STATE, PARENT_ENV).env
    for key in ("HF_HUB_OFFLINE", "VLLM_TARGET_DEVICE", "VLLM_CACHE_ROOT"):
        assert key not in env, key
    assert env["VLLM_RPC_BASE_PATH"] == str(STATE / "scratch" / "w1")


def test_gpu_worker_passes_its_args_verbatim() -> None:
    """The GPU argv is the serve head followed by exactly the worker's args."""
    args = ("--reasoning-parser", "openai_gptoss", "--tool-call-parser", "openai")
    argv = build_launch(vllm_worker(device="cuda:0", args=args), STATE, PARENT_ENV).argv
    assert argv[-len(args) :] == args
    assert len(argv) == 10 + len(args)


def test_worker_env_overrides_everything() -> None:
    """The worker's own env table is applied last."""
    worker = vllm_worker(env={"HF_HUB_OFFLINE": "0", "VLLM_CPU_OMP_THREADS_BIND": "0"})
    env = build_launch(worker, STATE, PARENT_ENV).env
    assert env["HF_HUB_OFFLINE"] == "0"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_parent_env_is_inherited() -> None:
    """The child keeps the supervisor's environment (PATH, HOME, ...)."""
    env = build_launch(vllm_worker(), STATE, PARENT_ENV).env
    assert env["PATH"] == "/usr/bin"


def test_repo_root_is_on_the_child_pythonpath() -> None:
    """`-m backends...` resolves from the repo whatever the parent's cwd."""
    env = build_launch(vllm_worker(), STATE, {"PYTHONPATH": "/extra"}).env
    assert env["PYTHONPATH"] == f"{REPO_ROOT}:/extra"


def test_vllm_python_comes_from_tera_vllm_python() -> None:
    """$TERA_VLLM_PYTHON chooses the interpreter that runs vLLM."""
    spec = build_launch(vllm_worker(), STATE, {"TERA_VLLM_PYTHON": "/opt/v/bin/python"})
    assert spec.argv[0] == "/opt/v/bin/python"


def test_default_vllm_python_is_in_the_repo_not_the_cwd() -> None:
    """Without the env var, the interpreter is <repo>/.venv-vllm/bin/python, absolute."""
    assert vllm_python({}) == str(REPO_ROOT / ".venv-vllm" / "bin" / "python")
    assert (REPO_ROOT / "backends" / "vllm" / "launcher.py").is_file()


def test_sim_worker_runs_the_simulator_with_this_python() -> None:
    """A sim worker is `python -m backends.sim` serving its served name, args last."""
    worker = WorkerConfig(name="s1", kind="sim", port=9001, served_name="tiny", args=("--x",))
    spec = build_launch(worker, STATE, PARENT_ENV)
    expected = (sys.executable, "-m", "backends.sim", "--host", "127.0.0.1", "--port", "9001")
    assert spec.argv == (*expected, "--model", "tiny", "--x")


def test_sim_worker_env_has_no_vllm_settings() -> None:
    """The simulator needs none of vLLM's environment."""
    worker = WorkerConfig(name="s1", kind="sim", port=9001, served_name="tiny")
    env = build_launch(worker, STATE, PARENT_ENV).env
    assert not any(key.startswith(("VLLM_", "HF_")) for key in env)


def test_sim_worker_falls_back_to_the_model_as_served_name() -> None:
    """Without served_name, the simulator serves the worker's model name."""
    worker = WorkerConfig(name="s1", kind="sim", port=9001, model="org/m")
    argv = build_launch(worker, STATE, PARENT_ENV).argv
    assert flag_value(argv, "--model") == "org/m"


def test_log_defaults_to_state_dir_logs_name() -> None:
    """Without `log`, output goes to <state_dir>/logs/<name>.log."""
    assert log_path(vllm_worker(), STATE) == STATE / "logs" / "w1.log"


def test_relative_log_is_under_the_state_dir() -> None:
    """A relative `log` is taken relative to the state dir."""
    assert log_path(vllm_worker(log="x/w.log"), STATE) == STATE / "x" / "w.log"


def test_absolute_log_is_kept() -> None:
    """An absolute `log` is used as is."""
    assert log_path(vllm_worker(log="/var/log/w.log"), STATE) == Path("/var/log/w.log")


def test_vllm_worker_refuses_a_scratch_dir_too_long_for_unix_sockets() -> None:
    """vLLM's socket paths would overflow; the launcher says so up front."""
    with pytest.raises(ValueError, match="too long"):
        build_launch(vllm_worker(), Path("/tmp") / ("x" * 80), PARENT_ENV)


def test_sim_worker_accepts_a_long_state_dir() -> None:
    """The simulator opens no unix sockets, so any state dir will do."""
    worker = WorkerConfig(name="s1", kind="sim", port=9001, served_name="tiny")
    spec = build_launch(worker, Path("/tmp") / ("x" * 80), PARENT_ENV)
    assert spec.log.name == "s1.log"


def test_launch_spec_repr_names_worker_and_command() -> None:
    """The repr shows the worker, the start of the command and the log file."""
    text = repr(build_launch(vllm_worker(), STATE, PARENT_ENV))
    assert text.startswith("<LaunchSpec w1 ")
    assert "backends.vllm.serve" in text
    assert "w1.log" in text
