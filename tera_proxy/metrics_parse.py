"""A small Prometheus text parser, and the load a vLLM `/metrics` page reports.

Only what the prober needs: sample names, labels and values. Comments, blank lines,
timestamps, NaN/Inf and escaped label values are handled. A line that cannot be parsed is
skipped rather than failing the scrape: exporters differ between vLLM versions, and one
odd line should not hide a replica's load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
# The name before vLLM 0.10; hidden in 0.11, removed in 0.12.
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"
GENERATED = "vllm:generation_tokens_total"
FINISHED = "vllm:request_success_total"
_WANTED = frozenset({RUNNING, WAITING, KV_CACHE, KV_CACHE_OLD, GENERATED, FINISHED})
_PERCENTAGES = (KV_CACHE, KV_CACHE_OLD)

# A label value is a quoted string that may hold `}`, `,`, spaces and escaped quotes.
_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\]|\\.)*"'
_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*"
    rf"(?:\{{(?P<labels>\s*(?:{_PAIR}\s*,\s*)*(?:{_PAIR})?\s*)\}})?"
    r"\s+(?P<value>\S+)(?:\s+-?\d+)?\s*"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_samples(text: str, names: Container[str] | None = None) -> Iterator[Sample]:
    """Every sample in `text`, or only those whose name is in `names`."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if names is not None and _name_of(line) not in names:
            continue  # cheap rejection: most of a vLLM page is Python and process metrics
        m = _SAMPLE.fullmatch(line)
        if m is None:
            continue
        try:
            value = float(m["value"])  # also reads NaN, +Inf, -Inf
        except ValueError:
            continue
        yield Sample(m["name"], _labels(m["labels"] or ""), value)


def _name_of(line: str) -> str:
    end = len(line)
    for stop in ("{", " ", "\t"):
        i = line.find(stop)
        if 0 <= i < end:
            end = i
    return line[:end]


def _labels(text: str) -> dict[str, str]:
    return {
        m[1]: re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e[0]], m[2]) for m in _LABEL.finditer(text)
    }


@dataclass(frozen=True, slots=True)
class Scrape:
    """One replica's `/metrics`, summed over engines and models; None when absent."""

    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None  # 0..1, the fullest engine
    generated: float | None = None  # generation tokens, a counter
    finished: float | None = None  # finished requests of every reason, a counter

    @property
    def queue(self) -> int | None:
        """Requests the engine holds (running + waiting), if it reported either."""
        if self.running is None and self.waiting is None:
            return None
        return round((self.running or 0.0) + (self.waiting or 0.0))

    def moved_since(self, earlier: Scrape) -> bool:
        """Whether the engine produced tokens or finished requests since `earlier`."""
        return (self.generated, self.finished) != (earlier.generated, earlier.finished)


def parse_scrape(text: str) -> Scrape:
    sums: dict[str, float] = {}
    for s in parse_samples(text, _WANTED):
        if not math.isfinite(s.value):
            continue
        if s.name in _PERCENTAGES:
            sums[s.name] = max(sums.get(s.name, 0.0), s.value)
        else:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    kv_cache = sums.get(KV_CACHE, sums.get(KV_CACHE_OLD))
    return Scrape(
        sums.get(RUNNING), sums.get(WAITING), kv_cache, sums.get(GENERATED), sums.get(FINISHED)
    )
