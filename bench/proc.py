"""Process-tree accounting from /proc (no psutil needed): CPU seconds and RSS of a
process and all its descendants, and starting/stopping process groups we own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        st = _stat(int(entry.name))
        if st is not None:
            kids.setdefault(int(st[1]), []).append(int(entry.name))
    return kids


def tree(root: int) -> list[int]:
    """root and every descendant alive now."""
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """user + system CPU of these processes (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            total += int(st[11]) + int(st[12])
    return total / TICK


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            total += int(st[21]) * PAGE
    return total


def hwm_bytes(pids: Iterable[int]) -> int:
    """Sum of each process's own peak RSS (VmHWM): an upper bound of the tree's peak."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class Tree:
    """CPU and RSS of a process tree; the pid list is refreshed on each reading (workers
    may come and go), and a tree whose processes exited keeps the CPU it last showed."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._seen: dict[int, float] = {}

    def cpu(self) -> float:
        for pid in tree(self.root):
            self._seen[pid] = max(cpu_seconds([pid]), self._seen.get(pid, 0.0))
        return sum(self._seen.values())

    def rss(self) -> int:
        return rss_bytes(tree(self.root))

    def hwm(self) -> int:
        return hwm_bytes(tree(self.root))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a command in its own process group (so stop() ends it and all it started)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = log.open("ab")
    try:
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        fh.close()


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `grace`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
