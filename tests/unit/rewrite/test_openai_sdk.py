"""The official openai SDK's stream accumulator agrees with assemble.py on rewritten streams."""

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from tera_proxy.config import RewriteProfile
from tera_proxy.rewrite import facts_from_request

from .assemble import assemble_stream
from .support import run_stream
from .vllm_shapes import VERSIONS, Scenario, stream

PARSING = RewriteProfile(parse_reasoning="think", parse_tools="hermes")
SCENARIOS = [
    Scenario(
        reasoning="Two tools.",
        content="Checking.",
        calls=(("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')),
    ),
    Scenario(reasoning="Thinking <b>hard</b>", content="Answer: 2 < 3."),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("version", VERSIONS)
def test_sdk_accumulates_the_same_completion(version, scenario):
    """ChatCompletionStreamState builds the message assemble.py sees."""
    facts = facts_from_request("chat", scenario.request(stream=True))
    out, _ = run_stream(PARSING, facts, stream(scenario, version))
    state = ChatCompletionStreamState()
    for payload in out:
        state.handle_chunk(ChatCompletionChunk.model_validate(orjson.loads(payload)))
    choice = state.get_final_completion().choices[0]
    view = assemble_stream(out)
    calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    assert calls == [(c.id, c.name, c.arguments) for c in view.tool_calls]
    assert (choice.message.content, choice.finish_reason) == (view.content, view.finish_reason)
    assert getattr(choice.message, "reasoning", None) == view.reasoning
