"""backends.supervisor with tiny Python workers: spawn, restart, backoff, stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from backends.supervisor import (
    Backoff,
    EventKind,
    Supervisor,
    WorkerEvent,
    WorkerState,
)
from backends.vllm.launcher import LaunchSpec
from tera_proxy.config import WorkerConfig

SLEEPER = "import time; time.sleep(120)"
CRASHER = "import sys; print('crashing', flush=True); sys.exit(3)"
# Ignores SIGTERM, so only SIGKILL ends it; tells its parent (the test) with SIGUSR1
# once the handler is in place.
STUBBORN = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "os.kill(os.getppid(), signal.SIGUSR1); time.sleep(120)"
)
# Leaves a grandchild in its process group, records its pid, then exits.
ORPHANER = (
    "import subprocess, sys; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "open(sys.argv[1], 'w').write(str(c.pid)); sys.exit(1)"
)
# Starts a grandchild in its own process group, tells the test with SIGUSR1, sleeps.
FAMILY = (
    "import os, signal, subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "os.kill(os.getppid(), signal.SIGUSR1); time.sleep(120)"
)
# Answers GET /health with 200 on the port given as its first argument.
HEALTHY = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200 if self.path == '/health' else 404); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
WAIT = 10.0  # seconds any single awaited event may take


def script_launch(
    scripts: Mapping[str, str], extra: tuple[str, ...] = ()
) -> Callable[[WorkerConfig, Path, Mapping[str, str]], LaunchSpec]:
    """A launch function running `python -c SCRIPT` per worker name."""

    def launch(worker: WorkerConfig, state_dir: Path, env: Mapping[str, str]) -> LaunchSpec:
        return LaunchSpec(
            name=worker.name,
            argv=(sys.executable, "-c", scripts[worker.name], *extra),
            env=dict(env),
            cwd=state_dir,
            log=state_dir / "logs" / f"{worker.name}.log",
            scratch=state_dir / "scratch" / worker.name,
        )

    return launch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def workers(*names: str) -> list[WorkerConfig]:
    return [WorkerConfig(name=n, kind="sim", port=20000 + i) for i, n in enumerate(names)]


class Recorder:
    """Collects events and lets a test await the next one of a kind."""

    def __init__(self) -> None:
        self.events: list[WorkerEvent] = []
        self._queue: asyncio.Queue[WorkerEvent] = asyncio.Queue()

    def __call__(self, event: WorkerEvent) -> None:
        self.events.append(event)
        self._queue.put_nowait(event)

    async def next(self, kind: EventKind, worker: str | None = None) -> WorkerEvent:
        async with asyncio.timeout(WAIT):
            while True:
                event = await self._queue.get()
                if event.kind is kind and worker in (None, event.worker):
                    return event

    def kinds(self, worker: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.worker == worker]


class FakeSleep:
    """Backoff sleep that records the delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def stopper() -> AsyncIterator[list[Supervisor]]:
    """Stops every supervisor a test made, even when the test fails."""
    made: list[Supervisor] = []
    yield made
    for sup in made:
        await sup.stop()


@pytest.fixture
async def usr1() -> AsyncIterator[asyncio.Event]:
    """An event set when a worker sends SIGUSR1 to the test process."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, event.set)
    yield event
    loop.remove_signal_handler(signal.SIGUSR1)


def group_alive(pgid: int) -> bool:
    """True while any process of the group is more than a zombie waiting for init."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_start_spawns_each_worker_in_its_own_process_group(
    tmp_path: Path, stopper: list[Supervisor]
) -> None:
    """Every worker leads a new process group, apart from the supervisor's."""
    sup = Supervisor(
        workers("a", "b"), tmp_path, launch=script_launch({"a": SLEEPER, "b": SLEEPER})
    )
    stopper.append(sup)
    await sup.start()
    pids = sup.pids()
    assert all(pid is not None for pid in pids.values())
    for pid in pids.values():
        assert pid is not None and os.getpgid(pid) == pid != os.getpgid(0)


