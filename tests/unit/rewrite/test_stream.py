import orjson
import pytest

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import RequestFacts, make_stream_rewriter

from .assemble import assemble_stream
from .support import dumps, run_stream

ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
CHAT = RequestFacts(kind="chat", stream=True)
WANTS_USAGE = RequestFacts(kind="chat", stream=True, client_wants_usage=True)
PLAIN = RewriteProfile()
THINK = RewriteProfile(parse_reasoning="think")


def chunk(delta, finish=None, **extra):
    choice = {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish,
        "token_ids": None,
    }
    return dumps({**ENVELOPE, "choices": [choice], **extra})


def usage_frame(prompt=5, completion=3, **details):
    usage = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if details:
        usage["completion_tokens_details"] = details
    return dumps({**ENVELOPE, "choices": [], "usage": usage})


def test_content_frame_passes_as_the_same_object_undecoded(monkeypatch):
    """A frame with nothing to do is returned as is, without JSON decoding."""
    rewriter = make_stream_rewriter(PLAIN, CHAT)
    monkeypatch.setattr("tera_proxy.rewrite.stream.orjson.loads", _no_decoding)
    frame = chunk({"content": "Hello"})
    out = rewriter.feed(frame)
    assert out == [frame] and out[0] is frame


def test_reasoning_frame_in_the_profile_field_passes_untouched():
    """vLLM >=0.16 reasoning frames need nothing for the reasoning profile."""
    frame = chunk({"reasoning": "hm"})
    assert make_stream_rewriter(PLAIN, CHAT).feed(frame)[0] is frame


def test_reasoning_is_renamed_for_reasoning_content_profile():
    """A reasoning_content profile gets reasoning_content only."""
    out = make_stream_rewriter(RewriteProfile("reasoning_content"), CHAT).feed(
        chunk({"reasoning": "hm"})
    )
    assert orjson.loads(out[0])["choices"][0]["delta"] == {"reasoning_content": "hm"}


def test_both_profile_gets_equal_fields():
    """The both profile gets reasoning and reasoning_content with one value."""
    out = make_stream_rewriter(RewriteProfile("both"), CHAT).feed(
        chunk({"reasoning_content": "hm"})
    )
    assert orjson.loads(out[0])["choices"][0]["delta"] == {
        "reasoning": "hm",
        "reasoning_content": "hm",
    }


def test_null_reasoning_content_noise_is_removed():
    """vLLM 0.11.1-0.15's reasoning_content: null disappears from deltas."""
    out = make_stream_rewriter(PLAIN, CHAT).feed(chunk({"content": "x", "reasoning_content": None}))
    assert orjson.loads(out[0])["choices"][0]["delta"] == {"content": "x"}


def test_vllm_only_keys_survive_a_rewrite():
    """stop_reason, token_ids and the like are kept on rewritten frames."""
    frame = chunk({"reasoning_content": "x"}, prompt_token_ids=None)
    rewritten = orjson.loads(make_stream_rewriter(PLAIN, CHAT).feed(frame)[0])
    assert rewritten["prompt_token_ids"] is None and rewritten["choices"][0]["token_ids"] is None


def test_usage_frame_dropped_when_the_client_did_not_ask():
    """The usage the proxy asked for is not shown to a client that did not."""
    rewriter = make_stream_rewriter(PLAIN, CHAT)
    assert rewriter.feed(usage_frame()) == []
    assert rewriter.finish() == []
    assert rewriter.usage.completion_tokens == 3 and not rewriter.usage.estimated


def test_usage_frame_kept_as_is_when_the_client_asked():
    """A client that asked gets the replica's usage frame byte for byte."""
    frame = usage_frame()
    assert make_stream_rewriter(PLAIN, WANTS_USAGE).feed(frame)[0] is frame


def test_missing_usage_is_estimated_and_sent():
    """No usage from the replica: finish() sends an estimated usage frame."""
    facts = RequestFacts(kind="chat", stream=True, client_wants_usage=True, prompt_estimate=9)
    frames = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "a"}),
        chunk({"content": "b"}),
        chunk({}, "stop"),
    ]
    out, usage = run_stream(PLAIN, facts, frames)
    assert usage.estimated and (usage.prompt_tokens, usage.completion_tokens) == (9, 2)
    assert orjson.loads(out[-1])["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
    }


