"""CPU cost per SSE frame of the stream rewriter.

    .venv/bin/python bench/bench_rewrite.py [--frames 200000] [--stream-length 500]

Each case feeds ``--frames`` upstream payloads (split into streams of ``--stream-length``
frames, one rewriter per stream, ``finish()`` included) and prints the process CPU time
per frame in microseconds:

- pass-through: vLLM >=0.16 content frames, a profile with nothing to do (the fast path);
- think + rename: a replica without a reasoning parser, every frame inside ``<think>``,
  for a ``reasoning_content`` profile (decode, split, rename, re-encode every frame);
- 0.13 nulls: vLLM 0.11.1-0.15 content frames carrying ``"reasoning_content": null``
  (decode, drop the key, re-encode).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import RequestFacts, make_stream_rewriter

ENVELOPE = {
    "id": "chatcmpl-ae1b01b2c7afb367",
    "object": "chat.completion.chunk",
    "created": 1795300197,
    "model": "Qwen/Qwen3-8B",
}
WORDS = [" the", " weather", " in", " Paris", " is", " mild", ",", " about", " 18", "°C", "."]
FACTS = RequestFacts(kind="chat", stream=True, prompt_estimate=100)


def frame(delta: dict[str, object]) -> bytes:
    choice = {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": None,
        "token_ids": None,
    }
    return orjson.dumps({**ENVELOPE, "choices": [choice]})


def passthrough_stream(length: int) -> list[bytes]:
    role = frame({"role": "assistant", "content": ""})
    return [role] + [frame({"content": WORDS[i % len(WORDS)]}) for i in range(length - 1)]


def think_stream(length: int) -> list[bytes]:
    opening = frame({"content": "<think>"})
    return [opening] + [frame({"content": WORDS[i % len(WORDS)]}) for i in range(length - 1)]


def nulls_stream(length: int) -> list[bytes]:
    words = (WORDS[i % len(WORDS)] for i in range(length))
    return [frame({"content": w, "reasoning_content": None}) for w in words]


def measure(
    profile: RewriteProfile, make: Callable[[int], list[bytes]], args: argparse.Namespace
) -> float:
    """CPU microseconds per frame over args.frames frames."""
    stream = make(args.stream_length)
    streams = max(args.frames // len(stream), 1)
    started = time.process_time()
    for _ in range(streams):
        rewriter = make_stream_rewriter(profile, FACTS)
        for payload in stream:
            rewriter.feed(payload)
        rewriter.finish()
    elapsed = time.process_time() - started
    return elapsed / (streams * len(stream)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--stream-length", type=int, default=500)
    args = parser.parse_args()
    cases = [
        ("pass-through", RewriteProfile(), passthrough_stream),
        ("think + rename", RewriteProfile("reasoning_content", "think"), think_stream),
        ("0.13 nulls", RewriteProfile(), nulls_stream),
    ]
    for name, profile, make in cases:
        measure(profile, make, argparse.Namespace(frames=2_000, stream_length=args.stream_length))
        print(f"{name:16} {measure(profile, make, args):7.2f} us/frame")


if __name__ == "__main__":
    main()
