"""`tera-proxy keys create|list|revoke` and `tera-proxy usage`, run in-process through
the CLI's main, against the same config and state dir as a running proxy."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import structlog

from backends.sim import SimConfig, SimServer
from tera_proxy.accounting import LedgerRow
from tera_proxy.app import App, create_app
from tera_proxy.cli import main
from tera_proxy.config import load_config
from tera_proxy.keys import KeyStore, server_secret, well_formed
from tera_proxy.store import key_backend
from tests.helpers import serve_app, wait_ready
from tests.tenancy.support import Database, ledger_row

MODEL = "openai/gpt-oss-20b"
INPUT_PRICE, OUTPUT_PRICE = Decimal("0.07"), Decimal("0.25")  # per million tokens
PROPAGATION = 1.0  # seconds: how soon a running proxy must see a key change


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI configures structlog for its process; put the test session's back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def write_config(folder: Path, body: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tera.toml"
    path.write_text(f'state_dir = "state"\n{body}')
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "etc")


@dataclass
class Run:
    code: int
    out: str
    err: str


def exit_code(argv: list[str]) -> int:
    """`main`'s exit status as a shell sees it, argparse's SystemExit included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """`tera-proxy *argv` in a thread: the CLI runs its own event loop, as in a shell."""
    capsys.readouterr()
    code = await asyncio.to_thread(exit_code, list(argv))
    out, err = capsys.readouterr()
    return Run(code, out, err)


