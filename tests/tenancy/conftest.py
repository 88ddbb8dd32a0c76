"""Real servers for the tenancy tests: redis-server and PostgreSQL, each started once
per session on a free loopback port and stopped by PID.

A missing server binary skips the tests that need it, except under CI=true, where it
fails them: CI must install the Debian packages `redis-server` and `postgresql`.
PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tenancy.support import Database, FakeClock

STARTUP_TRIES = 400  # x 25 ms: ten seconds for a server to accept connections


def _missing(what: str) -> None:
    message = f"{what} is not installed (Debian: apt-get install -y redis-server postgresql)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the PostgreSQL server binaries off PATH, per major version.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _wait_ready(proc: subprocess.Popen[bytes], ready: Any, what: str, log: Path) -> None:
    for _ in range(STARTUP_TRIES):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.025)
    _stop(proc)
    raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    binary = _binary("redis-server")
    if binary is None:
        _missing("redis-server")
    assert binary is not None
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tera-redis-"))
    log = workdir / "redis.log"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir),
            "--logfile", str(log)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log.touch()
        _wait_ready(proc, lambda: _redis_pong(port), "redis-server", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that drop root to the `postgres` user; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        _missing("the `postgres` user (needed to run PostgreSQL as root)")
        raise
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _pg_ready(pg_isready: str, port: int) -> bool:
    args = [pg_isready, "-q", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.run(args, check=False).returncode == 0


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    tools = {name: _binary(name) for name in ("initdb", "postgres", "pg_isready")}
    if None in tools.values():
        _missing("PostgreSQL (initdb, postgres, pg_isready)")
    initdb, postgres, pg_isready = (str(tools[n]) for n in ("initdb", "postgres", "pg_isready"))
    drop = _as_postgres_user()
    base = Path(tempfile.mkdtemp(prefix="tera-pg-"))
    if drop:
        os.chown(base, drop["user"], drop["group"])
    data, log, port = base / "data", base / "postgres.log", _free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [initdb, "-D", str(data), "-U", "tera", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=base, **drop,
        )  # fmt: skip
        args = [postgres, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={base}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=base, **drop)
        _wait_ready(proc, lambda: _pg_ready(pg_isready, port), "postgres", log)
        yield f"postgresql://tera@127.0.0.1:{port}/postgres"
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, empty database of each kind: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield Database("sqlite", path=tmp_path / "tera.db")
        return
    import asyncpg  # type: ignore[import-untyped]

    server: str = request.getfixturevalue("postgres_dsn")
    schema = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        # Unknown DSN parameters become server settings in asyncpg.
        yield Database("postgres", dsn=f"{server}?search_path={schema}")
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
