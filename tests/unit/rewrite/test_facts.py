from tera_proxy.rewrite import facts_from_request
from tera_proxy.rewrite.facts import estimate_prompt_tokens

TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


def test_usage_wanted_only_when_the_client_asked_in_a_stream():
    """include_usage counts only with stream: true (vLLM rejects it otherwise)."""
    asked = {"stream": True, "stream_options": {"include_usage": True}}
    assert facts_from_request("chat", asked).client_wants_usage
    assert not facts_from_request("chat", {"stream": True}).client_wants_usage
    assert not facts_from_request(
        "chat", {"stream_options": {"include_usage": True}}
    ).client_wants_usage


def test_continuous_usage_needs_include_usage():
    """continuous_usage_stats alone gives no usage, as in vLLM."""
    alone = {"stream": True, "stream_options": {"continuous_usage_stats": True}}
    both = {
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    assert not facts_from_request("chat", alone).continuous_usage
    assert facts_from_request("chat", both).continuous_usage


def test_tool_forced_by_name_is_recorded():
    """A named tool_choice yields the function name."""
    body = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    assert facts_from_request("chat", body).tool_choice_name == "get_weather"
    assert (
        facts_from_request("chat", {"tools": TOOLS, "tool_choice": "required"}).tool_choice_name
        is None
    )


def test_tools_with_tool_choice_none_are_not_callable():
    """tools_sent is false when tool_choice is "none"."""
    assert facts_from_request("chat", {"tools": TOOLS}).tools_sent
    assert not facts_from_request("chat", {"tools": TOOLS, "tool_choice": "none"}).tools_sent
    assert not facts_from_request("chat", {"tools": []}).tools_sent


def test_max_completion_tokens_wins_over_max_tokens():
    """The newer OpenAI name is read first."""
    body = {"max_tokens": 10, "max_completion_tokens": 20}
    assert facts_from_request("chat", body).max_tokens == 20
    assert facts_from_request("chat", {"max_tokens": True}).max_tokens is None


def test_prompt_estimate_counts_text_parts_and_framing():
    """Four characters a token, plus a few tokens per message."""
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]}
    assert estimate_prompt_tokens(body) == 10 + 4


def test_prompt_estimate_of_a_completion_prompt():
    """A /v1/completions prompt string is counted too."""
    assert facts_from_request("completion", {"prompt": "abcdefgh"}).prompt_estimate == 2


def test_n_defaults_to_one():
    """The number of choices comes from n."""
    assert facts_from_request("chat", {}).n == 1
    assert facts_from_request("chat", {"n": 3}).n == 3


def test_prompt_estimate_counts_earlier_tool_calls():
    """An assistant turn's tool calls are part of the prompt."""
    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    with_call = {"messages": [{"role": "assistant", "content": None, "tool_calls": call}]}
    assert estimate_prompt_tokens(with_call) > estimate_prompt_tokens(
        {"messages": [{"role": "assistant"}]}
    )
