"""Shared pieces of the tenancy end-to-end tests (test_e2e_*.py): simulator replicas,
the proxy with auth on a real Hypercorn server, keys, the official openai client, and
readers for what the proxy leaves behind (ledger rows, /metrics, log lines)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import openai
from prometheus_client.parser import text_string_to_metric_families

from backends.sim import SimConfig, SimServer
from backends.sim.stats import RecordedRequest
from tera_proxy.app import App, create_app
from tera_proxy.config import Config, parse_config
from tera_proxy.keys import KeyLimits, KeyStore, NewKey
from tera_proxy.store.sqlite import SqliteKeys
from tera_proxy.tenancy import Outcome, Ticket
from tests.helpers import serve_app, wait_ready

ROOT = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-oss-20b"
BIG = "openai/gpt-oss-120b"
# The seeds' prices, USD per million tokens (input, output).
PRICES = {MODEL: (Decimal("0.07"), Decimal("0.25")), BIG: (Decimal("0.09"), Decimal("0.36"))}
REPLICA_KEY = "replica-secret"
SERVER_SECRET = "5e" * 32  # [keys] secret: lets a test create keys the proxy will know
USER = [{"role": "user", "content": "What's the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
NO_LIMITS = KeyLimits()
STARTUP = 15.0  # seconds a proxy process gets to become ready


def config_dict(urls: Sequence[str], **sections: Any) -> dict[str, Any]:
    """Proxy config for simulator `urls` (r0, r1, ...); `sections` override tables."""
    names = [f"r{i}" for i in range(len(urls))]
    models = [
        {
            "id": model,
            "context_length": 131072,
            "max_output_tokens": 4096,
            "input_price_per_million": float(prices[0]),
            "output_price_per_million": float(prices[1]),
            "replicas": names,
        }
        for model, prices in PRICES.items()
    ]
    raw: dict[str, Any] = {
        "upstream": {"connect_timeout": 1.0, "read_timeout": 5.0},
        "health": {"interval": 0.2, "timeout": 1.0},
        "auth": {"enabled": True},
        "keys": {"secret": SERVER_SECRET},
        "ledger": {"flush_interval": 0.05},
        "replicas": [
            {"name": n, "url": u, "api_key": REPLICA_KEY} for n, u in zip(names, urls, strict=True)
        ],
        "models": models,
    }
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return raw


def tenant_config(urls: Sequence[str], **sections: Any) -> Config:
    return parse_config(config_dict(urls, **sections))


def sim_config(**overrides: Any) -> SimConfig:
    return SimConfig(models=tuple(PRICES), api_key=REPLICA_KEY, **overrides)


def chats(sims: Iterable[SimServer]) -> list[RecordedRequest]:
    """The chat requests the simulators received (the prober's warm-ups are completions)."""
    return [r for s in sims for r in s.stats.requests if r.path == "/v1/chat/completions"]


class SettleWatch:
    """Counts requests an app has settled, so tests await that instead of racing it."""

    def __init__(self, app: App) -> None:
        self.count = 0
        self._changed = asyncio.Condition()
        original = app.tenancy.settle

        async def settle(ticket: Ticket, outcome: Outcome) -> None:
            # A request may call settle twice (before its last byte, then in a `finally`);
            # only the first call settles it.
            first = not ticket.settled
            try:
                await original(ticket, outcome)
            finally:
                if first:
                    self.count += 1
                    async with self._changed:
                        self._changed.notify_all()

        app.tenancy.settle = settle

    async def wait(self, n: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.count >= n)


@dataclass
class Tenant:
    """One proxy with auth on, its simulator replicas and a key with its own client."""

    url: str
    app: App
    sims: list[SimServer]
    state_dir: Path
    key: NewKey
    client: openai.AsyncOpenAI
    settled: SettleWatch
    stack: AsyncExitStack = field(repr=False)

    @property
    def db(self) -> Path:
        return self.state_dir / self.app.config.database.sqlite_path

    def client_for(self, api_key: str, **options: Any) -> openai.AsyncOpenAI:
        return make_client(self.stack, self.url, api_key, **options)

    async def new_key(
        self, name: str, *, models: Sequence[str] = ("*",), limits: KeyLimits = NO_LIMITS
    ) -> tuple[NewKey, openai.AsyncOpenAI]:
        key = await self.app.tenancy.keys.create(name, models=models, limits=limits)
        return key, self.client_for(key.secret)


def make_client(
    stack: AsyncExitStack, url: str, api_key: str, **options: Any
) -> openai.AsyncOpenAI:
    """The official client, no retries of its own, closed with `stack`."""
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=10, **options
    )
    stack.push_async_callback(client.close)
    return client


async def start_sims(stack: AsyncExitStack, n: int, **sim: Any) -> list[SimServer]:
    return [await stack.enter_async_context(SimServer(sim_config(**sim), port=0)) for _ in range(n)]


