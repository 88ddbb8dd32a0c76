"""Binary pass-through (/v1/audio/speech) and the command line entry point."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys

import aiohttp

from backends.sim import SimServer
from backends.sim.__main__ import configs


async def test_speech_streams_a_deterministic_wav(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """The WAV's size follows the input length; it is streamed (chunked), not buffered."""
    body = {"model": "m", "input": "hello", "voice": "x"}
    async with http.post(sim.url + "/v1/audio/speech", json=body) as resp:
        data = await resp.read()
        content_type, encoding = resp.headers["Content-Type"], resp.headers["Transfer-Encoding"]
    riff, size, wave = struct.unpack("<4sI4s", data[:12])
    assert (content_type, riff, wave, size + 8, len(data)) == (
        "audio/wav", b"RIFF", b"WAVE", len(data), 44 + 320 * 5,
    )  # fmt: skip
    assert (encoding, sim.stats.completed_total) == ("chunked", 1)


async def test_speech_for_an_unknown_model_is_404(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    """Audio routes check the model like generation routes."""
    body = {"model": "nope", "input": "hello"}
    async with http.post(sim.url + "/v1/audio/speech", json=body) as resp:
        assert resp.status == 404


def test_cli_flags_map_to_config_and_faults() -> None:
    """Repeated --model, --no-parsers and fault flags land in SimConfig and Faults."""
    args, config, faults = configs(
        ["--model", "a", "--model", "b", "--no-parsers", "--wire-version", "0.13.0",
         "--die-after-frames", "4", "--error-rate", "0.25", "--port", "0"]
    )  # fmt: skip
    assert (config.models, config.parsers, config.wire_version) == (("a", "b"), False, "0.13.0")
    assert (faults.die_after_frames, faults.error_rate, args.port) == (4, 0.25, 0)


async def test_cli_prints_one_line_when_listening_and_stops_on_sigterm(
    http: aiohttp.ClientSession,
) -> None:
    """`python -m backends.sim --port 0` announces its URL, serves, and exits on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backends.sim", "--port", "0", "--model", "m",
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        url = line.split()[3]
        async with http.get(url + "/health") as resp:
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert line.startswith("sim listening on http://127.0.0.1:") and code == 0
