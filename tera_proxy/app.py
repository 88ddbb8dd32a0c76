"""Composition root: routes, the per-request frame (request id, error boundary,
disconnect watch) and the lifespan that starts and stops background services.

The app is a raw ASGI callable. Routing is a dict lookup on the exact path (one
prefix route for `/v1/models/{id}`, whose ids contain `/`): cheaper than a regex
router on the hot path, and every miss answers in the same JSON error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
import structlog

from tera_proxy.auth import Principal, authorize, visible_models
from tera_proxy.catalog import Catalog
from tera_proxy.config import Config
from tera_proxy.errors import (
    AuthenticationFailed,
    EndpointNotFound,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    ProxyError,
    ServerError,
)
from tera_proxy.health import HealthProber
from tera_proxy.metrics import CONTENT_TYPE, ReplicaSample
from tera_proxy.pool import Pool, ReplicaState
from tera_proxy.proxy import (
    JSON_HEADERS,
    Exchange,
    Outgoing,
    Proxy,
    Receive,
    Send,
    end_body,
    start_response,
)
from tera_proxy.sse import DONE_FRAME, data_frame
from tera_proxy.tenancy import Outcome, Tenancy, Ticket
from tera_proxy.upstream import Upstream

log = structlog.get_logger("tera_proxy")

Scope = dict[str, Any]
Handler = Callable[[Exchange, Scope, Receive], Awaitable[None]]

REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
METRICS_TYPE = CONTENT_TYPE.encode()
NOT_OFFERED = (
    "/v1/moderations",
    "/v1/embeddings",
    "/v1/images",
    "/v1/fine_tuning",
    "/v1/fine-tunes",
    "/v1/files",
    "/v1/batches",
    "/v1/assistants",
    "/v1/threads",
    "/v1/vector_stores",
    "/v1/responses",
    "/v1/realtime",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)
# Seconds before a request starts watching for its client leaving (see until_disconnect).
WATCH_AFTER = 0.05
OFFERED = "/v1/chat/completions, /v1/completions, /v1/models and /v1/audio/speech"


class Service(Protocol):
    """A background service the lifespan starts before serving and stops after."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ClientGone(Exception):
    """The client disconnected."""