def test_no_usage_frame_invented_for_a_client_that_did_not_ask():
    """finish() owes nothing when the client did not ask for usage."""
    out, _ = run_stream(PLAIN, CHAT, [chunk({"content": "a"}), chunk({}, "stop")])
    assert all(orjson.loads(f)["choices"] for f in out)


def test_running_usage_passes_with_continuous_usage():
    """Per-chunk usage is the client's when it asked for continuous stats."""
    facts = RequestFacts(kind="chat", stream=True, client_wants_usage=True, continuous_usage=True)
    frame = chunk(
        {"content": "a"}, usage={"prompt_tokens": 1, "total_tokens": 2, "completion_tokens": 1}
    )
    assert make_stream_rewriter(PLAIN, facts).feed(frame)[0] is frame


def test_running_usage_removed_without_continuous_usage():
    """Forced per-chunk usage (vLLM --enable-force-include-usage) is removed."""
    frame = chunk(
        {"content": "a"}, usage={"prompt_tokens": 1, "total_tokens": 2, "completion_tokens": 1}
    )
    out = make_stream_rewriter(PLAIN, WANTS_USAGE).feed(frame)
    assert "usage" not in orjson.loads(out[0])


def test_usage_gets_the_proxy_reasoning_count():
    """When the proxy split the reasoning, the usage frame says how many tokens it took."""
    frames = [
        chunk({"content": "<think>" + "x" * 8 + "</think>ok"}),
        chunk({}, "stop"),
        usage_frame(5, 6),
    ]
    out, usage = run_stream(THINK, WANTS_USAGE, frames)
    assert usage.reasoning_tokens == 2
    assert orjson.loads(out[-1])["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_frame_with_only_held_text_is_dropped():
    """Text that may still be a tag is held, and its frame is not sent."""
    rewriter = make_stream_rewriter(THINK, CHAT)
    rewriter.feed(chunk({"content": "<think>a"}))
    assert rewriter.feed(chunk({"content": "</thi"})) == []


def test_held_text_is_flushed_when_the_stream_ends_early():
    """finish() releases text held when the upstream stopped without a finish chunk."""
    rewriter = make_stream_rewriter(THINK, CHAT)
    rewriter.feed(chunk({"content": "<thi"}))
    out = rewriter.finish()
    assert orjson.loads(out[0])["choices"][0]["delta"] == {"content": "<thi"}


def test_think_split_in_one_frame():
    """One frame holding the end of the reasoning and the start of the answer gets both fields."""
    rewriter = make_stream_rewriter(THINK, CHAT)
    rewriter.feed(chunk({"content": "<think>a"}))
    out = rewriter.feed(chunk({"content": "b</think>c"}))
    assert orjson.loads(out[0])["choices"][0]["delta"] == {"content": "c", "reasoning": "b"}


def test_content_after_reasoning_takes_the_fast_path(monkeypatch):
    """Once past </think>, plain content frames are not decoded."""
    rewriter = make_stream_rewriter(THINK, CHAT)
    rewriter.feed(chunk({"content": "<think>a</think>b"}))
    monkeypatch.setattr("tera_proxy.rewrite.stream.orjson.loads", _no_decoding)
    frame = chunk({"content": "more"})
    assert rewriter.feed(frame)[0] is frame


def test_every_choice_is_watched_for_think_with_n_above_one():
    """The second choice's <think> is split even after the first went plain."""
    facts = RequestFacts(kind="chat", stream=True, n=2)
    rewriter = make_stream_rewriter(THINK, facts)
    rewriter.feed(chunk({"content": "<think>a</think>b"}))
    second = {
        "index": 1,
        "delta": {"content": "<think>c</think>d"},
        "logprobs": None,
        "finish_reason": None,
    }
    out = rewriter.feed(dumps({**ENVELOPE, "choices": [second]}))
    assert orjson.loads(out[0])["choices"][0]["delta"] == {"content": "d", "reasoning": "c"}


def test_proxy_parsed_call_streams_in_two_frames():
    """A parsed call: header (arguments "") in one frame, arguments in the next."""
    facts = RequestFacts(kind="chat", stream=True, tools_sent=True)
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    out = make_stream_rewriter(RewriteProfile(parse_tools="hermes"), facts).feed(
        chunk({"content": text})
    )
    first, second = (orjson.loads(f)["choices"][0]["delta"]["tool_calls"] for f in out)
    assert first[0]["function"] == {"name": "f", "arguments": ""}
    assert second == [{"index": 0, "function": {"arguments": '{"a": 1}'}}]


def test_hermes_ignored_when_no_tools_were_sent():
    """Like vLLM, no call parsing for a request without tools."""
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    out, _ = run_stream(
        RewriteProfile(parse_tools="hermes"), CHAT, [chunk({"content": text}), chunk({}, "stop")]
    )
    assert assemble_stream(out).content == text


def test_finish_waits_for_usage_when_a_call_looks_cut():
    """A 0.11-style tool_calls over invalid arguments is decided once usage shows the budget."""
    facts = RequestFacts(kind="chat", stream=True, max_tokens=3)
    rewriter = make_stream_rewriter(PLAIN, facts)
    header = {"id": "t", "type": "function", "index": 0, "function": {"name": "f"}}
    rewriter.feed(chunk({"tool_calls": [header]}))
    rewriter.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": "b'}}]}))
    assert rewriter.feed(chunk({}, "tool_calls")) == []
    out = rewriter.feed(usage_frame(completion=3))
    assert orjson.loads(out[0])["choices"][0]["finish_reason"] == "length"


def test_repair_fragment_precedes_the_finish():
    """A dropped closing brace is sent as a last fragment, then the finish reason."""
    header = {"id": "t", "type": "function", "index": 0, "function": {"name": "f"}}
    frames = [
        chunk({"tool_calls": [header]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1'}}]}),
        chunk({}, "tool_calls"),
    ]
    out, _ = run_stream(PLAIN, CHAT, frames)
    view = assemble_stream(out)
    assert view.tool_calls[0].arguments == '{"a": 1}' and view.finish_reason == "tool_calls"
    assert orjson.loads(out[-1])["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": "}"}}]
    }


