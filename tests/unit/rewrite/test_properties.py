"""Any split of the upstream text into chunks gives the same client view."""

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import facts_from_request, rewrite_response
from tera_proxy.rewrite.hermes import ParsedCall
from tera_proxy.rewrite.text import Text, TextSplitter

from .assemble import assemble_message, assemble_stream
from .support import run_stream
from .vllm_shapes import REPLICA_VERSIONS, Scenario, response, stream

PARSING = RewriteProfile(parse_reasoning="think", parse_tools="hermes")
SETTINGS = settings(max_examples=300, deadline=None)

# Pieces that make tags, near-tags and calls likely when glued together at random.
SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "<think>",
            "</think>",
            "<tool_call>",
            "</tool_call>",
            '{"name": "get_weather", "arguments": {"city": "<Paris>"}}',
            '{"name": "f", "arguments": {"a": [1',
            "<",
            "</",
            "<th",
            "</tool",
            "\n",
            " ",
        ]
    ),
    st.text(alphabet='ab <>/thinkl_co"{}\n', max_size=6),
)
TEXTS = st.lists(SEGMENTS, max_size=14).map("".join)


def cut(text: str, points: list[int]) -> list[str]:
    """text cut at the given points (any order, repeats ignored)."""
    bounds = [0, *sorted({p for p in points if 0 < p < len(text)}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def splits(text: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.integers(0, max(len(text), 1)), max_size=12).map(lambda p: cut(text, p))


def pieces_of(parts: list[str], *, prefilled: bool) -> list[object]:
    splitter = TextSplitter(think=True, tools=True, prefilled=prefilled)
    out = [p for part in parts for p in splitter.feed(part)] + splitter.finish()
    merged: list[object] = []
    for piece in out:
        last = merged[-1] if merged else None
        if isinstance(piece, Text) and isinstance(last, Text) and last.channel is piece.channel:
            merged[-1] = Text(piece.channel, last.text + piece.text)
        else:
            merged.append(piece)
    return merged


@SETTINGS
@given(data=st.data(), text=TEXTS, prefilled=st.booleans())
def test_splitter_ignores_where_text_is_cut(data, text, prefilled):
    """The splitter's pieces do not depend on the cut points."""
    parts = data.draw(splits(text))
    assert pieces_of(parts, prefilled=prefilled) == pieces_of([text], prefilled=prefilled)


@SETTINGS
@given(data=st.data(), text=TEXTS, prefilled=st.booleans())
def test_splitter_loses_no_text(data, text, prefilled):
    """Outside tags and call blocks, every character comes out once, in order."""
    pieces = pieces_of(data.draw(splits(text)), prefilled=prefilled)
    if not any(isinstance(p, ParsedCall) for p in pieces) and "<think>" not in text:
        emitted = "".join(p.text for p in pieces if isinstance(p, Text))
        assert emitted == (text.replace("</think>", "", 1) if prefilled else text)


@SETTINGS
@given(data=st.data(), text=TEXTS)
def test_inline_stream_view_ignores_chunking(data, text):
    """A replica without parsers: any chunking assembles to the unchunked view and the body's."""
    scenario = Scenario(content=text, tool_choice="required")
    facts = facts_from_request("chat", scenario.request(stream=True))
    parts = data.draw(splits(text))
    chunked = assemble_stream(
        run_stream(PARSING, facts, stream(scenario, "inline", lambda _: parts))[0]
    )
    whole = assemble_stream(
        run_stream(PARSING, facts, stream(scenario, "inline", lambda t: [t] if t else []))[0]
    )
    assert chunked.key() == whole.key()
    body_facts = facts_from_request("chat", scenario.request(stream=False))
    body = rewrite_response(response(scenario, "inline"), PARSING, body_facts)[0]
    assert assemble_message(body).key() == whole.key()


@SETTINGS
@given(
    data=st.data(),
    version=st.sampled_from(REPLICA_VERSIONS),
    reasoning=st.text(min_size=1, max_size=30),
    content=st.text(max_size=30),
    city=st.text(max_size=12),
)
def test_replica_parsed_view_ignores_chunking(data, version, reasoning, content, city):
    """Reasoning, content and argument deltas cut anywhere assemble to the same view."""
    arguments = json.dumps({"city": city})
    scenario = Scenario(reasoning=reasoning, content=content, calls=(("get_weather", arguments),))
    facts = facts_from_request("chat", scenario.request(stream=True))
    points = data.draw(st.lists(st.integers(0, 40), max_size=10))
    chunked = run_stream(PARSING, facts, stream(scenario, version, lambda t: cut(t, points)))[0]
    whole = run_stream(PARSING, facts, stream(scenario, version, lambda t: [t] if t else []))[0]
    assert assemble_stream(chunked).key() == assemble_stream(whole).key()