class App:
    def __init__(
        self, config: Config, services: Sequence[Service] = (), state_dir: Path | None = None
    ) -> None:
        self.config = config
        self.state_dir = state_dir if state_dir is not None else Path(config.state_dir)
        self.catalog = Catalog(config.models)
        self.tenancy = Tenancy(config, self.state_dir)
        self.pool = Pool(config, epsilon=config.health.affinity_epsilon)
        self.upstream = Upstream(config.upstream)
        self.proxy = Proxy(config, self.catalog, self.pool, self.upstream)
        self.services = list(services)
        self._probe_session: aiohttp.ClientSession | None = None
        auth = config.auth
        self.admin_token = auth.admin_token or os.environ.get(auth.admin_token_env, "")
        self.tenancy.metrics.watch_pool(
            lambda: [
                ReplicaSample(r.name, r.state.value, r.inflight)
                for r in self.pool.replicas.values()
            ],
            [s.value for s in ReplicaState],
        )
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
            "/v1/audio/speech": {"POST": self._speech},
            "/v1/models": {"GET": self._models},
            "/health": {"GET": self._health},
            "/metrics": {"GET": self._metrics},
            "/ready": {"GET": self._ready},
        }
        self._model_route: dict[str, Handler] = {"GET": self._model}
        # Imported here, not at the top: admin.py builds on this module's helpers.
        from tera_proxy.admin import AdminApi

        self.admin = AdminApi(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- the per-request frame -------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(request_id(scope), f"{random.getrandbits(64):016x}", send)
        try:
            handler = self._route(scope["method"], scope["path"])
            await handler(ex, scope, receive)
        except ProxyError as error:
            await send_error(ex, error)
        except ClientGone:
            ex.client_gone = True
        except Exception:
            log.exception("unhandled error", request_id=ex.request_id)
            await send_error(ex, ServerError("The gateway failed to handle this request."))

    def _route(self, method: str, path: str) -> Handler:
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/") and len(path) > 11:
            methods = self._model_route
        if methods is None and path.startswith("/admin/"):
            return self.admin.handle
        if methods is None:
            raise _not_found(path)
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allow = ", ".join(methods)
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allow}.", allow=allow)
        return handler

    # -- generation ---------------------------------------------------------------------

    async def _chat(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        await self._generate(ex, scope, receive, "chat")

    async def _completion(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        await self._generate(ex, scope, receive, "completion")

    async def _speech(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        await self._generate(ex, scope, receive, "speech")

    async def _generate(self, ex: Exchange, scope: Scope, receive: Receive, kind: str) -> None:
        """Auth, parse, admit, forward; every request ends with its log line and metrics,
        and an admitted one also with its ledger row and its reservation settled."""
        principal: Principal | None = None
        out: Outgoing | None = None
        ticket: Ticket | None = None
        try:
            principal = await self.tenancy.principal(scope["headers"])
            raw = await read_request(receive, self.config.server.max_body_bytes)
            out = self.proxy.prepare(kind, raw)
            ticket = await self.tenancy.admit(principal, out.model, out.reserve)
            ex.extra_headers = self.tenancy.headers(ticket)
            admitted = ticket
            ex.finishing = lambda: self.tenancy.settle(admitted, outcome(ex))
            await until_disconnect(ex, receive, self.proxy.forward(ex, out))
        except ProxyError as error:
            ex.status = error.status  # what the error boundary is about to send
            raise
        except ClientGone:
            ex.client_gone = True
            raise
        finally:
            if ticket is not None:
                await self.tenancy.settle(ticket, outcome(ex))
            else:
                model = out.model.id if out is not None else ""
                self.tenancy.refused(principal, model, outcome(ex))

    # -- catalog and probes -------------------------------------------------------------

    async def _models(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        principal = await self.tenancy.principal(scope["headers"])
        if principal is None:
            await send_json(ex, 200, self.catalog.list_body)
            return
        ids = visible_models(principal, (m.id for m in self.catalog))
        await send_json(ex, 200, self.catalog.list_body_for(ids))

    async def _model(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        principal = await self.tenancy.principal(scope["headers"])
        model_id = scope["path"][len("/v1/models/") :]
        body = self.catalog.body(model_id)
        if body is None:
            raise ModelNotFound(model_id)
        if principal is not None:
            authorize(principal, model_id)
        await send_json(ex, 200, body)

    async def _metrics(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        self._check_admin(scope)
        body = self.tenancy.metrics.render()
        headers = [(b"content-type", METRICS_TYPE), (b"content-length", str(len(body)).encode())]
        await start_response(ex, 200, headers)
        await ex.send({"type": "http.response.body", "body": body, "more_body": False})

    def _check_admin(self, scope: Scope) -> None:
        """Operator endpoints answer only to the admin token, when one is configured."""
        token = self.admin_token
        if token and not admin_token_matches(scope["headers"], token):
            raise AuthenticationFailed(
                "This endpoint needs the admin token.", code="invalid_admin_token"
            )

    async def _health(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        await send_json(ex, 200, b'{"status":"ok"}')

    async def _ready(self, ex: Exchange, scope: Scope, receive: Receive) -> None:
        models = {m.id: self.pool.can_serve(m.id) for m in self.catalog}
        replicas = {r.name: r.state.value for r in self.pool.replicas.values()}
        ready = self.ready()
        body = {"status": "ready" if ready else "not_ready", "models": models, "replicas": replicas}
        await send_json(ex, 200 if ready else 503, orjson.dumps(body))

    # -- lifespan -----------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.upstream.start()
        await self.tenancy.start()
        if self.config.health.enabled:
            # Its own small session: probes must not queue behind client traffic.
            self._probe_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4 * max(1, len(self.pool.replicas)))
            )
            self.services.append(HealthProber(self.pool, self.config, self._probe_session))
        for service in self.services:
            await service.start()

    async def shutdown(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("service failed to stop", service=type(service).__name__)
        if self._probe_session is not None:
            await self._probe_session.close()
        await self.upstream.close()
        await self.tenancy.stop()

    def ready(self) -> bool:
        return all(self.pool.can_serve(m.id) for m in self.catalog)


def create_app(
    config: Config, services: Sequence[Service] = (), state_dir: Path | None = None
) -> App:
    return App(config, services, state_dir)


def outcome(ex: Exchange) -> Outcome:
    ttft = None if ex.first_byte_at is None else ex.first_byte_at - ex.started
    return Outcome(
        request_id=ex.request_id,
        status=ex.status or (499 if ex.client_gone else 500),
        replica=ex.replica.name if ex.replica is not None else "",
        attempts=ex.attempts,
        usage=ex.usage,
        ttft=ttft,
        duration=time.monotonic() - ex.started,
        client_disconnected=ex.client_gone,
    )


def admin_token_matches(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = bytes(value).partition(b" ")
            # Bytes: compare_digest raises on non-ASCII str, a 500 instead of a 401.
            return scheme.lower() == b"bearer" and hmac.compare_digest(
                given.strip(), token.encode()
            )
    return False


# -- helpers shared by the handlers ---------------------------------------------------


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is sane (length, charset), else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if REQUEST_ID_RE.match(value):
                return bytes(value).decode()
            break
    # Not a counter (ids would tell customers the request volume), not os.urandom (a
    # syscall per request): the stdlib generator, seeded from os.urandom at start.
    return f"req_{random.getrandbits(96):024x}"


async def read_request(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        parts.append(body)
        if not message.get("more_body"):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def until_disconnect(ex: Exchange, receive: Receive, work: Awaitable[None]) -> None:
    """Run `work`; if the client disconnects first, cancel it (closing the upstream).

    The watch starts WATCH_AFTER seconds in: most requests are over by then and never
    pay for a second task, and a client that left sooner is noticed that much later
    (the replica generates for at most WATCH_AFTER more seconds).
    """
    task = asyncio.current_task()
    assert task is not None
    watch = _Watch(ex, receive, task)
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER, watch.start)
    try:
        await work
    except asyncio.CancelledError:
        if not ex.client_gone or task.uncancel() > 0:
            raise
    finally:
        timer.cancel()
        watch.stop()


class _Watch:
    __slots__ = ("ex", "receive", "task", "watcher")

    def __init__(self, ex: Exchange, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.ex, self.receive, self.task = ex, receive, task
        self.watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.watcher = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()

    async def _run(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if self.ex.complete:
                    return  # servers report the end of a sent response as a disconnect
                self.ex.client_gone = True
                self.task.cancel()
                return


async def send_json(ex: Exchange, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await start_response(ex, status, headers)
    await ex.send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(ex: Exchange, error: ProxyError) -> None:
    if ex.client_gone:
        return
    if ex.response_started:
        if not ex.sse:
            raise RuntimeError("a non-SSE response broke after it started") from error
        # Headers are gone: the only place left for the error is the stream itself.
        await end_body(ex, data_frame(error.body()) + DONE_FRAME)
        return
    body = error.body()
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *error.headers()]
    await start_response(ex, error.status, headers)
    await ex.send({"type": "http.response.body", "body": body, "more_body": False})


def _not_found(path: str) -> ProxyError:
    for prefix in NOT_OFFERED:
        if path == prefix or path.startswith(prefix + "/"):
            return EndpointNotFound(f"`{prefix}` is not offered by this API. It serves {OFFERED}.")
    return EndpointNotFound(f"Unknown endpoint `{path}`. This API serves {OFFERED}.")
