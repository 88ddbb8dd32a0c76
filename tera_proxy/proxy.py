"""The hot path: a generation request from parsed body to the last byte sent.

Decide, then act: the body is parsed and validated once, the replica is chosen by the
pool, and the response is forwarded. While nothing has reached the client, a failed
attempt (refused, reset, timeout, 5xx, an error frame before the first token) is
retried on another replica; once the response has started, a failure becomes a final
SSE error frame and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tera_proxy import sse, validate
from tera_proxy.catalog import Catalog
from tera_proxy.config import Config, ModelConfig
from tera_proxy.errors import (
    InvalidRequest,
    ModelNotFound,
    ProxyError,
    ServerError,
    ServiceUnavailable,
    from_upstream,
    stream_error_payload,
)
from tera_proxy.pool import Pool, Replica
from tera_proxy.rewrite import (
    RequestFacts,
    StreamRewriter,
    Usage,
    facts_from_request,
    make_stream_rewriter,
    rewrite_response,
)
from tera_proxy.routing import affinity_key
from tera_proxy.upstream import (
    MAX_ERROR_BODY,
    ConnectFailed,
    Response,
    Upstream,
    UpstreamError,
    chunks,
)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DRAIN_TIMEOUT = 1.0
ERROR_FRAME_PREFIX = b'data: {"error"'
DONE_PREFIX = b"data: [DONE]"


@dataclass(slots=True)
class Exchange:
    """One client request as it moves through the proxy."""

    request_id: str
    upstream_id: str
    send: Send
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    response_started: bool = False
    sse: bool = False
    client_gone: bool = False
    replica: Replica | None = None
    # The current attempt's replica broke after the response started.
    broken: bool = False
    usage: Usage | None = None
    # Sent with the response head (rate-limit headers); set before forwarding.
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    first_byte_at: float | None = None
    # Awaited just before the last byte goes out (settles the key's limits), so a client
    # that sends its next request at once never finds its own slot still taken.
    finishing: Callable[[], Awaitable[None]] | None = None
    status: int = 0
    # The last byte is on its way: a disconnect from now on is the response's own end.
    complete: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What is sent to a replica: built once, tried on as many replicas as needed."""

    model: ModelConfig
    path: str
    body: bytes
    stream: bool
    # Relay the body as it arrives without looking at it (audio).
    raw: bool = False
    # Prefix-cache routing key (see routing.affinity_key).
    affinity: bytes | None = None
    # What the response rewriters need to know; None for bodies relayed untouched.
    facts: RequestFacts | None = None
    # Tokens the request may use at most (prompt estimate + max tokens), for admission.
    reserve: int = 0
    # Replicas answer with the served name; the client gets the catalog id it asked for.
    rename: tuple[bytes, bytes] | None = None