@asynccontextmanager
async def tenant(
    state_dir: Path,
    *,
    replicas: int = 2,
    sim: dict[str, Any] | None = None,
    models: Sequence[str] = ("*",),
    limits: KeyLimits = NO_LIMITS,
    **sections: Any,
) -> AsyncIterator[Tenant]:
    """Simulators, the proxy on Hypercorn with state in `state_dir`, and one key."""
    async with AsyncExitStack() as stack:
        sims = await start_sims(stack, replicas, **(sim or {}))
        app = create_app(tenant_config([s.url for s in sims], **sections), state_dir=state_dir)
        settled = SettleWatch(app)
        url = await stack.enter_async_context(serve_app(app))
        await wait_ready(app)
        key = await app.tenancy.keys.create("e2e", models=models, limits=limits)
        client = make_client(stack, url, key.secret)
        yield Tenant(url, app, sims, state_dir, key, client, settled, stack)


async def create_key(
    state_dir: Path,
    name: str = "e2e",
    *,
    models: Sequence[str] = ("*",),
    limits: KeyLimits = NO_LIMITS,
    sqlite_path: str = "tera.db",
) -> NewKey:
    """A key created the way an operator would, straight in the proxy's database."""
    keys = KeyStore(SqliteKeys(state_dir / sqlite_path), SERVER_SECRET.encode())
    await keys.start()
    try:
        return await keys.create(name, models=models, limits=limits)
    finally:
        await keys.stop()


async def revoke_key(state_dir: Path, key_id: str) -> None:
    """Revoke a key from outside the proxy (another proxy or an operator's CLI)."""
    keys = KeyStore(SqliteKeys(state_dir / "tera.db"), SERVER_SECRET.encode())
    await keys.start()
    try:
        assert await keys.revoke(key_id)
    finally:
        await keys.stop()


# -- what the proxy leaves behind ----------------------------------------------------------


async def ledger_rows(db: Path) -> list[dict[str, Any]]:
    """Every ledger row as stored in the SQLite file, bypassing the proxy."""
    async with aiosqlite.connect(db) as conn:
        conn.row_factory = aiosqlite.Row
        rows = await conn.execute_fetchall("SELECT * FROM tera_ledger")
    return [dict(r) for r in rows]


def cost_of(model: str, prompt: int, completion: int) -> Decimal:
    """The exact cost under the seeds' prices; reasoning is inside `completion`."""
    input_price, output_price = PRICES[model]
    return (prompt * input_price + completion * output_price) / Decimal(1_000_000)


def picousd(cost: Decimal) -> int:
    value = cost * Decimal(10) ** 12
    assert value == value.to_integral_value(), cost
    return int(value)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """GET /metrics: every sample by (name, labels)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a counter child not created yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def request_lines(logs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-request log lines among captured structlog events."""
    return [e for e in logs if e.get("event") == "request"]


# -- the real CLI in a subprocess ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(raw: dict[str, Any]) -> str:
    """Enough TOML for a proxy config: tables of scalars and arrays of such tables."""
    lines: list[str] = []
    scalars = {k: v for k, v in raw.items() if not isinstance(v, (dict, list))}
    lines += [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
    for name, value in raw.items():
        if isinstance(value, dict):
            lines += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in value.items())]
        elif isinstance(value, list):
            for table in value:
                lines += ["", f"[[{name}]]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@dataclass
class ProxyProcess:
    """`python -m tera_proxy serve --config F` in its own session, stopped by PID."""

    proc: asyncio.subprocess.Process
    url: str
    log: Path

    async def terminate(self, within: float = 20.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def proxy_process(
    config: dict[str, Any], workdir: Path, *, cwd: Path | None = None
) -> AsyncIterator[ProxyProcess]:
    """The real CLI on `config` (port chosen here), ready; killed by PID on exit."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": port}}
    path = workdir / "tera.toml"
    path.write_text(to_toml(config))
    log = workdir / "proxy.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERA_")}
    env["PYTHONPATH"] = str(ROOT)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tera_proxy", "serve", "--config", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            cwd=cwd or workdir, env=env, start_new_session=True,
        )  # fmt: skip
    running = ProxyProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        await _until_ready(running)
        yield running
    finally:
        await running.kill()


async def _until_ready(p: ProxyProcess) -> None:
    deadline = time.monotonic() + STARTUP
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if p.proc.returncode is not None:
                raise RuntimeError(f"proxy exited with {p.proc.returncode}: {p.log_text()[-2000:]}")
            try:
                async with session.get(f"{p.url}/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # nothing to await on another process
    raise TimeoutError(f"proxy not ready within {STARTUP}s: {p.log_text()[-2000:]}")
