"""SIGKILL one of two real vLLM workers under traffic: the supervisor brings it back, and
meanwhile the proxy keeps answering from the other worker.

Runs last in the tier (file order): it costs one vLLM start (~30 s)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import openai
import pytest

from backends.supervisor import EventKind
from tests.vllm.conftest import ANY, START_LIMIT, VllmPool

# The restart alone takes ~20-60 s on two busy cores; the default 120 s would include
# the session's worker start-up when this module runs alone.
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(2 * START_LIMIT),
]

VICTIM = "vllm-scripted"
CLIENTS = 2
# Each request generates TOKENS (~0.1-0.2 s), so the victim is likely mid-request when
# killed; the pause leaves the restarting worker some CPU on a 2-core machine.
TOKENS = 32
PAUSE = 0.3


class Traffic:
    """Closed-loop clients sending short chats to the model both workers serve."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.ok = 0
        self.failures: list[str] = []
        self.running = True

    async def loop(self) -> None:
        deadline = time.monotonic() + START_LIMIT
        while self.running and time.monotonic() < deadline:
            try:
                await self.client.chat.completions.create(
                    model=ANY,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=TOKENS,
                    extra_body={"ignore_eos": True},
                )
                self.ok += 1
            except openai.APIStatusError as exc:
                # One failure decides the test; stop rather than spin on fast errors.
                self.failures.append(f"{exc.status_code} {exc.response.text!r}")
                return
            except openai.APIError as exc:
                self.failures.append(repr(exc))
                return
            # Steady traffic, not a flood: the restarting worker needs CPU to start.
            await asyncio.sleep(PAUSE)

    async def until_ok(self, count: int) -> None:
        for _ in range(600):  # bounded: up to 60 s
            if self.ok >= count or self.failures:
                return
            await asyncio.sleep(0.1)


async def test_killed_worker_restarts_while_the_other_serves(
    client: openai.AsyncOpenAI, vllm_pool: VllmPool
) -> None:
    """Kill -9 a worker mid-traffic: no client request fails, and the worker comes back."""
    supervisor = vllm_pool.supervisor
    victim = supervisor.pids()[VICTIM]
    assert victim is not None
    traffic = Traffic(client)
    tasks = [asyncio.create_task(traffic.loop()) for _ in range(CLIENTS)]
    try:
        await traffic.until_ok(4)
        os.kill(victim, signal.SIGKILL)
        served_before, killed_at = traffic.ok, time.monotonic()
        await supervisor.wait_healthy(START_LIMIT)
        print(f"restart took {time.monotonic() - killed_at:.1f}s")
        assert supervisor.pids()[VICTIM] not in (None, victim)
        served_during = traffic.ok - served_before
    finally:
        traffic.running = False
        await asyncio.gather(*tasks)
    assert traffic.failures == []
    assert served_during > 0
    assert supervisor.status()[VICTIM].restarts == 1
    exits = [e for e in vllm_pool.events if e.kind is EventKind.EXITED]
    assert [(e.worker, e.returncode) for e in exits] == [(VICTIM, -signal.SIGKILL)]