def test_invalid_arguments_carry_a_warning():
    """Arguments that stay invalid are flagged on the finish chunk."""
    header = {
        "id": "t",
        "type": "function",
        "index": 0,
        "function": {"name": "f", "arguments": "Infinity"},
    }
    out, _ = run_stream(PLAIN, CHAT, [chunk({"tool_calls": [header]}), chunk({}, "tool_calls")])
    assert assemble_stream(out).warning == "arguments of tool_calls[0] are not a valid JSON object"


def test_completion_stream_only_loses_the_unasked_usage():
    """/v1/completions frames pass; the usage frame goes when not asked for."""
    facts = RequestFacts(kind="completion", stream=True)
    frame = dumps(
        {
            **ENVELOPE,
            "object": "text_completion",
            "choices": [{"index": 0, "text": " so", "finish_reason": None}],
            "usage": None,
        }
    )
    rewriter = make_stream_rewriter(PLAIN, facts)
    assert rewriter.feed(frame)[0] is frame
    assert rewriter.feed(usage_frame()) == []


def test_a_payload_that_is_not_json_passes():
    """Garbage is not the rewriter's to judge."""
    assert make_stream_rewriter(PLAIN, CHAT).feed(b'{"choices": nope') == [b'{"choices": nope']


def test_usage_is_available_before_finish():
    """usage can be read at any time (a cut stream is still billed)."""
    rewriter = make_stream_rewriter(PLAIN, RequestFacts(kind="chat", prompt_estimate=4))
    rewriter.feed(chunk({"role": "assistant", "content": ""}))
    rewriter.feed(chunk({"content": "a"}))
    assert rewriter.usage.estimated and rewriter.usage.total_tokens == 5


def test_repr_is_informative():
    """The repr names the kind and how many frames went through."""
    rewriter = make_stream_rewriter(PLAIN, CHAT)
    rewriter.feed(chunk({"content": "a"}))
    assert repr(rewriter) == "<StreamRewriter chat frames=1 choices={}>"


def _no_decoding(_payload):
    pytest.fail("the frame was decoded")


def test_replica_reasoning_stops_the_proxy_split():
    """With a prefilled profile, a replica that parses reasoning keeps its content as content."""
    facts = RequestFacts(kind="chat", stream=True, think_prefilled=True)
    frames = [chunk({"reasoning": "r"}), chunk({"content": "answer"}), chunk({}, "stop")]
    out, usage = run_stream(THINK, facts, frames)
    view = assemble_stream(out)
    assert (view.reasoning, view.content) == ("r", "answer")
    assert usage.reasoning_tokens is None
