"""Create one API key for a bench run and print its secret (nothing else) on stdout.

    .venv/bin/python bench/make_key.py CONFIG [--name bench]

Run with the project's .venv python (the bench tools venv has no tera_proxy). bench/peers.py
prefers `tera-proxy keys create --quiet` and falls back on this when that command is absent.
The key's limits are set far above anything the bench reaches: they are checked on every
request but never bind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

LIMITS = {
    "max_concurrency": 100_000,
    "tokens_per_minute": 10**12,
    "requests_per_minute": 10**9,
}


async def make_key(config_path: str, name: str = "bench") -> str:
    from tera_proxy import logs
    from tera_proxy.config import load_config
    from tera_proxy.keys import KeyLimits, KeyStore, server_secret
    from tera_proxy.store import key_backend

    logs.configure("warning")  # stdout carries the secret alone
    cfg = load_config(config_path)
    state = Path(config_path).parent / cfg.state_dir
    ks = KeyStore(key_backend(cfg.database, state), server_secret(cfg.keys, os.environ, state))
    await ks.start()
    try:
        k = await ks.create(name, limits=KeyLimits(**LIMITS))
    finally:
        await ks.stop()
    return k.secret


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/make_key.py")
    ap.add_argument("config")
    ap.add_argument("--name", default="bench")
    a = ap.parse_args(argv)
    print(asyncio.run(make_key(a.config, a.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
