"""Every vLLM version's shape, streamed or not, assembles to one client view."""

import dataclasses

import pytest

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import facts_from_request, rewrite_response

from .assemble import View, assemble_message, assemble_stream
from .support import run_stream
from .vllm_shapes import REPLICA_VERSIONS, VERSIONS, Scenario, response, stream

PLAIN = RewriteProfile()
PARSING = RewriteProfile(parse_reasoning="think", parse_tools="hermes")
WEATHER = ("get_weather", '{"city": "Paris", "unit": "c"}')
TIME = ("get_time", '{"tz": "CET"}')

# scenario, then what every client must see: reasoning, content, call names, finish_reason
CASES = {
    "answer": (
        Scenario(reasoning="User says hi. 2 < 3 </b>", content="Hello! <b>Hi</b>"),
        ("User says hi. 2 < 3 </b>", "Hello! <b>Hi</b>", (), "stop"),
    ),
    "no_reasoning": (
        Scenario(content="Plain answer.", reasoning_tokens=0),
        (None, "Plain answer.", (), "stop"),
    ),
    "reasoning_cut_by_length": (
        Scenario(reasoning="Still thinking about", engine_finish="length", thinking_done=False),
        ("Still thinking about", None, (), "length"),
    ),
    "auto_call": (
        Scenario(reasoning="Need weather.", content="Let me check.", calls=(WEATHER,)),
        ("Need weather.", "Let me check.", ("get_weather",), "tool_calls"),
    ),
    "parallel_calls": (
        Scenario(reasoning="Two tools.", calls=(WEATHER, TIME)),
        ("Two tools.", None, ("get_weather", "get_time"), "tool_calls"),
    ),
    "required_call": (
        Scenario(reasoning="Must call.", calls=(TIME,), tool_choice="required"),
        ("Must call.", None, ("get_time",), "tool_calls"),
    ),
    "named_call": (
        Scenario(reasoning="Forced.", calls=(WEATHER,), tool_choice="named"),
        ("Forced.", None, ("get_weather",), "stop"),
    ),
    "call_cut_by_length": (
        Scenario(
            reasoning="Go.",
            calls=(("get_weather", '{"city": "Pa'),),
            engine_finish="length",
            completion_tokens=100,
        ),
        ("Go.", None, ("get_weather",), "length"),
    ),
}
WHOLE = [name for name, (s, _) in CASES.items() if not s.cut]


def profiles(version):
    """Replica-parsed shapes must come out the same whether or not the proxy also parses."""
    return [PARSING] if version == "inline" else [PLAIN, PARSING]


def streamed(scenario, version, profile, field="reasoning"):
    facts = facts_from_request("chat", scenario.request(stream=True))
    profile = dataclasses.replace(profile, reasoning_field=field)
    out, usage = run_stream(profile, facts, stream(scenario, version))
    return assemble_stream(out, field), usage


def unstreamed(scenario, version, profile):
    facts = facts_from_request("chat", scenario.request(stream=False))
    return assemble_message(rewrite_response(response(scenario, version), profile, facts)[0])


def core(view: View):
    """The view without the reasoning token count (only some versions report it)."""
    usage = dict(view.usage or {}, reasoning_tokens=None)
    return (*view.key()[:4], usage, view.key()[5])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("version", VERSIONS)
def test_stream_view_is_what_the_client_expects(name, version):
    """Reasoning, content, calls and finish_reason of each version's stream."""
    scenario, expected = CASES[name]
    for profile in profiles(version):
        view, _ = streamed(scenario, version, profile)
        assert (
            view.reasoning,
            view.content,
            tuple(c.name for c in view.tool_calls),
            view.finish_reason,
        ) == expected


@pytest.mark.parametrize("name", CASES)
def test_streams_agree_across_versions(name):
    """All versions and profiles give one view, tool arguments and usage included."""
    scenario, _ = CASES[name]
    views = {(v, p): core(streamed(scenario, v, p)[0]) for v in VERSIONS for p in profiles(v)}
    assert len(set(map(repr, views.values()))) == 1, views


@pytest.mark.parametrize("name", WHOLE)
@pytest.mark.parametrize("version", VERSIONS)
def test_body_equals_the_stream(name, version):
    """A non-streamed response assembles to its streamed twin."""
    scenario, _ = CASES[name]
    for profile in profiles(version):
        assert core(unstreamed(scenario, version, profile)) == core(
            streamed(scenario, version, profile)[0]
        )


def test_cut_inline_call_body_equals_the_stream():
    """A raw call cut by the budget is the same call, streamed or not."""
    scenario, _ = CASES["call_cut_by_length"]
    body_view = unstreamed(scenario, "inline", PARSING)
    assert body_view.key() == streamed(scenario, "inline", PARSING)[0].key()
    assert body_view.warning is not None


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "both"])
@pytest.mark.parametrize("version", VERSIONS)
def test_reasoning_arrives_in_the_profile_field(field, version):
    """Each profile field carries the reasoning, from every version (assembly is strict)."""
    scenario, (reasoning, *_) = CASES["answer"]
    for profile in profiles(version):
        assert streamed(scenario, version, profile, field)[0].reasoning == reasoning


@pytest.mark.parametrize("version", REPLICA_VERSIONS)
def test_reasoning_count_only_from_a_replica_that_reports_it(version):
    """reasoning_tokens comes from 0.32's usage; older replicas report none."""
    scenario, _ = CASES["answer"]
    _, usage = streamed(scenario, version, PLAIN)
    assert usage.reasoning_tokens == (12 if version == "0.32" else None)


def test_reasoning_count_made_by_the_proxy_when_it_splits():
    """The proxy counts the reasoning it split out: 4 characters a token."""
    scenario, (reasoning, *_) = CASES["answer"]
    _, usage = streamed(scenario, "inline", PARSING)
    assert usage.reasoning_tokens == -(-len(reasoning) // 4)


def test_completion_counts_are_the_replica_counts():
    """prompt and completion tokens are the replica's, reasoning included."""
    scenario, _ = CASES["auto_call"]
    for version in VERSIONS:
        _, usage = streamed(scenario, version, PARSING)
        assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (20, 40, False)
