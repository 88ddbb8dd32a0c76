"""Pure parts of the simulator: version switches, token plans, finish rules, schemas."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from backends.sim import Faults, SimConfig
from backends.sim.plan import (
    CONTENT_WORDS,
    REASONING_WORDS,
    Kind,
    Plan,
    make_answer,
    make_plan,
    make_steps,
    stream_finish,
)
from backends.sim.request import Endpoint, GenRequest, parse_request
from backends.sim.schema import example_value
from backends.sim.wire import Wire, parse_version
from tests.sim.helpers import TOOLS, chat


def _config(**options: Any) -> SimConfig:
    return SimConfig(models=("m",), **options)


def _request(config: SimConfig, body: dict[str, Any]) -> GenRequest:
    return parse_request(Endpoint.CHAT, orjson.dumps(body), config, None)


def test_parse_version_accepts_four_parts_and_v_prefix() -> None:
    """'v0.10.1.1' parses to a comparable tuple."""
    assert parse_version("v0.10.1.1") == (0, 10, 1, 1)


def test_parse_version_rejects_words() -> None:
    """A non-numeric version is a ValueError naming the input."""
    with pytest.raises(ValueError, match="latest"):
        parse_version("latest")


@pytest.mark.parametrize(
    ("version", "keys"),
    [
        ("0.11.0", ("reasoning_content",)),
        ("0.11.1", ("reasoning", "reasoning_content")),
        ("0.15.1", ("reasoning", "reasoning_content")),
        ("0.16.0", ("reasoning",)),
    ],
)
def test_reasoning_field_names_follow_the_version(version: str, keys: tuple[str, ...]) -> None:
    """The reasoning field was renamed in 0.11.1 and the old name dropped in 0.16."""
    assert Wire.for_version(parse_version(version)).reasoning_keys == keys


def test_config_rejects_an_empty_model_list() -> None:
    """SimConfig needs at least one served name."""
    with pytest.raises(ValueError, match="models"):
        SimConfig(models=())


def test_plan_is_reasoning_then_answer_words() -> None:
    """Reasoning words between think tags, then output_tokens words, ending with stop."""
    config = _config(reasoning_tokens=2, output_tokens=3)
    plan = make_plan(_request(config, chat()), config)
    texts = [p.text for p in plan.pieces]
    assert texts == ["<think>", *REASONING_WORDS[:2], "</think>", *CONTENT_WORDS[:3]]
    assert plan.finish.value == "stop"


def test_plan_cut_by_max_tokens_is_length() -> None:
    """max_tokens below the natural length cuts the plan and finishes with length."""
    config = _config(reasoning_tokens=2, output_tokens=3)
    plan = make_plan(_request(config, chat(max_tokens=4)), config)
    assert (plan.completion_tokens, plan.finish.value) == (4, "length")


def test_steps_group_tokens_per_chunk_without_mixing_kinds() -> None:
    """tokens_per_chunk groups consecutive tokens of one kind into a delta."""
    config = _config(reasoning_tokens=3, output_tokens=2, tokens_per_chunk=2)
    plan = make_plan(_request(config, chat()), config)
    steps = make_steps(plan, 2, "stop")
    assert [(s.kind, s.text) for s in steps] == [
        (Kind.REASONING, " consider recall"),
        (Kind.REASONING, " weigh"),
        (Kind.CONTENT, " alpha beta"),
        (Kind.FINISH, ""),
    ]


def test_length_finish_rides_on_the_last_token() -> None:
    """When cut by length the last token's delta carries finish_reason, as vLLM does."""
    config = _config(reasoning=False, output_tokens=5)
    plan = make_plan(_request(config, chat(max_tokens=2)), config)
    steps = make_steps(plan, 1, "length")
    assert [(s.text, s.finish) for s in steps] == [(" alpha", None), (" beta", "length")]


def _tool_plan(version: str, tool_choice: Any, max_tokens: int | None = None) -> tuple[Plan, Wire]:
    config = _config(wire_version=version, reasoning=False)
    body = chat(tools=TOOLS, tool_choice=tool_choice)
    if max_tokens:
        body["max_tokens"] = max_tokens
    plan = make_plan(_request(config, body), config)
    return plan, config.wire


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("version", "choice", "max_tokens", "expected"),
    [
        ("0.11.0", NAMED, None, "tool_calls"),
        ("0.11.0", "auto", 3, "tool_calls"),
        ("0.13.0", NAMED, None, "stop"),
        ("0.13.0", "required", 3, "tool_calls"),
        ("0.32.0", "required", None, "tool_calls"),
        ("0.33.0", "required", 3, "length"),
        ("0.33.0", NAMED, None, "stop"),
    ],
)
def test_streaming_tool_finish_reason_per_version(
    version: str, choice: Any, max_tokens: int | None, expected: str
) -> None:
    """Streaming finish_reason for tool calls follows each version's quirks."""
    plan, wire = _tool_plan(version, choice, max_tokens)
    assert stream_finish(plan, wire) == expected


@pytest.mark.parametrize(
    ("version", "choice", "expected"),
    [
        ("0.11.0", "required", "stop"),
        ("0.11.1", "required", "tool_calls"),
        ("0.33.0", NAMED, "stop"),
    ],
)
def test_nonstreaming_tool_finish_reason_per_version(
    version: str, choice: Any, expected: str
) -> None:
    """Non-streaming: required stops on <=0.11.0, named always stops."""
    plan, wire = _tool_plan(version, choice)
    assert make_answer(plan, wire).finish_reason == expected


def test_cut_auto_tool_call_stays_raw_text_in_content() -> None:
    """A hermes call cut by max_tokens does not parse: content keeps the raw text."""
    plan, wire = _tool_plan("0.32.0", "auto", 3)
    answer = make_answer(plan, wire)
    assert (answer.tool_arguments, answer.content) == (
        None,
        '<tool_call>\n{"name": "get_weather", "arguments": {"cit' + 'y": "',
    )


def test_schema_example_fills_required_properties_by_type() -> None:
    """Required properties get the documented values; optional ones are left out."""
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "name": {"type": "string"},
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "ok": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["f", "c"]},
            "extra": {"type": "string"},
        },
        "required": ["city", "name", "n", "x", "ok", "unit"],
    }
    assert example_value(schema) == {
        "city": "Paris", "name": "x", "n": 1, "x": 1.5, "ok": True, "unit": "f",
    }  # fmt: skip


def test_schema_example_follows_local_refs() -> None:
    """$ref into $defs resolves against the root schema."""
    schema = {
        "$defs": {
            "P": {
                "type": "object",
                "properties": {"age": {"type": "integer", "minimum": 18}},
                "required": ["age"],
            }
        },
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/P"}},
        "required": ["p"],
    }
    assert example_value(schema) == {"p": {"age": 18}}


def test_faults_merge_rejects_unknown_names() -> None:
    """Merging an unknown fault name is a ValueError that lists the known ones."""
    with pytest.raises(ValueError, match="known: "):
        Faults().merge({"explode": True})


def test_faults_merge_rejects_a_bool_where_a_number_is_meant() -> None:
    """JSON true is not a frame count."""
    with pytest.raises(ValueError, match="die_after_frames"):
        Faults().merge({"die_after_frames": True})
