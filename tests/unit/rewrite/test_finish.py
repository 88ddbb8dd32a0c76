from tera_proxy.rewrite.finish import decide_finish, needs_budget
from tera_proxy.rewrite.tools import CallRecord

GOOD = CallRecord(0, "f", ['{"a": 1}'])
CUT = CallRecord(0, "f", ['{"city": "Pa'])


def decide(upstream, calls, *, forced=None, hit=False):
    return decide_finish(upstream, calls, forced_name=forced, hit_max_tokens=hit)


def test_tool_calls_without_calls_becomes_stop():
    """vLLM's tool_calls with nothing parsed is a plain stop."""
    assert decide("tool_calls", []).reason == "stop"


def test_reason_without_calls_is_kept():
    """Without calls the engine's reason stands."""
    assert decide("length", []).reason == "length"
    assert decide("abort", []).reason == "abort"


def test_calls_make_tool_calls():
    """An emitted call turns stop into tool_calls."""
    assert decide("stop", [GOOD]).reason == "tool_calls"


def test_named_tool_makes_stop():
    """A tool forced by name finishes with stop (OpenAI)."""
    assert decide("tool_calls", [GOOD], forced="f").reason == "stop"


def test_length_is_kept_with_calls():
    """A replica's length stays length."""
    decision = decide("length", [CUT])
    assert decision.reason == "length" and decision.invalid == (0,)


def test_cut_call_at_budget_becomes_length():
    """Invalid arguments and a spent budget mean the call was cut."""
    assert decide("tool_calls", [CUT], hit=True).reason == "length"


def test_broken_call_within_budget_is_flagged():
    """Invalid arguments before the budget: tool_calls plus a warning."""
    decision = decide("tool_calls", [CallRecord(0, "f", ["Infinity"])])
    assert decision.reason == "tool_calls"
    assert decision.warning == "arguments of tool_calls[0] are not a valid JSON object"


def test_repairable_call_is_repaired_not_flagged():
    """A dropped closing brace is repaired, no warning."""
    decision = decide("tool_calls", [CallRecord(0, "f", ['{"a": 1'])])
    assert decision.repairs == ((0, "}"),) and decision.warning is None


def test_cut_call_is_not_repaired():
    """A call cut by the budget is shown as it is."""
    assert decide("length", [CallRecord(0, "f", ['{"a": 1'])]).repairs == ()


def test_budget_matters_only_for_invalid_calls():
    """The decision waits for usage only when a call looks cut."""
    assert needs_budget("tool_calls", [CUT])
    assert not needs_budget("tool_calls", [GOOD])
    assert not needs_budget("length", [CUT])
