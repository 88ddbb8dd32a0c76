"""Keep configured worker processes (vLLM or simulator) running.

Each worker runs in its own session, so its process group holds everything it spawns
(vLLM's API server, engine core and workers); signals always go to the whole group.
A worker that exits is restarted after an exponential backoff, and whatever remains of
its group is killed first. `stop()` sends SIGTERM to every group, SIGKILL after a
deadline, and removes the per-worker scratch dirs (vLLM's sockets and temp files).

What to run comes from `backends.vllm.launcher.build_launch` (pure); this module does
the I/O. The backoff clock and sleep are injectable so tests need not wait for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import structlog

from backends.vllm.launcher import LaunchSpec, build_launch
from tera_proxy.config import WorkerConfig

log = structlog.get_logger(__name__)

SECONDS = 1.0
# How often a dying process group is polled for its last member.
GROUP_POLL = 0.05 * SECONDS
# After SIGKILL a group normally vanishes at once; this only bounds the wait.
KILL_GRACE = 5 * SECONDS
HEALTH_POLL = 0.5 * SECONDS

Launch = Callable[[WorkerConfig, Path, Mapping[str, str]], LaunchSpec]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class EventKind(enum.Enum):
    SPAWNED = "spawned"
    SPAWN_FAILED = "spawn_failed"
    EXITED = "exited"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class WorkerState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """Something that happened to one worker, for the proxy's logs and for tests."""

    worker: str
    kind: EventKind
    pid: int | None = None
    returncode: int | None = None
    delay: float | None = None
    detail: str = ""

    def __repr__(self) -> str:
        extra = {"pid": self.pid, "code": self.returncode, "delay": self.delay}
        shown = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        tail = f" {self.detail}" if self.detail else ""
        return f"<WorkerEvent {self.worker} {self.kind.value} {shown}{tail}>".replace(" >", ">")


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    name: str
    state: WorkerState
    pid: int | None
    restarts: int
    last_returncode: int | None

    def __repr__(self) -> str:
        return (
            f"<WorkerStatus {self.name} {self.state.name} pid={self.pid} "
            f"restarts={self.restarts} last_code={self.last_returncode}>"
        )


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: `initial`, multiplied by `factor` per quick crash, up to `maximum`;
    a worker that stayed up `reset_after` starts again from `initial`."""

    initial: float = 1 * SECONDS
    factor: float = 2.0
    maximum: float = 30 * SECONDS
    reset_after: float = 60 * SECONDS

    def next_delay(self, previous: float | None, uptime: float) -> float:
        if previous is None or uptime >= self.reset_after:
            return self.initial
        return min(previous * self.factor, self.maximum)


class _Slot:
    """The supervisor's mutable record of one worker (never leaves this module)."""

    def __init__(self, worker: WorkerConfig, spec: LaunchSpec) -> None:
        self.worker = worker
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None
        self.state = WorkerState.IDLE
        self.started_at = 0.0
        self.restarts = 0
        self.last_returncode: int | None = None
        # True once an exited worker's whole group is known gone: its id may be reused.
        self.reaped = False

    def status(self) -> WorkerStatus:
        running = self.process is not None and self.process.returncode is None
        return WorkerStatus(
            name=self.spec.name,
            state=self.state,
            pid=self.process.pid if running and self.process else None,
            restarts=self.restarts,
            last_returncode=self.last_returncode,
        )


