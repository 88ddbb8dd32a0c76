"""The load generator's pure parts: distributions, arrival schedules, percentile
summaries and the SSE timing scanner. No I/O, no event loop: tested in tests/bench/."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------- distributions


@dataclass(frozen=True, slots=True)
class Dist:
    """An integer-valued length distribution: `fixed:N`, `uniform:A:B`,
    `normal:MEAN:STD[:MIN[:MAX]]` (clipped; MIN defaults to 1, MAX to MEAN + 4 STD)."""

    kind: str
    a: float
    b: float = 0.0
    lo: int = 1
    hi: int = 1 << 30

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        value = round(rng.gauss(self.a, self.b))
        return max(self.lo, min(self.hi, value))

    @property
    def mean(self) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a  # approximately, when the clip is symmetric or far away

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "uniform":
            return f"uniform:{int(self.a)}:{int(self.b)}"
        return f"normal:{self.a:g}:{self.b:g}:{self.lo}:{self.hi}"


def parse_dist(text: str) -> Dist:
    """`128`, `fixed:128`, `uniform:16:256`, `normal:128:32`, `normal:128:32:1:512`."""
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            return _checked(Dist("fixed", float(int(parts[0]))))
        kind, nums = parts[0], [float(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"not a length distribution: {text!r}") from None
    if kind == "fixed" and len(nums) == 1:
        return _checked(Dist("fixed", float(int(nums[0]))))
    if kind == "uniform" and len(nums) == 2:
        return _checked(Dist("uniform", nums[0], nums[1]))
    if kind == "normal" and 2 <= len(nums) <= 4:
        mean, std = nums[0], nums[1]
        lo = int(nums[2]) if len(nums) > 2 else 1
        hi = int(nums[3]) if len(nums) > 3 else max(lo, math.ceil(mean + 4 * std))
        return _checked(Dist("normal", mean, std, lo, hi))
    raise ValueError(
        f"not a length distribution: {text!r} (fixed:N, uniform:A:B, normal:M:S[:MIN[:MAX]])"
    )


def _checked(d: Dist) -> Dist:
    if d.kind == "fixed" and d.a < 0:
        raise ValueError("a fixed length cannot be negative")
    if d.kind == "uniform" and not 0 <= d.a <= d.b:
        raise ValueError("uniform:A:B needs 0 <= A <= B")
    if d.kind == "normal" and (d.b < 0 or d.lo > d.hi or d.lo < 0):
        raise ValueError("normal:M:S:MIN:MAX needs S >= 0 and 0 <= MIN <= MAX")
    return d


# ---------------------------------------------------------------- arrivals


def arrival_schedule(rate: float, *, count: int, duration: float, seed: int = 0) -> list[float]:
    """Poisson arrival offsets (seconds from start) at `rate` per second, bounded by both
    `count` arrivals and `duration` seconds. Deterministic for a seed."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while len(out) < count:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        out.append(t)
    return out


# ---------------------------------------------------------------- summaries


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values; q in [0, 100]."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def summarize(values: Iterable[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """count, mean, min, p50, p90, p99, max of `values` times `scale` (e.g. 1000 for ms)."""
    vs = sorted(v * scale for v in values)
    if not vs:
        return {
            "count": 0,
            "mean": None,
            "min": None,
            "p50": None,
            "p90": None,
            "p99": None,
            "max": None,
        }
    return {
        "count": len(vs),
        "mean": round(sum(vs) / len(vs), 4),
        "min": round(vs[0], 4),
        "p50": round(percentile(vs, 50), 4),
        "p90": round(percentile(vs, 90), 4),
        "p99": round(percentile(vs, 99), 4),
        "max": round(vs[-1], 4),
    }


def median_range(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Median with min and max over rounds (the peers table's "median (min-max)")."""
    vs = sorted(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    if not vs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": percentile(vs, 50), "min": vs[0], "max": vs[-1], "n": len(vs)}


# ---------------------------------------------------------------- SSE timing


class SSEScanner:
    """Incremental scanner of an OpenAI-style SSE body that only classifies events, without
    decoding their JSON: cheap enough to run on every received chunk. Feed it bytes as they
    arrive with the arrival time; it records the time of each content event.

    An event is `content` unless it is `[DONE]`, a usage-only chunk (`"choices":[]`) or an
    error object. Events split across reads are joined; the separator is a blank line
    (`\\n\\n` or `\\r\\n\\r\\n`)."""

    __slots__ = ("_carry", "content_times", "done", "errors", "events", "usage_tokens")

    def __init__(self) -> None:
        self._carry = b""
        self.content_times: list[float] = []
        self.events = 0
        self.done = False
        self.errors = 0
        self.usage_tokens: int | None = None

    def feed(self, chunk: bytes, t: float) -> None:
        data = self._carry + chunk if self._carry else chunk
        if b"\r\n" in data:
            data = data.replace(b"\r\n", b"\n")
        blocks = data.split(b"\n\n")
        self._carry = blocks.pop()
        for block in blocks:
            if block:
                self._event(block, t)

    def close(self, t: float) -> None:
        """End of body: a last event without its blank line still counts."""
        if self._carry.strip():
            self._event(self._carry, t)
        self._carry = b""

    def _event(self, block: bytes, t: float) -> None:
        i = block.find(b"data:")
        if i < 0:
            return  # comment or event:/id:/retry: lines only
        self.events += 1
        payload = block[i + 5 :].lstrip()
        if payload.startswith(b"[DONE]"):
            self.done = True
            return
        if payload.startswith(b'{"error"') or b'"error":{' in payload[:64]:
            self.errors += 1
            return
        if b'"choices":[]' in payload or b'"choices": []' in payload:
            self._usage(payload)
            return
        self.content_times.append(t)
        if b'"usage":{' in payload or b'"usage": {' in payload:
            self._usage(payload)

    def _usage(self, payload: bytes) -> None:
        key = b'"completion_tokens":'
        i = payload.find(key)
        if i < 0:
            return
        j = i + len(key)
        while j < len(payload) and payload[j : j + 1] == b" ":
            j += 1
        k = j
        while k < len(payload) and 48 <= payload[k] <= 57:
            k += 1
        if k > j:
            self.usage_tokens = int(payload[j:k])

    def gaps(self) -> list[float]:
        """Inter-token gaps between successive content events."""
        ts = self.content_times
        return [b - a for a, b in itertools.pairwise(ts)]
