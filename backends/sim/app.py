"""The aiohttp application: vLLM's generation routes, fault injection and bookkeeping.
Info routes (/health, /v1/models, /metrics...) and /sim/* control live in control.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from backends.sim import errors
from backends.sim.config import Faults, SimConfig
from backends.sim.control import add_routes
from backends.sim.errors import SimError
from backends.sim.exchange import Exchange, Pace, random_hex, response_id, stream_frames
from backends.sim.plan import Plan, make_answer, make_plan
from backends.sim.render import DONE, Renderer, chat_body, completion_body
from backends.sim.request import Endpoint, GenRequest, parse_request
from backends.sim.stats import Engine, SimStats, record

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
JSON = "application/json"
# Frames already due are written together, at most this many per write (bounded memory).
MAX_BATCH = 64
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Work = Callable[[web.Request, bytes, Exchange], Awaitable[web.StreamResponse]]


class SimApp:
    """Routes and the state they share; SimServer owns the sockets around it."""

    def __init__(self, config: SimConfig, faults: Faults) -> None:
        self.config = config
        self.faults = faults
        self.initial_faults = faults.copy()
        self.stats = SimStats()
        self.engine = Engine(self.stats, config.max_num_seqs)
        self.renderer = Renderer(config)
        self.rng = random.Random(config.seed)
        self.closing = asyncio.Event()
        self.cold = True  # the next generation request is the first since (re)start
        self.live: set[Exchange] = set()
        self.running_ids: set[str] = set()
        # Set by SimServer: stop listening for N seconds (POST /sim/faults refuse_for).
        self.on_refuse: Callable[[float], None] = lambda seconds: None

    def __repr__(self) -> str:
        return f"<SimApp {','.join(self.config.models)} {self.config.wire!r} {self.stats!r}>"

    def reset(self) -> None:
        """Zero the counters and restore the faults the server started with."""
        self.stats.reset()
        self.faults.merge(self.initial_faults.to_dict())
        self.faults.refuse_for = 0.0
        self.rng.seed(self.config.seed)

    def build(self) -> web.Application:
        middlewares = [self._auth] if self.config.api_key else []
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=middlewares)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        add_routes(app, self)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = f"Bearer {self.config.api_key}"
        if request.path.startswith("/v1") and request.headers.get("Authorization") != expected:
            self.stats.status_counts[401] += 1
            return web.Response(status=401, body=errors.UNAUTHORIZED, content_type=JSON)
        return await handler(request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, Endpoint.CHAT)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, Endpoint.COMPLETIONS)

    async def guarded(self, request: web.Request, work: Work) -> web.StreamResponse:
        """Run a generation-like route with request bookkeeping and abort accounting."""
        raw = await request.read()
        ex = self.begin(request, raw)
        try:
            return await work(request, raw, ex)
        except SimError as exc:
            return self.error(exc, ex)
        except asyncio.CancelledError:
            self._lost(ex)
            raise
        except ConnectionError:
            # A write hit the closed socket before the cancellation arrived: same thing,
            # and aiohttp treats a cancelled handler as a quiet client disconnect.
            self._lost(ex)
            raise asyncio.CancelledError from None
        finally:
            self.end(ex)

    async def _generate(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        async def work(request: web.Request, raw: bytes, ex: Exchange) -> web.StreamResponse:
            req = parse_request(endpoint, raw, self.config, request.headers.get("X-Request-Id"))
            ex.response_id = response_id(req, self.config.wire.long_ids)
            await self.apply_faults(request, ex)
            if self.config.wire.reject_duplicate_ids and ex.response_id in self.running_ids:
                return await self._duplicate(request, req, ex)
            self.running_ids.add(ex.response_id)
            try:
                plan = make_plan(req, self.config)
                if req.stream:
                    return await self._stream(request, req, plan, ex)
                return await self._complete(req, plan, ex)
            finally:
                self.running_ids.discard(ex.response_id)

        return await self.guarded(request, work)

    def begin(self, request: web.Request, raw: bytes) -> Exchange:
        stats = self.stats
        if not self.config.fast:
            stats.requests.append(record(request.method, request.path_qs, request.headers, raw))
        stats.requests_total += 1
        stats.inflight += 1
        ex = Exchange()
        self.live.add(ex)
        stats.changed()
        return ex

    def end(self, ex: Exchange) -> None:
        self.live.discard(ex)
        self.stats.inflight -= 1
        self.stats.generation_tokens_total += ex.tokens
        self.stats.changed()

    def _lost(self, ex: Exchange) -> None:
        """The connection went away before the response was complete."""
        if ex.finished:
            return
        if ex.dropped or self.closing.is_set():
            self.stats.dropped_total += 1
            return
        self.stats.aborted_total += 1
        self.stats.aborted_ids.append(ex.response_id)

    def error(self, exc: SimError, ex: Exchange) -> web.Response:
        ex.finished = True
        self.stats.status_counts[exc.status] += 1
        return web.Response(status=exc.status, body=exc.body(self.config.wire), content_type=JSON)

    async def apply_faults(self, request: web.Request, ex: Exchange) -> None:
        """Raise the SimError a fault calls for, or hang, or cut the connection."""
        faults, stats = self.faults, self.stats
        if faults.engine_dead:
            stats.injected_errors_total += 1
            raise errors.internal()
        if faults.hang:
            await self.closing.wait()
        if faults.drop_connection or self.closing.is_set():
            await self.drop(request, ex)
        if faults.fail_next > 0 or (faults.error_rate and self.rng.random() < faults.error_rate):
            faults.fail_next = max(0, faults.fail_next - 1)
            stats.injected_errors_total += 1
            raise errors.injected(faults.error_status)

    async def drop(self, request: web.Request, ex: Exchange) -> None:
        """Close the connection under the request; never returns."""
        ex.dropped = True
        if request.transport is not None:
            request.transport.close()
        # Losing the transport cancels this handler (handler_cancellation); wait for that.
        await self.closing.wait()
        raise asyncio.CancelledError

    async def _duplicate(
        self, request: web.Request, req: GenRequest, ex: Exchange
    ) -> web.StreamResponse:
        exc = errors.bad_request(f"Request id {ex.response_id} already running.")
        if not req.stream:
            raise exc
        # The engine rejects it inside the stream generator, after the 200 went out.
        resp = await self._open_stream(request)
        await resp.write(exc.stream_frame(self.config.wire) + DONE)
        ex.finished = True
        await resp.write_eof()
        return resp

    def pace(self) -> Pace:
        faults, config = self.faults, self.config
        first = config.ttft * faults.slow + (faults.cold_ttft if self.cold else 0.0)
        self.cold = False
        return Pace(asyncio.get_running_loop().time(), first, config.token_delay * faults.slow)

    def _admit(self, req: GenRequest, plan: Plan) -> int:
        """Count the prompt; return the KV tokens the request holds while it runs."""
        self.stats.prompt_tokens_total += sum(req.prompt_tokens)
        return sum(req.prompt_tokens) + req.choice_count * plan.completion_tokens

    def _finished(self, plan: Plan, ex: Exchange) -> None:
        ex.finished = True
        self.stats.finished[plan.finish.value] += 1
        self.stats.completed_total += 1

    async def _complete(self, req: GenRequest, plan: Plan, ex: Exchange) -> web.Response:
        async with self.engine.admitted(self._admit(req, plan)):
            pace = self.pace()
            await asyncio.sleep(max(0.0, pace.due(plan.completion_tokens) - pace.start))
        ex.tokens = req.choice_count * plan.completion_tokens
        body = self._body(req, plan, ex)
        self.stats.status_counts[200] += 1
        self._finished(plan, ex)
        return web.Response(body=body, content_type=JSON)

    def _body(self, req: GenRequest, plan: Plan, ex: Exchange) -> bytes:
        created, model, r = int(time.time()), self.config.models[0], self.renderer
        if req.endpoint is Endpoint.COMPLETIONS:
            return completion_body(r, req, plan, ex.response_id, created, model)
        answer = make_answer(plan, self.config.wire)
        ids = self._tool_ids(req)
        return chat_body(r, req, plan, answer, ex.response_id, created, model, ids)

    def _tool_ids(self, req: GenRequest) -> list[str]:
        if req.tool is None:
            return []
        return ["chatcmpl-tool-" + random_hex(16) for _ in range(req.choice_count)]

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await resp.prepare(request)
        self.stats.status_counts[200] += 1
        return resp

    async def _stream(
        self, request: web.Request, req: GenRequest, plan: Plan, ex: Exchange
    ) -> web.StreamResponse:
        # Headers go out before prefill, as with vLLM's StreamingResponse.
        resp = await self._open_stream(request)
        async with self.engine.admitted(self._admit(req, plan)):
            frames = stream_frames(self.renderer, req, plan, ex, self.pace(), self._tool_ids(req))
            completed = await self._write_frames(request, resp, frames, ex)
        if completed:
            self._finished(plan, ex)
        await resp.write_eof()
        return resp

    async def _write_frames(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        frames: Iterator[tuple[float, bytes]],
        ex: Exchange,
    ) -> bool:
        """Write frames when due, several per write when late; False if a fault ended it."""
        die, error_after = self.faults.die_after_frames, self.faults.stream_error_after
        loop, buf, sent = asyncio.get_running_loop(), list[bytes](), 0
        for due, frame in frames:
            if sent == error_after:
                self.stats.injected_errors_total += 1
                failure = errors.internal("Internal server error")
                buf += (failure.stream_frame(self.config.wire), DONE)
                await resp.write(b"".join(buf))
                ex.finished = True
                return False
            if sent == die:
                await resp.write(b"".join(buf))
                await self.drop(request, ex)
            delay = due - loop.time()
            if buf and (delay > 0 or len(buf) >= MAX_BATCH):
                await resp.write(b"".join(buf))
                buf.clear()
            if delay > 0:
                await asyncio.sleep(delay)
            buf.append(frame)
            sent += 1
        await resp.write(b"".join(buf))
        return True
