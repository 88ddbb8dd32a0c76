import orjson

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import RequestFacts, rewrite_response

from .support import dumps

CHAT = RequestFacts(kind="chat")
PLAIN = RewriteProfile()
THINK = RewriteProfile(parse_reasoning="think")
USAGE = {"prompt_tokens": 5, "total_tokens": 15, "completion_tokens": 10}


def body(message, finish="stop", usage=USAGE):
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    value = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}
    if usage is not None:
        value["usage"] = usage
    return dumps(value)


def message_of(payload):
    return orjson.loads(payload)["choices"][0]["message"]


def test_both_fields_become_the_profile_field():
    """A 0.11.1-0.15 body loses reasoning_content for a reasoning profile."""
    out, _ = rewrite_response(
        body({"content": "a", "reasoning": "r", "reasoning_content": "r"}), PLAIN, CHAT
    )
    assert message_of(out) == {"role": "assistant", "content": "a", "reasoning": "r"}


def test_message_without_reasoning_gets_a_null_field():
    """Messages always carry the profile's reasoning key, null when there is none."""
    out, _ = rewrite_response(body({"content": "a"}), RewriteProfile("both"), CHAT)
    assert message_of(out) == {
        "role": "assistant",
        "content": "a",
        "reasoning": None,
        "reasoning_content": None,
    }


def test_think_split_in_a_body_counts_reasoning_tokens():
    """A body split by the proxy gets reasoning and a reasoning count in usage."""
    out, usage = rewrite_response(
        body({"content": "<think>abcdefgh</think>ok", "reasoning": None}), THINK, CHAT
    )
    assert message_of(out)["reasoning"] == "abcdefgh" and message_of(out)["content"] == "ok"
    assert usage.reasoning_tokens == 2
    assert orjson.loads(out)["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_prefilled_think_body_is_split_at_the_close_tag():
    """With a prefilled template, text before </think> is reasoning."""
    facts = RequestFacts(kind="chat", think_prefilled=True)
    out, _ = rewrite_response(body({"content": "hmm</think>\n\nok"}), THINK, facts)
    assert (message_of(out)["reasoning"], message_of(out)["content"]) == ("hmm", "\n\nok")


def test_missing_usage_is_estimated_and_added():
    """A body without usage gets an estimate: prompt from the facts, completion from its text."""
    facts = RequestFacts(kind="chat", prompt_estimate=7)
    out, usage = rewrite_response(body({"content": "x" * 10}, usage=None), PLAIN, facts)
    assert usage.estimated and (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    assert orjson.loads(out)["usage"]["total_tokens"] == 10


def test_dropped_brace_is_repaired_in_a_body():
    """Arguments missing their final brace are completed."""
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"a": 1'}}
    out, _ = rewrite_response(
        body({"content": None, "tool_calls": [call]}, "tool_calls"), PLAIN, CHAT
    )
    assert message_of(out)["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


def test_call_cut_at_the_budget_says_length():
    """Invalid arguments and completion_tokens == max_tokens: the call was cut."""
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"a": "b'}}
    facts = RequestFacts(kind="chat", max_tokens=10)
    out, _ = rewrite_response(
        body({"content": "", "tool_calls": [call]}, "tool_calls"), PLAIN, facts
    )
    choice = orjson.loads(out)["choices"][0]
    assert choice["finish_reason"] == "length" and "tera_warning" in choice


def test_unchanged_body_is_the_same_object():
    """Nothing to do: the very bytes come back."""
    payload = body({"content": "a", "reasoning": None})
    assert rewrite_response(payload, PLAIN, CHAT)[0] is payload


def test_a_body_that_is_not_json_passes_with_an_estimate():
    """Garbage is returned as is, billed by the prompt estimate."""
    payload = b"<html>"
    out, usage = rewrite_response(payload, PLAIN, RequestFacts(kind="chat", prompt_estimate=3))
    assert out is payload and usage.estimated and usage.total_tokens == 3