class Proxy:
    def __init__(self, config: Config, catalog: Catalog, pool: Pool, upstream: Upstream) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        self.upstream = upstream
        # Fixed per model: computed once, not per request.
        self._renames = {m.id: _rename(m) for m in config.models}

    def prepare(self, kind: str, raw: bytes) -> Outgoing:
        body = parse_json(raw)
        model = self.resolve(body)
        if kind == "chat":
            validate.check_chat(body, model)
        elif kind == "completion":
            validate.check_completion(body, model)
        else:
            validate.check_speech(body)
        stream = bool(body.get("stream"))
        if kind == "speech":
            body["model"] = model.upstream_name
            return Outgoing(model, UPSTREAM_PATHS[kind], orjson.dumps(body), stream, raw=True)
        _default_max_tokens(body, model)
        facts = facts_from_request("chat" if kind == "chat" else "completion", body)
        if model.rewrite.think_prefilled:
            facts = dataclasses.replace(facts, think_prefilled=True)
        if stream:
            # Usage is always asked for, so accounting never guesses; the rewriter drops
            # the usage frame again when the client did not ask for it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if model.rewrite.parse_tools == "hermes" and body.get("tool_choice") in (None, "auto"):
            # A replica without --enable-auto-tool-choice refuses "auto", but still renders
            # the tools into the prompt with "none"; the proxy extracts the calls itself.
            if body.get("tools"):
                body["tool_choice"] = "none"
        # Prefix affinity only matters where there is a choice of replica.
        affinity = affinity_key(body) if len(model.replicas) > 1 else None
        body["model"] = model.upstream_name
        upstream_body = orjson.dumps(body)
        reserve = facts.prompt_estimate + (facts.max_tokens or model.max_output_tokens) * facts.n
        path = UPSTREAM_PATHS[kind]
        rename = self._renames[model.id]
        return Outgoing(
            model, path, upstream_body, stream, False, affinity, facts, reserve, rename
        )

    def resolve(self, body: dict[str, Any]) -> ModelConfig:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                "Missing required parameter: 'model'. GET /v1/models lists the models.",
                param="model",
                code="missing_required_parameter",
            )
        model = self.catalog.get(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    async def forward(self, ex: Exchange, out: Outgoing) -> None:
        """Try replicas until one answers; then relay its answer to the client."""
        tried: list[str] = []
        deadline = ex.started + self.config.upstream.retry_deadline
        last: ProxyError | None = None
        while True:
            replica = self._next_replica(out, tried, last)
            tried.append(replica.name)
            ex.attempts += 1
            try:
                await self._attempt(ex, out, replica)
                return
            except _Retryable as retry:
                last = retry.error
                if not self._may_retry(ex, deadline):
                    raise retry.error from None
                await asyncio.sleep(self._backoff(ex.attempts))

    def _next_replica(self, out: Outgoing, tried: list[str], last: ProxyError | None) -> Replica:
        """A replica this request has not tried; once all were tried, any but the last one
        that failed, else any ready one (the attempt bound and deadline still hold)."""
        options = [frozenset(tried)]
        if last is not None:
            options += [frozenset(tried[-1:]), frozenset()]
        for exclude in options:
            try:
                return self.pool.acquire(out.model, exclude=exclude, affinity=out.affinity)
            except ServiceUnavailable as exc:
                unavailable = exc
        raise last if last is not None else unavailable

    def _may_retry(self, ex: Exchange, deadline: float) -> bool:
        return ex.attempts < self.config.upstream.max_attempts and time.monotonic() < deadline

    def _backoff(self, attempt: int) -> float:
        upstream = self.config.upstream
        return random.uniform(
            0, min(upstream.retry_backoff_max, upstream.retry_backoff * 2 ** (attempt - 1))
        )

    async def _attempt(self, ex: Exchange, out: Outgoing, replica: Replica) -> None:
        """One replica, one try. Only the replica's own faults count against its health:
        refused, reset, timeouts, 5xx, a broken stream; not a 4xx, not a client leaving."""
        ex.replica, ex.broken = replica, False
        resp: Response | None = None
        failed = True
        try:
            resp = await self._post(ex, out, replica)
            if resp.status != 200:
                await self._upstream_error(resp)
            if out.raw:
                await self._relay_raw(ex, resp)
            elif out.stream and _is_sse(resp):
                await self._relay_stream(ex, out, resp)
            else:
                await self._relay_body(ex, out, resp)
            failed = ex.broken
        except ProxyError:
            failed = False  # the replica answered properly: the request was at fault
            raise
        finally:
            if resp is not None:
                await _finish(resp, reuse=not (failed or ex.client_gone))
            self.pool.release(replica, failed=failed and not ex.client_gone)

    async def _post(self, ex: Exchange, out: Outgoing, replica: Replica) -> Response:
        upstream_id = f"{ex.upstream_id}-{ex.attempts}"
        try:
            return await self.upstream.post(replica, out.path, out.body, upstream_id)
        except UpstreamError as exc:
            raise _Retryable(_unavailable(exc)) from exc

    async def _upstream_error(self, resp: Response) -> None:
        try:
            body = await resp.read(MAX_ERROR_BODY)
        except UpstreamError as exc:
            raise _Retryable(_unavailable(exc)) from exc
        error = from_upstream(resp.status, body)
        if resp.status >= 500:
            raise _Retryable(error)
        raise error

    async def _relay_body(self, ex: Exchange, out: Outgoing, resp: Response) -> None:
        try:
            body = await resp.read()
        except UpstreamError as exc:
            raise _Retryable(_unavailable(exc)) from exc
        if out.facts is not None:
            if out.rename is not None:
                body = body.replace(*out.rename, 1)
            body, ex.usage = rewrite_response(body, out.model.rewrite, out.facts)
        content_type = (resp.content_type or "application/json").encode()
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await start_response(ex, 200, headers)
        await end_body(ex, body)

    async def _relay_raw(self, ex: Exchange, resp: Response) -> None:
        """Binary bodies (speech) pass through unchanged, piece by piece."""
        content_type = (resp.content_type or "application/octet-stream").encode()
        body = chunks(resp)
        try:
            async for data in body:
                if not ex.response_started:
                    await start_response(ex, 200, [(b"content-type", content_type)])
                await ex.send({"type": "http.response.body", "body": data, "more_body": True})
        except UpstreamError as exc:
            if not ex.response_started:
                raise _Retryable(_unavailable(exc)) from exc
            ex.broken = True
            raise  # a cut binary body cannot carry an error; the connection is dropped
        finally:
            await body.aclose()
        if not ex.response_started:
            await start_response(ex, 200, [(b"content-type", content_type)])
        await end_body(ex, b"")

    async def _relay_stream(
        self, ex: Exchange, out: Outgoing, resp: Response
    ) -> None:
        """Forward whole SSE frames as they arrive; byte for byte unless rewritten."""
        assert out.facts is not None
        rewriter = make_stream_rewriter(out.model.rewrite, out.facts)
        body = chunks(resp)
        try:
            done = await self._relay_frames(ex, rewriter, body, out.rename)
        except UpstreamError as exc:
            if not ex.response_started:
                raise _Retryable(_unavailable(exc)) from exc
            done = False
        finally:
            await body.aclose()
            ex.usage = rewriter.usage
        if not done:
            if not ex.response_started:
                raise _Retryable(ServerError("The replica closed the stream before any token."))
            ex.broken = True
            error = ServerError(
                "The upstream replica failed while streaming; the response is incomplete.",
                code="upstream_stream_interrupted",
            )
            await self._end_stream_with_error(ex, error)

    async def _relay_frames(
        self,
        ex: Exchange,
        rewriter: StreamRewriter,
        body: AsyncIterator[bytes],
        rename: tuple[bytes, bytes] | None,
    ) -> bool:
        """True once the stream ended properly ([DONE] or an error frame passed on)."""
        splitter = sse.FrameSplitter()
        pool, replica = self.pool, ex.replica
        async for data in body:  # (each read lets the event loop run: see readany)
            if replica is not None:
                pool.note_progress(replica)
            out: list[bytes] = []
            for frame in splitter.feed(data):
                if frame.startswith(ERROR_FRAME_PREFIX):
                    ex.usage = rewriter.usage
                    await self._stream_error_frame(ex, out, frame)
                    return True
                if frame.startswith(DONE_PREFIX):
                    out += [sse.data_frame(p) for p in rewriter.finish()]
                    out.append(frame)
                    ex.usage = rewriter.usage
                    await self._send_frames(ex, out, more=False)
                    return True
                _rewrite_frame(rewriter, frame, out, rename)
            if out:
                await self._send_frames(ex, out, more=True)
        return False

    async def _send_frames(self, ex: Exchange, frames: list[bytes], *, more: bool) -> None:
        if not ex.response_started:
            await start_sse(ex)
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if more:
            await ex.send({"type": "http.response.body", "body": data, "more_body": True})
        else:
            await end_body(ex, data)

    async def _stream_error_frame(self, ex: Exchange, before: list[bytes], frame: bytes) -> None:
        """vLLM's own in-stream error: our shape, or a retry if nothing was sent yet."""
        payload = sse.payload(frame) or b"{}"
        try:
            error = stream_error_payload(orjson.loads(payload).get("error"))
        except (orjson.JSONDecodeError, AttributeError):
            error = ServerError("The upstream replica failed while streaming.")
        if not ex.response_started and not before:
            if error.status >= 500:
                raise _Retryable(error)
            raise error
        if before:
            await self._send_frames(ex, before, more=True)
        await self._end_stream_with_error(ex, error)

    async def _end_stream_with_error(self, ex: Exchange, error: ProxyError) -> None:
        if not ex.response_started:
            await start_sse(ex)
        ex.status = error.status
        await end_body(ex, sse.data_frame(error.body()) + sse.DONE_FRAME)


class _Retryable(Exception):
    """An attempt failed before anything reached the client; `error` if it is the last."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message)
        self.error = error


UPSTREAM_PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "speech": "/v1/audio/speech",
}


async def start_response(ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    ex.response_started = True
    ex.status = status
    ex.first_byte_at = time.monotonic()
    head = [*headers, *ex.extra_headers, (b"x-tera-request-id", ex.request_id.encode())]
    await ex.send({"type": "http.response.start", "status": status, "headers": head})


async def end_body(ex: Exchange, body: bytes) -> None:
    """The last body message, after the exchange's `finishing` hook."""
    if ex.finishing is not None:
        hook, ex.finishing = ex.finishing, None
        await hook()
    ex.complete = True
    await ex.send({"type": "http.response.body", "body": body, "more_body": False})


async def start_sse(ex: Exchange) -> None:
    ex.sse = True
    await start_response(ex, 200, SSE_HEADERS)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc.msg} (at byte {exc.pos}).",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _default_max_tokens(body: dict[str, Any], model: ModelConfig) -> None:
    """Never let a replica generate to the end of the context: cap at max output."""
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = model.max_output_tokens


