"""A vLLM-faithful OpenAI server with fault injection, for tests, the bench and demos."""

from backends.sim.config import Faults, SimConfig
from backends.sim.server import SimServer
from backends.sim.stats import RecordedRequest, SimStats

__all__ = ["Faults", "RecordedRequest", "SimConfig", "SimServer", "SimStats"]
