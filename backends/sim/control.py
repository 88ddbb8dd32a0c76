"""Routes besides generation: vLLM's /health, /version, /v1/models, /metrics and
/v1/audio/speech, and the simulator's own /sim/* control endpoints."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from backends.sim import errors
from backends.sim.exchange import Exchange, random_hex
from backends.sim.metrics import CONTENT_TYPE as METRICS_TYPE
from backends.sim.metrics import render_metrics

if TYPE_CHECKING:
    from backends.sim.app import SimApp

JSON = "application/json"
AUDIO_CHUNKS = 4
_SAMPLE_BYTES_PER_CHAR = 320  # 10 ms of 16 kHz 16-bit mono per input character
_PATTERN = bytes((i * 7) & 0xFF for i in range(65536))


Route = Callable[["SimApp", web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, sim: SimApp) -> None:
    def bind(handler: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            return await handler(sim, request)

        return route

    app.router.add_get("/health", bind(health))
    app.router.add_get("/version", bind(version))
    app.router.add_get("/v1/models", bind(models))
    app.router.add_get("/metrics", bind(metrics))
    app.router.add_post("/v1/audio/speech", bind(speech))
    app.router.add_get("/sim/stats", bind(sim_stats))
    app.router.add_get("/sim/faults", bind(sim_faults))
    app.router.add_post("/sim/faults", bind(sim_set_faults))
    app.router.add_post("/sim/reset", bind(sim_reset))


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON)


async def health(sim: SimApp, request: web.Request) -> web.Response:
    return web.Response(status=503 if sim.faults.engine_dead else 200)


async def version(sim: SimApp, request: web.Request) -> web.Response:
    return _json({"version": sim.config.wire.text})


async def models(sim: SimApp, request: web.Request) -> web.Response:
    sim.stats.status_counts[200] += 1
    return _json(models_body(sim))


def models_body(sim: SimApp) -> dict[str, Any]:
    created, config = int(time.time()), sim.config
    data = [
        {
            "id": name, "object": "model", "created": created, "owned_by": "vllm",
            "root": config.models[0], "parent": None, "max_model_len": config.max_model_len,
            "permission": [_permission(created)],
        }
        for name in config.models
    ]  # fmt: skip
    return {"object": "list", "data": data}


def _permission(created: int) -> dict[str, Any]:
    return {
        "id": "modelperm-" + random_hex(16), "object": "model_permission", "created": created,
        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
        "organization": "*", "group": None, "is_blocking": False,
    }  # fmt: skip


async def metrics(sim: SimApp, request: web.Request) -> web.Response:
    text = render_metrics(sim.config, sim.stats)
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_TYPE})


def wav_bytes(text: str) -> bytes:
    """A deterministic PCM WAV whose length follows the input text."""
    size = _SAMPLE_BYTES_PER_CHAR * max(1, len(text))
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + size, b"WAVE", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16, b"data", size,
    )  # fmt: skip
    whole, rest = divmod(size, len(_PATTERN))
    return header + _PATTERN * whole + _PATTERN[:rest]


async def speech(sim: SimApp, request: web.Request) -> web.StreamResponse:
    async def work(request: web.Request, raw: bytes, ex: Exchange) -> web.StreamResponse:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise errors.validation_error("json_invalid", "body", "JSON decode error", 0) from None
        if not isinstance(body, dict) or not isinstance(body.get("input"), str):
            raise errors.validation_error("missing", "body.input", "Field required", 0)
        model = body.get("model")
        if model is not None and model not in sim.config.models:
            raise errors.not_found(sim.config.wire, str(model), sim.config.models)
        await sim.apply_faults(request, ex)
        return await _send_audio(sim, request, wav_bytes(body["input"]), ex)

    return await sim.guarded(request, work)


async def _send_audio(
    sim: SimApp, request: web.Request, data: bytes, ex: Exchange
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "audio/wav"})
    await resp.prepare(request)
    sim.stats.status_counts[200] += 1
    size = -(-len(data) // AUDIO_CHUNKS)
    pace = sim.pace()
    await asyncio.sleep(pace.first)
    for start in range(0, len(data), size):
        await resp.write(data[start : start + size])
        await asyncio.sleep(pace.per_token)
    ex.finished = True
    sim.stats.completed_total += 1
    await resp.write_eof()
    return resp


async def sim_stats(sim: SimApp, request: web.Request) -> web.Response:
    return _json(sim.stats.to_dict())


async def sim_faults(sim: SimApp, request: web.Request) -> web.Response:
    return _json(sim.faults.to_dict())


async def sim_set_faults(sim: SimApp, request: web.Request) -> web.StreamResponse:
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of fault names to values")
        sim.faults.merge(changes)
    except (orjson.JSONDecodeError, ValueError) as exc:
        return _json({"error": str(exc)}, status=400)
    refuse = float(changes.get("refuse_for") or 0)
    resp = _json(sim.faults.to_dict())
    if refuse > 0:
        # Answer first: the restart closes every connection, this one included.
        await resp.prepare(request)
        await resp.write_eof()
        sim.faults.refuse_for = 0.0
        sim.on_refuse(refuse)
    return resp


async def sim_reset(sim: SimApp, request: web.Request) -> web.Response:
    sim.reset()
    return _json({"faults": sim.faults.to_dict(), "stats": sim.stats.to_dict()})
