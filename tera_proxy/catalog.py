"""The model catalog: what clients may ask for, and its public description.

The JSON bodies of `/v1/models` and `/v1/models/{id}` never change while the proxy
runs, so they are rendered once, at start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from tera_proxy.config import ModelConfig


class Catalog:
    def __init__(self, models: tuple[ModelConfig, ...], created: int | None = None) -> None:
        self._models = {m.id: m for m in models}
        created = int(time.time()) if created is None else created
        self._entries = [describe(m, created) for m in models]
        self.list_body = orjson.dumps({"object": "list", "data": self._entries})
        self._bodies = {e["id"]: orjson.dumps(e) for e in self._entries}
        self._lists: dict[tuple[str, ...], bytes] = {}

    def list_body_for(self, model_ids: Iterable[str]) -> bytes:
        """The list of just these models (a key's scope), rendered once per scope."""
        ids = tuple(model_ids)
        body = self._lists.get(ids)
        if body is None:
            keep = set(ids)
            data = [e for e in self._entries if e["id"] in keep]
            body = self._lists[ids] = orjson.dumps({"object": "list", "data": data})
        return body

    def get(self, model_id: str) -> ModelConfig | None:
        return self._models.get(model_id)

    def body(self, model_id: str) -> bytes | None:
        return self._bodies.get(model_id)

    def __iter__(self) -> Iterator[ModelConfig]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)


def describe(m: ModelConfig, created: int) -> dict[str, Any]:
    """A model in the OpenAI list shape, plus context, max output, pricing, profile."""
    return {
        "id": m.id,
        "object": "model",
        "created": created,
        "owned_by": m.owned_by or (m.id.split("/", 1)[0] if "/" in m.id else "tera"),
        "context_length": m.context_length,
        "max_output_tokens": m.max_output_tokens,
        "pricing": {
            "currency": "USD",
            "input_per_million_tokens": m.input_price_per_million,
            "output_per_million_tokens": m.output_price_per_million,
        },
        "rewrite": {
            "reasoning_field": m.rewrite.reasoning_field,
            "parse_reasoning": m.rewrite.parse_reasoning,
            "parse_tools": m.rewrite.parse_tools,
            "think_prefilled": m.rewrite.think_prefilled,
        },
    }
