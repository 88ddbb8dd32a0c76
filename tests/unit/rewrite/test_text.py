from tera_proxy.rewrite.hermes import ParsedCall
from tera_proxy.rewrite.text import Channel, Text, TextSplitter


def split(*parts: str, think: bool = True, tools: bool = True, prefilled: bool = False):
    """(reasoning, content, calls) of text fed in parts."""
    splitter = TextSplitter(think=think, tools=tools, prefilled=prefilled)
    pieces = [p for part in parts for p in splitter.feed(part)] + splitter.finish()
    return _sort(pieces)


def _sort(pieces):
    reasoning = "".join(
        p.text for p in pieces if isinstance(p, Text) and p.channel is Channel.REASONING
    )
    content = "".join(
        p.text for p in pieces if isinstance(p, Text) and p.channel is Channel.CONTENT
    )
    return reasoning, content, [p for p in pieces if isinstance(p, ParsedCall)]


def test_think_block_becomes_reasoning():
    """Text inside <think>...</think> is reasoning, the rest content."""
    assert split("<think>Why?</think>Because.") == ("Why?", "Because.", [])


def test_tags_split_across_parts():
    """Tags cut anywhere give the same split."""
    assert split("<th", "ink>Wh", "y?</thi", "nk>Be", "cause.") == ("Why?", "Because.", [])


def test_partial_close_tag_is_held():
    """A suffix that may still become </think> is not emitted yet."""
    splitter = TextSplitter(think=True, tools=False)
    assert splitter.feed("<think>abc</th") == [Text(Channel.REASONING, "abc")]


def test_lookalike_is_released_once_it_cannot_be_a_tag():
    """ "</th" followed by "e" is reasoning text at once."""
    splitter = TextSplitter(think=True, tools=False)
    splitter.feed("<think>a</th")
    assert splitter.feed("e end") == [Text(Channel.REASONING, "</the end")]


def test_lookalike_start_is_released_as_content():
    """Text that begins like <think> but is not one is content as soon as that is clear."""
    splitter = TextSplitter(think=True, tools=False)
    assert splitter.feed("<thi") == []
    assert splitter.feed("s is html") == [Text(Channel.CONTENT, "<this is html")]


def test_leading_whitespace_before_think_is_dropped():
    """Whitespace before the opening tag is not content."""
    assert split("\n\n", "<think>r</think>c") == ("r", "c", [])


def test_without_opening_tag_all_is_content():
    """No <think> at the start: no reasoning, a stray </think> stays in the content."""
    assert split("plain</think>text") == ("", "plain</think>text", [])


def test_prefilled_template_starts_inside_reasoning():
    """With a prefilled <think>, text before </think> is reasoning."""
    assert split("r1 r2</think>answer", prefilled=True) == ("r1 r2", "answer", [])


def test_prefilled_without_close_is_all_reasoning():
    """A prefilled stream cut before </think> is all reasoning."""
    assert split("still thinking", prefilled=True) == ("still thinking", "", [])


def test_unclosed_think_is_reasoning():
    """An opened think block cut by the budget stays reasoning."""
    assert split("<think>cut here</thi") == ("cut here</thi", "", [])


def test_only_the_first_think_block_is_split():
    """A later <think> is content."""
    assert split("<think>a</think>b<think>c</think>") == ("a", "b<think>c</think>", [])


def test_tool_call_is_parsed():
    """A hermes block becomes a call with its arguments as JSON text."""
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    assert split(text, think=False) == ("", "", [ParsedCall("f", '{"a": 1}')])


def test_tool_call_tags_split_across_parts():
    """Call tags cut anywhere give the same call."""
    parts = ("<tool_", 'call>{"name": "f", ', '"arguments": {}}</tool', "_call>")
    assert split(*parts, think=False) == ("", "", [ParsedCall("f", "{}")])


def test_content_before_a_call_is_kept():
    """Text before <tool_call> is content."""
    text = 'Let me check. <tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert split(text, think=False) == ("", "Let me check. ", [ParsedCall("f", "{}")])


def test_whitespace_between_calls_is_dropped():
    """Newlines a template puts after a call are not content."""
    one = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert split(one + "\n", "\n" + one + "\n") == ("", "", [ParsedCall("f", "{}")] * 2)


def test_text_after_a_call_is_content():
    """Non-blank text after a call is content, without the leading newline."""
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>\nDone.'
    assert split(text, think=False) == ("", "Done.", [ParsedCall("f", "{}")])


def test_block_without_a_name_is_content():
    """A <tool_call> block that names no function is released as text."""
    text = "<tool_call>not json</tool_call>"
    assert split(text, think=False) == ("", text, [])


def test_unclosed_call_is_parsed_at_finish():
    """A call cut by the budget keeps its name and the arguments written so far."""
    text = '<tool_call>\n{"name": "f", "arguments": {"city": "Pa'
    assert split(text, think=False) == ("", "", [ParsedCall("f", '{"city": "Pa')])


def test_tool_calls_inside_reasoning_are_not_parsed():
    """Inside <think>, a call is reasoning text (vLLM does the same)."""
    text = '<think><tool_call>{"name": "f", "arguments": {}}</tool_call></think>'
    assert split(text) == ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "", [])


def test_tools_off_leaves_call_text_alone():
    """Without hermes parsing a call is content."""
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert split(text, think=False, tools=False) == ("", text, [])


def test_trusting_the_replica_stops_think_parsing():
    """Once the replica sends reasoning itself, content is never reasoning."""
    splitter = TextSplitter(think=True, tools=False, prefilled=True)
    assert splitter.trust_replica() == []
    assert splitter.feed("answer</think>") == [Text(Channel.CONTENT, "answer</think>")]
    assert not splitter.decides_reasoning


def test_idle_only_in_plain_content():
    """The splitter is idle once past the reasoning with nothing held."""
    splitter = TextSplitter(think=True, tools=True)
    assert not splitter.idle
    splitter.feed("<think>a</think>b")
    assert splitter.idle
    splitter.feed("<tool")
    assert not splitter.idle


def test_repr_shows_phase_and_hold():
    """The repr names the phase and the held text."""
    splitter = TextSplitter(think=True, tools=False)
    splitter.feed("<think>a</th")
    assert repr(splitter) == "<TextSplitter reasoning hold='</th'>"
