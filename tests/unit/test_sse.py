"""The SSE splitter returns whole frames, byte for byte, for any split of the input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tera_proxy.sse import FrameSplitter, payload

STREAM = (
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"choices":[{"delta":{"content":"h\\u00e9llo\\n\\n"}}]}\r\n\r\n'
    b"data: [DONE]\n\n"
)
FRAMES = [
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"choices":[{"delta":{"content":"h\\u00e9llo\\n\\n"}}]}\r\n\r\n',
    b"data: [DONE]\n\n",
]


def test_split_at_every_byte() -> None:
    """Feeding the stream one byte at a time yields the same frames."""
    splitter = FrameSplitter()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += splitter.feed(STREAM[i : i + 1])
    assert out == FRAMES
    assert splitter.pending == b""


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_same_frames(cuts: list[int]) -> None:
    """Any chunking of the stream gives the frames of the unsplit stream."""
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    splitter = FrameSplitter()
    out = [f for piece in pieces for f in splitter.feed(piece)]
    assert out == FRAMES


def test_incomplete_frame_is_held() -> None:
    """A frame without its blank line is not released."""
    splitter = FrameSplitter()
    assert splitter.feed(b'data: {"a":1}\n') == []
    assert splitter.feed(b"\n") == [b'data: {"a":1}\n\n']


def test_payload_of_data_and_comment() -> None:
    """payload() returns the data of a data frame and None for a comment."""
    assert payload(b"data: [DONE]\n\n") == b"[DONE]"
    assert payload(b": keep-alive\n\n") is None
