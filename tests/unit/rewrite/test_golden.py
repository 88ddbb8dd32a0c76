"""Real vLLM 0.32 (CPU) transcripts through the rewriters (tests/fixtures/vllm)."""

import dataclasses

import orjson

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import rewrite_response

from .assemble import assemble_completion_stream, assemble_message, assemble_stream
from .support import body, facts_for, run_stream, sse_payloads

PLAIN = RewriteProfile()
HERMES = RewriteProfile(parse_tools="hermes")


def test_plain_stream_passes_byte_for_byte():
    """A 0.32 reasoning stream for a reasoning profile is forwarded untouched."""
    payloads = sse_payloads("t_04_chat_stream")
    out, _ = run_stream(PLAIN, facts_for("t_04_chat_stream"), payloads)
    assert len(out) == len(payloads) and all(a is b for a, b in zip(out, payloads, strict=True))


def test_stream_renamed_for_reasoning_content_clients():
    """The reasoning_content profile sees all reasoning under its field."""
    name = "t_05_chat_stream_usage"
    out, _ = run_stream(RewriteProfile("reasoning_content"), facts_for(name), sse_payloads(name))
    view = assemble_stream(out, "reasoning_content")
    assert view.reasoning == "\n" * 8 and view.finish_reason == "length"
    assert view.usage == {"prompt_tokens": 14, "completion_tokens": 8, "reasoning_tokens": 8}


def test_usage_read_but_hidden_when_the_client_did_not_ask():
    """The usage frame is consumed for billing and not forwarded."""
    name = "t_05_chat_stream_usage"
    facts = dataclasses.replace(facts_for(name), client_wants_usage=False)
    out, usage = run_stream(PLAIN, facts, sse_payloads(name))
    assert assemble_stream(out).usage is None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (14, 8, 8)


def test_continuous_usage_stream_passes_and_counts_the_final_usage():
    """Running usage passes; the final frame's counts are the usage."""
    name = "t_05b_chat_stream_usage_continuous"
    payloads = sse_payloads(name)
    out, usage = run_stream(PLAIN, facts_for(name), payloads)
    assert all(a is b for a, b in zip(out, payloads, strict=True))
    assert usage.completion_tokens == 4 and not usage.estimated


def test_required_without_a_parsed_call_says_stop_both_ways():
    """vLLM says tool_calls (body) and stop (stream) for no call; both become stop."""
    streamed, _ = run_stream(
        PLAIN, facts_for("t_07b_tools_required_stream"), sse_payloads("t_07b_tools_required_stream")
    )
    rewritten, _ = rewrite_response(
        body("t_07_tools_required"), PLAIN, facts_for("t_07_tools_required")
    )
    stream_view, body_view = assemble_stream(streamed), assemble_message(rewritten)
    assert stream_view.finish_reason == body_view.finish_reason == "stop"
    assert stream_view.reasoning == body_view.reasoning and not body_view.tool_calls


def test_two_streamed_calls_match_their_body():
    """Seed-for-seed, the streamed required calls equal the non-streamed ones."""
    streamed, _ = run_stream(
        PLAIN,
        facts_for("g_07b_tools_required_strict_stream"),
        sse_payloads("g_07b_tools_required_strict_stream"),
    )
    name = "g_07_tools_required_strict_s1"
    rewritten, _ = rewrite_response(body(name), PLAIN, facts_for(name))
    stream_view, body_view = assemble_stream(streamed), assemble_message(rewritten)
    assert [c.name for c in stream_view.tool_calls] == ["get_time", "get_weather"]
    assert stream_view.key() == body_view.key()
    assert stream_view.finish_reason == "tool_calls"


def test_named_call_stream_matches_its_body():
    """A tool forced by name finishes with stop, streamed or not."""
    streamed, _ = run_stream(
        PLAIN,
        facts_for("g_08b_tools_named_strict_stream"),
        sse_payloads("g_08b_tools_named_strict_stream"),
    )
    rewritten, _ = rewrite_response(
        body("g_08_tools_named_strict"), PLAIN, facts_for("g_08_tools_named_strict")
    )
    assert assemble_stream(streamed).key() == assemble_message(rewritten).key()
    assert assemble_message(rewritten).finish_reason == "stop"


