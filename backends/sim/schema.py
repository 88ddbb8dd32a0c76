"""A small deterministic value that satisfies a JSON schema: tool arguments and
`response_format` documents. Not a validator; it covers what requests use in practice."""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 8


def example_value(schema: Any, name: str = "", root: Any = None, depth: int = 0) -> Any:
    """The simulator's answer for `schema`; `name` is the property it fills, if any."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return "x"
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return example_value(options[0], name, root, depth + 1)
    return _by_type(schema, _type_of(schema), name, root, depth)


def _by_type(schema: dict[str, Any], kind: str, name: str, root: Any, depth: int) -> Any:
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        count = schema.get("minItems", 0) if isinstance(schema.get("minItems"), int) else 0
        item = example_value(schema.get("items", {}), name, root, depth + 1)
        return [item] * min(count, 16)
    if kind == "integer":
        return _clamp(1, schema)
    if kind == "number":
        return _clamp(1.5, schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "Paris" if name == "city" else "x"


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    return {n: example_value(properties.get(n, {}), n, root, depth + 1) for n in names}


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[0]
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _clamp(value: float, schema: dict[str, Any]) -> Any:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, (int, float)) and value < low:
        value = low
    if isinstance(high, (int, float)) and value > high:
        value = high
    return value


def _resolve(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """Follow local `#/...` references (e.g. `#/$defs/Person`) a bounded number of times."""
    for _ in range(_MAX_DEPTH):
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        target: Any = root
        for part in ref.lstrip("#").strip("/").split("/"):
            target = target.get(part) if isinstance(target, dict) and part else target
        if not isinstance(target, dict):
            return {}
        schema = target
    return schema
