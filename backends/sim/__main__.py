"""`python -m backends.sim --port 8001 --model m [options]`: one simulated vLLM server.
Every SimConfig and Faults field is a flag (underscores become dashes)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import typing
from collections.abc import Sequence
from typing import Any

from backends.sim.config import Faults, SimConfig
from backends.sim.server import SimServer

_SKIP = {"models", "wire"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backends.sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME",
        help="served model name; repeat for aliases (default: sim-model)",
    )  # fmt: skip
    parser.add_argument("--no-uvloop", action="store_true", help="use the default event loop")
    config = parser.add_argument_group("server (SimConfig)")
    _add_fields(config, SimConfig, SimConfig())
    faults = parser.add_argument_group("faults (also POST /sim/faults)")
    _add_fields(faults, Faults, Faults())
    return parser


def _add_fields(group: Any, cls: type, defaults: object) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _SKIP or not f.init:
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        hint = hints[f.name]
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            continue
        kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        group.add_argument(flag, type=kind, default=default, help=f"default: {default}")


def _pick(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in _SKIP}
    return {name: getattr(args, name) for name in names}


def configs(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, SimConfig, Faults]:
    args = build_parser().parse_args(argv)
    models = tuple(args.models) if args.models else SimConfig().models
    return args, SimConfig(models=models, **_pick(SimConfig, args)), Faults(**_pick(Faults, args))


async def serve(host: str, port: int, config: SimConfig, faults: Faults) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = SimServer(config, host=host, port=port, faults=faults)
    await sim.start()
    try:
        waiting = asyncio.ensure_future(stop.wait())
        listening = asyncio.ensure_future(sim.listening.wait())
        await asyncio.wait({waiting, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if not stop.is_set():
            models = ",".join(config.models)
            print(f"sim listening on {sim.url} models={models} wire={config.wire.text}", flush=True)
        await waiting
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, config, faults = configs(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(args.host, args.port, config, faults))
    except OSError as exc:  # typically the port is taken
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
