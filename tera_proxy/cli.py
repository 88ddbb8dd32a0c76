"""`tera-proxy serve | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tera_proxy import logs
from tera_proxy.app import App, Service, create_app
from tera_proxy.config import Config, ConfigError, load_config
from tera_proxy.health import describe_change
from tera_proxy.pool import Replica, ReplicaState


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tera-proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default="config/default.toml")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    return run_serve(args)


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid: {exc}", file=sys.stderr)
        return 1
    print(
        f"{path}: ok ({len(config.models)} models, {len(config.replica_configs())} replicas, "
        f"{len(config.workers)} launched workers)"
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: invalid: {exc}", file=sys.stderr)
        return 1
    logs.configure(args.log_level)
    host = args.host or config.server.host
    port = args.port or config.server.port
    state_dir = (Path(args.config).parent / config.state_dir).resolve()
    app = create_app(config)
    app.services.extend(services_for(config, app, state_dir))
    started = time.monotonic()

    def show(replica: Replica, old: ReplicaState, new: ReplicaState) -> None:
        line = f"[{time.monotonic() - started:6.1f}s] {describe_change(replica, old, new)}"
        print(line, file=sys.stderr, flush=True)

    app.pool.on_change = show
    try:
        import uvloop

        uvloop.run(serve(app, host, port, config))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(app, host, port, config))
    return 0


def services_for(config: Config, app: App, state_dir: Path) -> list[Service]:
    """Background services for this config, in start order."""
    services: list[Service] = []
    if config.workers:
        from backends.supervisor import Supervisor  # type: ignore[import-not-found,unused-ignore]

        services.append(Supervisor(config.workers, state_dir))
    return services


async def serve(app: App, host: str, port: int, config: Config) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config as HypercornConfig

    hc = HypercornConfig()
    hc.bind = [f"{host}:{port}"]
    hc.graceful_timeout = config.server.graceful_timeout
    hc.accesslog = None
    hc.errorlog = "-"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"tera-proxy listening on http://{host}:{port}", file=sys.stderr, flush=True)
    await hypercorn_serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