def test_infinity_arguments_are_flagged():
    """vLLM's "Infinity" arguments (not JSON) keep tool_calls and get a warning."""
    name = "t_07c_tools_required_nothink"
    rewritten, usage = rewrite_response(body(name), PLAIN, facts_for(name))
    view = assemble_message(rewritten)
    assert view.finish_reason == "tool_calls" and view.tool_calls[0].arguments == "Infinity"
    assert view.warning is not None and usage.reasoning_tokens == 0


def test_named_infinity_arguments_say_stop_with_a_warning():
    """A named call with broken arguments still finishes with stop."""
    name = "g_08c_tools_named_nonstrict"
    view = assemble_message(rewrite_response(body(name), PLAIN, facts_for(name))[0])
    assert view.finish_reason == "stop" and view.warning is not None


def test_body_renamed_for_reasoning_content_clients():
    """A non-streamed 0.32 body gets reasoning_content and no reasoning key."""
    rewritten, usage = rewrite_response(
        body("t_03_chat_nonstream"),
        RewriteProfile("reasoning_content"),
        facts_for("t_03_chat_nonstream"),
    )
    message = orjson.loads(rewritten)["choices"][0]["message"]
    assert "reasoning" not in message and message["reasoning_content"].startswith("\n")
    assert usage.reasoning_tokens == 16


def test_plain_body_is_returned_as_the_same_object():
    """A body that needs nothing comes back unchanged."""
    payload = body("t_03_chat_nonstream")
    assert rewrite_response(payload, PLAIN, facts_for("t_03_chat_nonstream"))[0] is payload


def test_raw_hermes_text_becomes_a_cut_call():
    """Without a replica parser, a <tool_call> cut by max_tokens is a call with finish length."""
    name = "g_07_tools_required_nonstrict_s1"
    view = assemble_message(rewrite_response(body(name), HERMES, facts_for(name))[0])
    assert view.content is None and view.tool_calls[0].name == "get_weather"
    assert view.finish_reason == "length" and view.warning is not None


def test_raw_hermes_text_with_a_good_and_a_cut_call():
    """Two raw calls: the whole one parses, the cut one is flagged."""
    name = "g_07_tools_required_strict_s3"
    view = assemble_message(rewrite_response(body(name), HERMES, facts_for(name))[0])
    assert [c.name for c in view.tool_calls] == ["get_weather", "get_time"]
    assert orjson.loads(view.tool_calls[0].arguments) == {"city": "):bį onlit", "unit": "c"}
    assert view.warning == "arguments of tool_calls[1] are not a valid JSON object"


def test_completion_stream_passes_untouched():
    """A /v1/completions stream with usage asked for is forwarded as is."""
    name = "t_10_completions_stream"
    payloads = sse_payloads(name)
    out, _ = run_stream(PLAIN, facts_for(name, "completion"), payloads)
    assert all(a is b for a, b in zip(out, payloads, strict=True))
    assert assemble_completion_stream(out) == (
        " so" * 6,
        {"prompt_tokens": 4, "completion_tokens": 6, "reasoning_tokens": None},
    )


def test_completion_body_is_returned_as_the_same_object():
    """A /v1/completions body is not rewritten; its usage is read."""
    payload = body("t_10b_completions")
    rewritten, usage = rewrite_response(
        payload, PLAIN, facts_for("t_10b_completions", "completion")
    )
    assert rewritten is payload and usage.total_tokens == 10


def test_auto_tools_stream_without_a_call_passes_untouched():
    """Tools offered but no call made: nothing to rewrite, even with hermes parsing on."""
    name = "t_09b_tools_auto_stream"
    payloads = sse_payloads(name)
    out, _ = run_stream(HERMES, facts_for(name), payloads)
    assert all(a is b for a, b in zip(out, payloads, strict=True))
    assert assemble_stream(out).finish_reason == "length"