def _rewrite_frame(
    rewriter: StreamRewriter,
    frame: bytes,
    out: list[bytes],
    rename: tuple[bytes, bytes] | None,
) -> None:
    """Append what `frame` becomes: itself (same bytes) unless something changed it."""
    data = sse.payload(frame)
    if data is None:
        out.append(frame)  # comments (keep-alives) pass as they are
        return
    if rename is not None and rename[0] in data:
        data = data.replace(*rename, 1)
        frame = sse.data_frame(data)
    for payload in rewriter.feed(data):
        out.append(frame if payload is data else sse.data_frame(payload))


async def _finish(resp: Response, *, reuse: bool) -> None:
    """Give the connection back for reuse, or close it (which makes vLLM abort)."""
    if not reuse:
        resp.close()
        return
    if not resp.eof:
        # After [DONE] only the chunked terminator is left; wait briefly so the
        # keep-alive connection can be reused instead of reopened.
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await resp.read()
        except (TimeoutError, UpstreamError):
            resp.close()
            return
    resp.release()


def _rename(model: ModelConfig) -> tuple[bytes, bytes] | None:
    if model.upstream_name == model.id:
        return None
    served = b'"model":' + orjson.dumps(model.upstream_name)
    return served, b'"model":' + orjson.dumps(model.id)


def _is_sse(resp: Response) -> bool:
    return resp.content_type.startswith("text/event-stream")


def _unavailable(exc: UpstreamError) -> ProxyError:
    if isinstance(exc, ConnectFailed):
        return ServiceUnavailable("No replica could be reached for this request. Retry shortly.")
    return ServerError(f"The upstream replica failed: {exc}.")