async def test_killed_worker_comes_back_with_a_new_pid(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """SIGKILL a worker: the supervisor spawns it again."""
    sup = Supervisor(
        workers("a"), tmp_path, recorder, sleep=FakeSleep(), launch=script_launch({"a": SLEEPER})
    )
    stopper.append(sup)
    await sup.start()
    first = sup.pids()["a"]
    assert first is not None
    os.kill(first, signal.SIGKILL)
    exited = await recorder.next(EventKind.EXITED)
    respawned = await recorder.next(EventKind.SPAWNED)
    assert exited.returncode == -signal.SIGKILL
    assert respawned.pid == sup.pids()["a"] != first
    assert sup.status()["a"].restarts == 1


async def test_other_workers_keep_running_while_one_restarts(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """Killing one worker leaves the others' processes alone."""
    launch = script_launch({"a": SLEEPER, "b": SLEEPER})
    sup = Supervisor(workers("a", "b"), tmp_path, recorder, sleep=FakeSleep(), launch=launch)
    stopper.append(sup)
    await sup.start()
    b_pid = sup.pids()["b"]
    os.kill(sup.pids()["a"] or 0, signal.SIGKILL)
    await recorder.next(EventKind.SPAWNED, "a")
    assert sup.pids()["b"] == b_pid
    assert sup.status()["b"].restarts == 0


async def test_backoff_doubles_while_a_worker_keeps_crashing(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """A worker that exits at once is restarted after 1, 2, 4, 8, ... seconds."""
    sleep = FakeSleep()
    sup = Supervisor(
        workers("a"), tmp_path, recorder, sleep=sleep, launch=script_launch({"a": CRASHER})
    )
    stopper.append(sup)
    await sup.start()
    for _ in range(6):
        await recorder.next(EventKind.RESTARTING)
    await sup.stop()
    assert sleep.delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


async def test_exit_event_carries_the_return_code(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """The exited event reports the worker's exit status."""
    sup = Supervisor(
        workers("a"), tmp_path, recorder, sleep=FakeSleep(), launch=script_launch({"a": CRASHER})
    )
    stopper.append(sup)
    await sup.start()
    exited = await recorder.next(EventKind.EXITED)
    assert exited.returncode == 3
    assert recorder.kinds("a")[:3] == [EventKind.SPAWNED, EventKind.EXITED, EventKind.RESTARTING]


async def test_backoff_resets_after_a_worker_stayed_up(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """With a clock that says each run lasted 61 s, every restart waits the initial 1 s."""
    now = [0.0]

    def clock() -> float:
        now[0] += 61.0
        return now[0]

    sleep = FakeSleep()
    launch = script_launch({"a": CRASHER})
    sup = Supervisor(workers("a"), tmp_path, recorder, clock=clock, sleep=sleep, launch=launch)
    stopper.append(sup)
    await sup.start()
    for _ in range(3):
        await recorder.next(EventKind.RESTARTING)
    await sup.stop()
    assert sleep.delays[:3] == [1.0, 1.0, 1.0]


def test_backoff_policy_doubles_caps_and_resets() -> None:
    """next_delay: initial first, doubled per quick crash, capped, reset after uptime."""
    policy = Backoff(initial=1.0, factor=2.0, maximum=5.0, reset_after=60.0)
    assert policy.next_delay(None, 0.0) == 1.0
    assert policy.next_delay(1.0, 0.5) == 2.0
    assert policy.next_delay(4.0, 0.5) == 5.0
    assert policy.next_delay(5.0, 60.0) == 1.0


async def test_stop_leaves_no_process_and_no_scratch_dir(
    tmp_path: Path, recorder: Recorder, usr1: asyncio.Event
) -> None:
    """After stop() the worker's whole process group is gone and its scratch dir removed."""
    sup = Supervisor(workers("a"), tmp_path, recorder, launch=script_launch({"a": FAMILY}))
    await sup.start()
    pid = sup.pids()["a"]
    assert pid is not None
    assert (tmp_path / "scratch" / "a").is_dir()
    async with asyncio.timeout(WAIT):
        await usr1.wait()
    assert group_alive(pid)
    await sup.stop()
    assert not group_alive(pid)
    assert not (tmp_path / "scratch").exists()
    assert sup.pids() == {"a": None}


async def test_stop_reports_stopped_for_each_worker(tmp_path: Path, recorder: Recorder) -> None:
    """stop() emits one stopped event per worker, with the SIGTERM exit status."""
    sup = Supervisor(
        workers("a", "b"), tmp_path, recorder, launch=script_launch({"a": SLEEPER, "b": SLEEPER})
    )
    await sup.start()
    await sup.stop()
    stopped = [e for e in recorder.events if e.kind is EventKind.STOPPED]
    assert sorted(e.worker for e in stopped) == ["a", "b"]
    assert all(e.returncode == -signal.SIGTERM for e in stopped)
    assert sup.status()["a"].state is WorkerState.STOPPED


async def test_stop_kills_a_worker_that_ignores_sigterm(
    tmp_path: Path, recorder: Recorder, usr1: asyncio.Event
) -> None:
    """A worker still alive at the stop deadline gets SIGKILL."""
    launch = script_launch({"a": STUBBORN})
    sup = Supervisor(workers("a"), tmp_path, recorder, stop_timeout=0.5, launch=launch)
    await sup.start()
    pid = sup.pids()["a"]
    assert pid is not None
    async with asyncio.timeout(WAIT):
        await usr1.wait()
    await sup.stop()
    assert not group_alive(pid)
    assert sup.status()["a"].last_returncode == -signal.SIGKILL


async def test_leftovers_of_an_exited_worker_are_killed_before_restart(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """When a worker's leader exits, the rest of its process group is killed."""
    pid_file = tmp_path / "grandchild.pid"
    launch = script_launch({"a": ORPHANER}, extra=(str(pid_file),))
    sup = Supervisor(workers("a"), tmp_path, recorder, sleep=FakeSleep(), launch=launch)
    stopper.append(sup)
    await sup.start()
    await recorder.next(EventKind.EXITED)
    grandchild = int(pid_file.read_text())
    assert not running(grandchild)


async def test_worker_output_goes_to_its_log_file(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """stdout of the worker is appended to <state_dir>/logs/<name>.log."""
    sup = Supervisor(
        workers("a"), tmp_path, recorder, sleep=FakeSleep(), launch=script_launch({"a": CRASHER})
    )
    stopper.append(sup)
    await sup.start()
    await recorder.next(EventKind.EXITED)
    log = (tmp_path / "logs" / "a.log").read_text()
    assert "crashing" in log
    assert "--- tera supervisor" in log


async def test_a_worker_that_cannot_spawn_is_retried(
    tmp_path: Path, recorder: Recorder, stopper: list[Supervisor]
) -> None:
    """A missing executable is a spawn failure followed by a restart, not a crash."""

    def launch(worker: WorkerConfig, state_dir: Path, env: Mapping[str, str]) -> LaunchSpec:
        spec = script_launch({"a": SLEEPER})(worker, state_dir, env)
        return LaunchSpec(
            spec.name, ("/nonexistent/python",), spec.env, spec.cwd, spec.log, spec.scratch
        )

    sup = Supervisor(workers("a"), tmp_path, recorder, sleep=FakeSleep(), launch=launch)
    stopper.append(sup)
    await sup.start()
    failed = await recorder.next(EventKind.SPAWN_FAILED)
    await recorder.next(EventKind.SPAWN_FAILED)
    assert "nonexistent" in failed.detail
    assert sup.pids() == {"a": None}


async def test_supervisor_starts_only_once(tmp_path: Path, stopper: list[Supervisor]) -> None:
    """A second start() is a programming error."""
    sup = Supervisor(workers("a"), tmp_path, launch=script_launch({"a": SLEEPER}))
    stopper.append(sup)
    await sup.start()
    with pytest.raises(RuntimeError):
        await sup.start()


async def test_stop_without_start_is_harmless(tmp_path: Path) -> None:
    """stop() on a supervisor that never started spawns nothing and does not fail."""
    sup = Supervisor(workers("a"), tmp_path, launch=script_launch({"a": SLEEPER}))
    await sup.stop()
    assert sup.pids() == {"a": None}


async def test_reprs_show_state(tmp_path: Path, stopper: list[Supervisor]) -> None:
    """Supervisor, status and event reprs name the worker and what it is doing."""
    sup = Supervisor(workers("a"), tmp_path, launch=script_launch({"a": SLEEPER}))
    stopper.append(sup)
    await sup.start()
    assert repr(sup) == "<Supervisor workers=1 running=1>"
    assert repr(sup.status()["a"]).startswith("<WorkerStatus a RUNNING pid=")
    event = WorkerEvent("a", EventKind.RESTARTING, delay=2.0)
    assert repr(event) == "<WorkerEvent a restarting delay=2.0>"


async def test_wait_healthy_returns_once_health_answers_200(
    tmp_path: Path, stopper: list[Supervisor]
) -> None:
    """wait_healthy() returns when every worker's /health says 200."""
    port = free_port()
    worker = WorkerConfig(name="a", kind="sim", port=port)
    sup = Supervisor([worker], tmp_path, launch=script_launch({"a": HEALTHY}, (str(port),)))
    stopper.append(sup)
    await sup.start()
    await sup.wait_healthy(WAIT)
    assert sup.status()["a"].state is WorkerState.RUNNING


async def test_wait_healthy_names_the_workers_that_never_answer(
    tmp_path: Path, stopper: list[Supervisor]
) -> None:
    """A worker that never listens makes wait_healthy() time out, naming it and its log."""
    port = free_port()
    worker = WorkerConfig(name="mute", kind="sim", port=port)
    sup = Supervisor([worker], tmp_path, launch=script_launch({"mute": SLEEPER}))
    stopper.append(sup)
    await sup.start()
    with pytest.raises(TimeoutError, match=r"\['mute'\].*mute\.log"):
        await sup.wait_healthy(0.3)


async def test_a_failing_listener_does_not_stop_restarts(
    tmp_path: Path, stopper: list[Supervisor]
) -> None:
    """An on_event callback that raises is logged; the worker is still restarted."""
    seen = Recorder()

    def listener(event: WorkerEvent) -> None:
        seen(event)
        raise RuntimeError("listener bug")

    launch = script_launch({"a": CRASHER})
    sup = Supervisor(workers("a"), tmp_path, listener, sleep=FakeSleep(), launch=launch)
    stopper.append(sup)
    await sup.start()
    await seen.next(EventKind.RESTARTING)
    await seen.next(EventKind.SPAWNED)
    assert sup.status()["a"].restarts >= 1
