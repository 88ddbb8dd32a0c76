"""Incremental Server-Sent Events splitter: bytes in, whole frames out.

The proxy forwards frames byte for byte, so the splitter never normalises anything:
a frame is returned exactly as it arrived, separator included. Only the frame
boundary matters (a blank line, `\\n\\n` from vLLM, `\\r\\n\\r\\n` from others).
"""

from __future__ import annotations

DATA = b"data: "
DONE = b"[DONE]"


class FrameSplitter:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Whole frames completed by `data`, in order; the rest is kept."""
        buf = self._buf + data if self._buf else data
        frames: list[bytes] = []
        start = 0
        while True:
            end = _frame_end(buf, start)
            if end < 0:
                break
            frames.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return frames

    @property
    def pending(self) -> bytes:
        """Bytes of a frame that has not been completed yet."""
        return self._buf


def _frame_end(buf: bytes, start: int) -> int:
    """Index just past the blank line that ends the frame starting at `start`, or -1."""
    lf = buf.find(b"\n\n", start)
    crlf = buf.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1


def payload(frame: bytes) -> bytes | None:
    """The data of a single-line `data:` frame, or None for comments and other fields."""
    if not frame.startswith(b"data:"):
        return None
    body = frame[5:].strip()
    return body


def data_frame(body: bytes) -> bytes:
    return DATA + body + b"\n\n"


DONE_FRAME = data_frame(DONE)
