"""vLLM's error bodies (section 4 of vllm-wire.md): one exception, rendered per version."""

from __future__ import annotations

import json
from typing import Any

import orjson

from backends.sim.wire import Wire


class SimError(Exception):
    """A request vLLM would refuse; `status` is also the body's `code`."""

    def __init__(self, status: int, type_: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"<SimError {self.status} {self.type}: {self.message[:60]!r}>"

    def payload(self, wire: Wire) -> dict[str, Any]:
        if wire.flat_errors:
            return {
                "object": "error",
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }

    def body(self, wire: Wire) -> bytes:
        return orjson.dumps(self.payload(wire))

    def stream_frame(self, wire: Wire) -> bytes:
        """The `data:` frame vLLM sends when this happens after a 200 (section 2)."""
        inner = self.payload(wire)
        payload = {"error": inner.get("error", inner)}
        if wire.compact_stream_errors:
            text = orjson.dumps(payload)
        else:
            # Older servers build the frame with json.dumps: spaces after : and ,.
            text = json.dumps(payload).encode()
        return b"data: " + text + b"\n\n"


def bad_request(message: str, param: str | None = None) -> SimError:
    return SimError(400, "BadRequestError", message, param)


def sampling_error(wire: Wire, message: str, param: str, value: Any) -> SimError:
    """A SamplingParams check; >=0.30 appends the parameter and names it."""
    if wire.verbose_errors:
        return bad_request(f"{message} (parameter={param}, value={value})", param)
    return bad_request(message)


def validation_error(kind: str, loc: str, msg: str, items: int) -> SimError:
    """Pydantic request validation: 400 with the HTTP phrase as the type."""
    detail = (
        f"{{'type': '{kind}', 'loc': '{loc}', 'msg': '{msg}', 'input': '<dict of {items} items>'}}"
    )
    return SimError(400, "Bad Request", f"1 validation error:\n  {detail}", loc)


def not_found(wire: Wire, model: str, served: tuple[str, ...]) -> SimError:
    if wire.verbose_errors:
        aliases = ", ".join(served)
        message = f"The model `{model}` does not exist. Valid aliases: {aliases}."
        return SimError(404, "NotFoundError", message, "model")
    return SimError(404, "NotFoundError", f"The model `{model}` does not exist.")


def internal(message: str = "The server had an error while processing your request.") -> SimError:
    return SimError(500, "InternalServerError", message)


def injected(status: int) -> SimError:
    """The body for an error_rate / fail_next fault."""
    if status == 503:
        return SimError(503, "ServiceUnavailableError", "The service is temporarily unavailable.")
    if status >= 500:
        return internal()
    return SimError(status, "BadRequestError", "Injected error.")


UNAUTHORIZED = orjson.dumps({"error": "Unauthorized"})
