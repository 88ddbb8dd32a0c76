"""`tera-proxy keys create|list|revoke` and `tera-proxy usage`.

The commands open the configured store directly (the SQLite file under the state dir,
or PostgreSQL) with the same server secret as a running proxy, which sees a key created
or revoked here within its refresh interval (`[keys] refresh_interval`, at most 1 s).
A key's secret is printed once, by `keys create`, and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tera_proxy.accounting import format_usage, parse_since
from tera_proxy.config import Config, ConfigError, load_config
from tera_proxy.keys import KeyLimits, KeyRecord, KeyStore, NewKey, server_secret
from tera_proxy.store import key_backend, ledger_backend

COMMANDS = ("keys", "usage")
DEFAULT_CONFIG = "config/default.toml"

Command = Callable[[argparse.Namespace, Config, Path], Coroutine[Any, Any, int]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys` and `usage` to the `tera-proxy` subcommands."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = _with_config(actions.add_parser("create", help="create a key; prints its secret once"))
    create.add_argument("--name", required=True)
    create.add_argument("--models", default="*", help="comma-separated model id globs (default *)")
    for flag in ("--max-concurrency", "--tokens-per-minute", "--requests-per-minute"):
        create.add_argument(flag, type=_positive_int, help="default: unlimited")
    create.add_argument("--quiet", action="store_true", help="print only the secret")
    _with_config(actions.add_parser("list", help="list keys (never their secrets)"))
    revoke = _with_config(actions.add_parser("revoke", help="revoke a key by id"))
    revoke.add_argument("id")
    usage = _with_config(sub.add_parser("usage", help="ledger totals per key and model"))
    usage.add_argument("--key", help="only this key id")
    usage.add_argument("--since", help="a duration (30m, 24h, 7d, 2w) or an ISO date/time")


def run(args: argparse.Namespace) -> int:
    """Run a command added by `add_commands`; the process exit code."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: invalid: {exc}", file=sys.stderr)
        return 1
    state_dir = (Path(args.config).parent / config.state_dir).resolve()
    command = _usage if args.command == "usage" else _KEY_COMMANDS[args.keys_command]
    _logs_to_stderr()
    try:
        return asyncio.run(command(args, config, state_dir))
    except (ValueError, OSError) as exc:
        # A refused key, a bad --since, the server secret (ConfigError is a ValueError),
        # an unreachable database: one line, no traceback.
        print(f"tera-proxy {args.command}: {exc}", file=sys.stderr)
        return 1


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _logs_to_stderr() -> None:
    # stdout is the command's output (`export TERA_API_KEY=$(tera-proxy keys create
    # --quiet ...)`): logs go to stderr, warnings only. Not cached, unlike the server's
    # set-up, so the configuration can be replaced (tests run commands in-process).
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


# -- commands ---------------------------------------------------------------------------


async def _create(args: argparse.Namespace, config: Config, state_dir: Path) -> int:
    limits = KeyLimits(args.max_concurrency, args.tokens_per_minute, args.requests_per_minute)
    models = parse_models(args.models)
    async with _key_store(config, state_dir) as store:
        new = await store.create(args.name, models=models, limits=limits)
    print(new.secret if args.quiet else describe_new_key(new))
    return 0


async def _list(args: argparse.Namespace, config: Config, state_dir: Path) -> int:
    print(format_keys(await _records(config, state_dir)))
    return 0


async def _revoke(args: argparse.Namespace, config: Config, state_dir: Path) -> int:
    async with _key_store(config, state_dir) as store:
        revoked = await store.revoke(args.id)
    if not revoked:
        print(f"tera-proxy keys revoke: no active key has the id {args.id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


async def _usage(args: argparse.Namespace, config: Config, state_dir: Path) -> int:
    since = None if args.since is None else parse_since(args.since)
    ledger = ledger_backend(config.database, state_dir)
    await ledger.open()
    try:
        totals = await ledger.totals(since=since, key_id=args.key)
    finally:
        await ledger.close()
    names = {r.id: r.name for r in await _records(config, state_dir)}
    print(format_usage(totals, names))
    return 0


_KEY_COMMANDS: dict[str, Command] = {"create": _create, "list": _list, "revoke": _revoke}


@asynccontextmanager
async def _key_store(config: Config, state_dir: Path) -> AsyncIterator[KeyStore]:
    secret = server_secret(config.keys, os.environ, state_dir)
    store = KeyStore(key_backend(config.database, state_dir), secret)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def _records(config: Config, state_dir: Path) -> list[KeyRecord]:
    # Reading needs no server secret: only creating a key does.
    backend = key_backend(config.database, state_dir)
    await backend.open()
    try:
        return await backend.records()
    finally:
        await backend.close()


# -- pure: arguments in, text out -------------------------------------------------------


def parse_models(text: str) -> tuple[str, ...]:
    """`openai/*, Qwen/*` -> ("openai/*", "Qwen/*"); empty globs are kept so that
    creating the key refuses them."""
    return tuple(part.strip() for part in text.split(","))


def describe_limits(limits: KeyLimits) -> str:
    if limits.unlimited:
        return "unlimited"
    parts = (
        ("concurrency", limits.max_concurrency),
        ("tpm", limits.tokens_per_minute),
        ("rpm", limits.requests_per_minute),
    )
    return " ".join(f"{name}={value}" for name, value in parts if value is not None)


def describe_new_key(new: NewKey) -> str:
    record = new.record
    return "\n".join(
        [
            f"id:      {record.id}",
            f"name:    {record.name}",
            f"prefix:  {record.prefix}",
            f"models:  {', '.join(record.models)}",
            f"limits:  {describe_limits(record.limits)}",
            "",
            "The secret below is shown only this once; store it now:",
            new.secret,
        ]
    )


_KEY_HEADER = ("ID", "NAME", "PREFIX", "MODELS", "LIMITS", "CREATED", "REVOKED")


def format_keys(records: Sequence[KeyRecord]) -> str:
    """A fixed-width table of keys; never a secret or a digest (records hold neither)."""
    rows = [_KEY_HEADER, *(_key_cells(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_KEY_HEADER))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _key_cells(record: KeyRecord) -> tuple[str, ...]:
    revoked = "-" if record.revoked_at is None else _utc(record.revoked_at)
    return (
        record.id,
        record.name,
        record.prefix,
        ",".join(record.models),
        describe_limits(record.limits),
        _utc(record.created_at),
        revoked,
    )


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
