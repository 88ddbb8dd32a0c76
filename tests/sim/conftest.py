"""Fixtures: a running simulator (factory or default) and an HTTP session."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from backends.sim import Faults, SimConfig, SimServer
from tests.sim.helpers import FAST, SimFactory


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """`async with make_sim(wire_version="0.13.0", faults=Faults(...)) as sim:`."""

    @contextlib.asynccontextmanager
    async def factory(
        faults: Faults | None = None, start_listening_after: float | None = None, **options: Any
    ) -> AsyncIterator[SimServer]:
        config = SimConfig(**{**FAST, **options})
        async with SimServer(
            config, port=0, faults=faults, start_listening_after=start_listening_after
        ) as sim:
            yield sim

    yield factory


@pytest.fixture
async def sim(make_sim: SimFactory) -> AsyncIterator[SimServer]:
    async with make_sim() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