async def create(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> str:
    run = await cli(capsys, "keys", "create", "--config", str(config), "--quiet", *extra)
    assert run.code == 0, run.err
    return run.out.strip()


def state_of(config: Path) -> Path:
    return (config.parent / load_config(config).state_dir).resolve()


@asynccontextmanager
async def key_store(config: Path) -> AsyncIterator[KeyStore]:
    """The key store a proxy with this config would open."""
    loaded, state = load_config(config), state_of(config)
    store = KeyStore(
        key_backend(loaded.database, state), server_secret(loaded.keys, os.environ, state)
    )
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


# -- keys ---------------------------------------------------------------------------------


async def test_create_prints_the_secret_once(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """`keys create` prints id, prefix, models and limits, and the secret exactly once."""
    run = await cli(capsys, "keys", "create", "--config", str(config_file), "--name", "me",
                    "--models", "openai/*", "--max-concurrency", "2")  # fmt: skip
    assert run.code == 0
    secret = run.out.strip().splitlines()[-1]
    assert well_formed(secret)
    assert (run.out + run.err).count(secret) == 1
    async with key_store(config_file) as store:
        record = await store.lookup(secret)
    assert record is not None
    for shown in (record.id, record.prefix, "openai/*", "concurrency=2"):
        assert shown in run.out


async def test_quiet_prints_only_the_secret(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """`--quiet` prints the secret alone on one line, for `$(tera-proxy keys create ...)`."""
    run = await cli(capsys, "keys", "create", "--config", str(config_file), "--name", "me",
                    "--quiet")  # fmt: skip
    assert run.code == 0
    assert re.fullmatch(r"sk-tera-[A-Za-z0-9_-]{43}\n", run.out)
    assert run.err == ""


async def test_create_stores_models_and_limits(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """Comma-separated globs and each limit flag end up in the stored key."""
    secret = await create(capsys, config_file, "--name", "team", "--models", "openai/*, Qwen/*",
                          "--tokens-per-minute", "1000", "--requests-per-minute", "60")  # fmt: skip
    async with key_store(config_file) as store:
        record = await store.lookup(secret)
    assert record is not None
    assert record.models == ("openai/*", "Qwen/*")
    limits = record.limits
    assert (limits.max_concurrency, limits.tokens_per_minute, limits.requests_per_minute) == (
        None,
        1000,
        60,
    )


async def test_create_refuses_a_non_positive_limit(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """A zero limit is a usage error (exit 2), before any key is made."""
    run = await cli(capsys, "keys", "create", "--config", str(config_file), "--name", "x",
                    "--max-concurrency", "0")  # fmt: skip
    assert run.code == 2
    assert "positive integer" in run.err
    async with key_store(config_file) as store:
        assert await store.list() == []


async def test_create_refuses_an_empty_model_pattern(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """`--models 'openai/*,'` exits 1 with a message and creates nothing."""
    run = await cli(capsys, "keys", "create", "--config", str(config_file), "--name", "x",
                    "--models", "openai/*,")  # fmt: skip
    assert run.code == 1
    assert "model pattern" in run.err
    async with key_store(config_file) as store:
        assert await store.list() == []


async def test_create_uses_the_configured_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, database: Database
) -> None:
    """With [database] set (SQLite file or PostgreSQL), the key is written there."""
    where = (
        f'postgres_dsn = "{database.dsn}"' if database.dsn else f'sqlite_path = "{database.path}"'
    )
    config = write_config(tmp_path / "etc", f"[database]\n{where}\n")
    secret = await create(capsys, config, "--name", "elsewhere")
    backend = database.keys()
    await backend.open()
    try:
        records = await backend.records()
    finally:
        await backend.close()
    assert [(r.name, r.prefix) for r in records] == [("elsewhere", secret[:12])]


async def test_list_shows_keys_without_secrets(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """`keys list` shows each key's fields and revocation, never a secret."""
    first = await create(capsys, config_file, "--name", "alpha", "--max-concurrency", "3")
    second = await create(capsys, config_file, "--name", "beta", "--models", "Qwen/*")
    async with key_store(config_file) as store:
        alpha, beta = await store.list()
        await store.revoke(beta.id)
    run = await cli(capsys, "keys", "list", "--config", str(config_file))
    assert run.code == 0
    header, *rows = run.out.splitlines()
    assert header.split() == ["ID", "NAME", "PREFIX", "MODELS", "LIMITS", "CREATED", "REVOKED"]
    assert rows[0].split()[:5] == [alpha.id, "alpha", alpha.prefix, "*", "concurrency=3"]
    assert rows[0].split()[-1] == "-"
    assert rows[1].split()[:5] == [beta.id, "beta", beta.prefix, "Qwen/*", "unlimited"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[1].split()[-1])
    assert first not in run.out and second not in run.out
    assert first[12:20] not in run.out and second[12:20] not in run.out


async def test_revoke_revokes_the_key(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """`keys revoke ID` exits 0 and the key no longer authenticates."""
    secret = await create(capsys, config_file, "--name", "me")
    async with key_store(config_file) as store:
        (record,) = await store.list()
    run = await cli(capsys, "keys", "revoke", record.id, "--config", str(config_file))
    assert run.code == 0
    async with key_store(config_file) as store:
        assert await store.lookup(secret) is None


async def test_revoke_unknown_id_exits_1(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """Revoking an id no active key has exits 1 and says so."""
    run = await cli(capsys, "keys", "revoke", "key_nope", "--config", str(config_file))
    assert run.code == 1
    assert "no active key" in run.err and "key_nope" in run.err


async def test_invalid_config_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A config file that does not load exits 1 naming the file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = -1\n")
    run = await cli(capsys, "keys", "list", "--config", str(bad))
    assert run.code == 1
    assert str(bad) in run.err and "server.port" in run.err


# -- against a running proxy ----------------------------------------------------------------


@dataclass
class Proxy:
    url: str
    app: App
    config: Path

    def client(self, secret: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=secret, max_retries=0, timeout=10
        )


PROXY_CONFIG = f"""
[health]
interval = 0.2

[[replicas]]
name = "r0"
url = "{{url}}"

[[models]]
id = "{MODEL}"
context_length = 8192
max_output_tokens = 1024
input_price_per_million = {INPUT_PRICE}
output_price_per_million = {OUTPUT_PRICE}
replicas = ["r0"]
"""


@asynccontextmanager
async def running_proxy(folder: Path) -> AsyncIterator[Proxy]:
    """The proxy as `serve` runs it: config file, state dir beside it, auth on."""
    async with SimServer(SimConfig(models=(MODEL,)), port=0) as sim:
        config = write_config(folder, PROXY_CONFIG.format(url=sim.url))
        app = create_app(load_config(config), state_dir=state_of(config))
        async with serve_app(app) as url:
            await wait_ready(app)
            yield Proxy(url, app, config)


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    async with running_proxy(tmp_path / "etc") as p:
        yield p


async def chat(client: openai.AsyncOpenAI) -> openai.types.CompletionUsage | None:
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    return response.usage


async def eventually_served(client: openai.AsyncOpenAI) -> openai.types.CompletionUsage | None:
    """The usage of the first request the proxy serves, within PROPAGATION seconds."""
    async with asyncio.timeout(PROPAGATION):
        while True:
            try:
                return await chat(client)
            except openai.AuthenticationError:
                await asyncio.sleep(0.02)  # the proxy's key cache refreshes on its own clock


async def test_created_key_works_on_a_running_proxy(
    capsys: pytest.CaptureFixture[str], proxy: Proxy
) -> None:
    """A key made by `keys create` is accepted by the running proxy within a second."""
    async with proxy.client(await create(capsys, proxy.config, "--name", "live")) as client:
        assert await eventually_served(client) is not None


async def test_revoked_key_is_refused_by_a_running_proxy(
    capsys: pytest.CaptureFixture[str], proxy: Proxy
) -> None:
    """After `keys revoke`, the running proxy answers 401 to that key within a second."""
    async with proxy.client(await create(capsys, proxy.config, "--name", "live")) as client:
        await eventually_served(client)
        (record,) = await proxy.app.tenancy.keys.list()
        run = await cli(capsys, "keys", "revoke", record.id, "--config", str(proxy.config))
        assert run.code == 0
        async with asyncio.timeout(PROPAGATION):
            with pytest.raises(openai.AuthenticationError):
                while True:
                    await chat(client)
                    await asyncio.sleep(0.02)


# -- usage ------------------------------------------------------------------------------------


def usage_table(out: str) -> dict[str, list[str]]:
    """`tera-proxy usage` rows by their first cell (cells are 2+ spaces apart)."""
    header, *rows = out.splitlines()
    assert header.split() == [
        "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "REASONING", "COST_USD"
    ]  # fmt: skip
    return {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", row) for row in rows)}


async def test_usage_equals_what_the_proxy_served(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """After real requests through the proxy, `usage` shows their exact sums and cost."""
    async with running_proxy(tmp_path / "etc") as proxy:
        async with proxy.client(await create(capsys, proxy.config, "--name", "me")) as client:
            usages = [await eventually_served(client), await chat(client), await chat(client)]
        (record,) = await proxy.app.tenancy.keys.list()
    # The proxy has stopped: its ledger wrote every row on the way out.
    run = await cli(capsys, "usage", "--config", str(proxy.config))
    assert run.code == 0
    table = usage_table(run.out)
    row = table[f"{record.id} (me)"]
    assert row[0] == MODEL
    requests, prompt, completion = int(row[1]), int(row[2]), int(row[3])
    assert requests == 3
    assert prompt == sum(u.prompt_tokens for u in usages if u)
    assert completion == sum(u.completion_tokens for u in usages if u)
    assert prompt and completion
    cost = (prompt * INPUT_PRICE + completion * OUTPUT_PRICE) / 1_000_000
    assert Decimal(row[5]) == cost.quantize(Decimal("0.0000001"))
    assert table["TOTAL"][0] == "3"


async def record_rows(config: Path, rows: list[LedgerRow]) -> None:
    """Rows recorded through a proxy's ledger, flushed as the proxy flushes on stop."""
    app = create_app(load_config(config), state_dir=state_of(config))
    await app.tenancy.ledger.start()
    for row in rows:
        app.tenancy.ledger.record(row)
    await app.tenancy.ledger.stop()


async def test_usage_filters_by_key(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    """`usage --key ID` totals only that key's rows."""
    now = time.time()
    rows = [ledger_row(1, key_id="key_a", at=now), ledger_row(2, key_id="key_b", prompt=7, at=now)]
    await record_rows(config_file, rows)
    run = await cli(capsys, "usage", "--key", "key_b", "--config", str(config_file))
    table = usage_table(run.out)
    assert set(table) == {"key_b", "TOTAL"}
    assert table["TOTAL"][:2] == ["1", "7"]


async def test_usage_filters_by_since(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """`usage --since 24h` leaves out older rows."""
    now = time.time()
    rows = [ledger_row(1, prompt=100, at=now - 2 * 86400), ledger_row(2, prompt=9, at=now - 3600)]
    await record_rows(config_file, rows)
    run = await cli(capsys, "usage", "--since", "24h", "--config", str(config_file))
    assert usage_table(run.out)["TOTAL"][:2] == ["1", "9"]


async def test_usage_bad_since_exits_1(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    """A --since that is neither a duration nor an ISO date exits 1 explaining why."""
    run = await cli(capsys, "usage", "--since", "yesterday", "--config", str(config_file))
    assert run.code == 1
    assert "--since" in run.err and "24h" in run.err