class Supervisor:
    """Starts, restarts and stops a fixed set of workers."""

    def __init__(
        self,
        workers: Sequence[WorkerConfig],
        state_dir: Path,
        on_event: Callable[[WorkerEvent], None] | None = None,
        *,
        backoff: Backoff = Backoff(),
        stop_timeout: float = 15 * SECONDS,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        launch: Launch = build_launch,
        env: Mapping[str, str] | None = None,
    ) -> None:
        parent_env = dict(os.environ if env is None else env)
        self._slots = [_Slot(w, launch(w, Path(state_dir), parent_env)) for w in workers]
        self._on_event = on_event
        self._backoff = backoff
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def __repr__(self) -> str:
        running = sum(1 for s in self._slots if s.state is WorkerState.RUNNING)
        return f"<Supervisor workers={len(self._slots)} running={running}>"

    def pids(self) -> dict[str, int | None]:
        """Process (and process group) id of each running worker, None when not running."""
        return {s.spec.name: s.status().pid for s in self._slots}

    def status(self) -> dict[str, WorkerStatus]:
        return {s.spec.name: s.status() for s in self._slots}

    async def start(self) -> None:
        """Spawn every worker once (without waiting for it to be ready) and watch them."""
        if self._tasks or self._stopping:
            raise RuntimeError("a Supervisor starts once")
        for slot in self._slots:
            await self._spawn(slot)
        self._tasks = [asyncio.create_task(self._watch(slot)) for slot in self._slots]

    async def wait_healthy(self, limit: float | None = None) -> None:
        """Wait until every worker answers GET /health with 200.

        vLLM listens only once its model is loaded, so this is "ready to serve". Raises
        TimeoutError naming the workers still starting after `limit` seconds (default:
        the largest `startup_timeout` of the workers)."""
        if limit is None:
            limit = max((s.worker.startup_timeout for s in self._slots), default=0.0)
        pending = {s.worker.name: f"http://127.0.0.1:{s.worker.port}/health" for s in self._slots}
        probe = aiohttp.ClientTimeout(total=2 * SECONDS)
        try:
            async with aiohttp.ClientSession(timeout=probe) as session, asyncio.timeout(limit):
                while pending:
                    for name, url in list(pending.items()):
                        if await _answers_200(session, url):
                            del pending[name]
                    if pending:
                        await asyncio.sleep(HEALTH_POLL)
        except TimeoutError:
            logs = ", ".join(str(s.spec.log) for s in self._slots if s.worker.name in pending)
            raise TimeoutError(
                f"workers {sorted(pending)} not healthy after {limit:.0f}s; see {logs}"
            ) from None

    async def stop(self) -> None:
        """Terminate every worker's process group and remove the scratch dirs."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._terminate(s) for s in self._slots))
        for slot in self._slots:
            shutil.rmtree(slot.spec.scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                slot.spec.scratch.parent.rmdir()  # only when no other worker's dir is left
            if slot.state is not WorkerState.STOPPED:
                slot.state = WorkerState.STOPPED
                self._emit(slot, EventKind.STOPPED, returncode=slot.last_returncode)

    async def _watch(self, slot: _Slot) -> None:
        delay: float | None = None
        while not self._stopping:
            if slot.process is not None:
                returncode = await slot.process.wait()
                slot.last_returncode = returncode
                # Whatever the leader left behind (vLLM's engine core) goes too.
                slot.reaped = await _wait_group_gone(slot.process.pid, signal.SIGKILL, KILL_GRACE)
                self._emit(slot, EventKind.EXITED, pid=slot.process.pid, returncode=returncode)
            delay = self._backoff.next_delay(delay, self._clock() - slot.started_at)
            slot.state = WorkerState.BACKOFF
            self._emit(slot, EventKind.RESTARTING, delay=delay)
            await self._sleep(delay)
            slot.restarts += 1
            await self._spawn(slot)

    async def _spawn(self, slot: _Slot) -> None:
        spec = slot.spec
        slot.started_at = self._clock()
        try:
            log = _prepare(spec)
        except OSError as exc:
            return self._spawn_failed(slot, exc)
        with log:
            try:
                slot.process = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(spec.env),
                    cwd=spec.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                return self._spawn_failed(slot, exc)
        slot.reaped = False
        slot.state = WorkerState.RUNNING
        self._emit(slot, EventKind.SPAWNED, pid=slot.process.pid)

    def _spawn_failed(self, slot: _Slot, exc: OSError) -> None:
        slot.process = None
        slot.state = WorkerState.BACKOFF
        self._emit(slot, EventKind.SPAWN_FAILED, detail=str(exc))

    async def _terminate(self, slot: _Slot) -> None:
        if slot.process is None or slot.reaped:
            return
        pgid = slot.process.pid
        if not await _wait_group_gone(pgid, signal.SIGTERM, self._stop_timeout):
            await _wait_group_gone(pgid, signal.SIGKILL, KILL_GRACE)
        with contextlib.suppress(TimeoutError):
            # Reaps the leader so its returncode is known; normally immediate by now.
            await asyncio.wait_for(slot.process.wait(), GROUP_POLL)
        slot.last_returncode = slot.process.returncode

    def _emit(
        self,
        slot: _Slot,
        kind: EventKind,
        *,
        pid: int | None = None,
        returncode: int | None = None,
        delay: float | None = None,
        detail: str = "",
    ) -> None:
        if self._on_event is None:
            return
        event = WorkerEvent(slot.spec.name, kind, pid, returncode, delay, detail)
        try:
            self._on_event(event)
        except Exception:
            # A broken listener must not end the supervision of the worker.
            log.exception("worker event listener failed", worker_event=repr(event))


async def _answers_200(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _prepare(spec: LaunchSpec) -> IO[bytes]:
    """A fresh scratch dir (no stale sockets from a killed run) and the open log file."""
    shutil.rmtree(spec.scratch, ignore_errors=True)
    spec.scratch.mkdir(parents=True)
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    log = spec.log.open("ab")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    log.write(f"--- tera supervisor {stamp}: {' '.join(spec.argv)}\n".encode())
    log.flush()
    return log


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False once the group has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member that is already a zombie can refuse signals on some kernels.
        return True
    return True


async def _wait_group_gone(pgid: int, sig: int, grace: float) -> bool:
    """Signal the group, then wait up to `grace` seconds for its last member to go."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if not _signal_group(pgid, sig):
        return True
    while loop.time() < deadline:
        await asyncio.sleep(GROUP_POLL)
        if not _group_has_live_member(pgid):
            return True
    return False


def _group_has_live_member(pgid: int) -> bool:
    # Orphaned members become zombies until init reaps them (here PID 1 does so only
    # about once a second); a zombie holds no memory or port, so it does not count.
    if not _signal_group(pgid, 0):  # signal 0: only asks whether anyone is left
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # Fields after the parenthesised command: state, ppid, pgrp, ...
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False
