import re

from tera_proxy.rewrite.hermes import ParsedCall
from tera_proxy.rewrite.tools import ToolLedger, spread_entries

HEADER = {"id": "chatcmpl-tool-1", "type": "function", "index": 0, "function": {"name": "f"}}


def test_well_formed_deltas_are_unchanged():
    """vLLM's usual header and fragments need no fix."""
    ledger = ToolLedger()
    later = {"index": 0, "function": {"arguments": "{}"}}
    assert ledger.fix_deltas([HEADER]) == ([HEADER], False)
    assert ledger.fix_deltas([later]) == ([later], False)
    assert ledger.calls[0].arguments == "{}"


def test_missing_type_and_id_are_added_to_the_first_delta():
    """A first delta without type or id gets type function and a call_ id."""
    fixed, changed = ToolLedger().fix_deltas([{"index": 0, "function": {"name": "f"}}])
    assert changed
    assert fixed[0]["type"] == "function"
    assert re.fullmatch(r"call_[0-9a-f]{24}", fixed[0]["id"])


def test_later_delta_loses_type_null_and_repeated_id():
    """A catch-up delta keeps only index and arguments."""
    ledger = ToolLedger()
    ledger.fix_deltas([HEADER])
    catch_up = {"id": "chatcmpl-tool-1", "type": None, "index": 0, "function": {"arguments": "}"}}
    assert ledger.fix_deltas([catch_up]) == ([{"index": 0, "function": {"arguments": "}"}}], True)


def test_empty_later_delta_is_dropped():
    """A later delta with nothing to add disappears."""
    ledger = ToolLedger()
    ledger.fix_deltas([HEADER])
    assert ledger.fix_deltas([{"index": 0, "type": None, "function": {}}]) == ([], True)


def test_name_arriving_late_is_kept():
    """A name sent after an id-only first delta is passed on once."""
    ledger = ToolLedger()
    ledger.fix_deltas([{"id": "x", "type": "function", "index": 0, "function": {}}])
    fixed, _ = ledger.fix_deltas([{"index": 0, "function": {"name": "f", "arguments": "{"}}])
    assert fixed == [{"index": 0, "function": {"name": "f", "arguments": "{"}}]
    assert ledger.calls[0].name == "f"


def test_parsed_call_streams_header_then_arguments():
    """A proxy-parsed call: header with arguments "", then one fragment."""
    header, arguments = ToolLedger().add_parsed(ParsedCall("f", '{"a": 1}'))
    assert header["function"] == {"name": "f", "arguments": ""}
    assert header["type"] == "function" and header["index"] == 0
    assert arguments == {"index": 0, "function": {"arguments": '{"a": 1}'}}


def test_parsed_calls_follow_replica_indexes():
    """A proxy call gets the next free index."""
    ledger = ToolLedger()
    ledger.fix_deltas([HEADER])
    assert ledger.add_parsed(ParsedCall("g", ""))[0]["index"] == 1


def test_message_calls_get_ids_and_types():
    """Non-streamed calls without id or type get them."""
    calls, changed = ToolLedger().fix_message_calls(
        [{"function": {"name": "f", "arguments": "{}"}}]
    )
    assert changed and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")


def test_spread_puts_one_index_once_per_group():
    """Two entries for one index go to two frames, order kept."""
    a0, b0, a1 = {"index": 0, "n": 1}, {"index": 0, "n": 2}, {"index": 1, "n": 3}
    assert spread_entries([a0, a1, b0]) == [[a0, a1], [b0]]
    assert spread_entries([a0, b0, a1]) == [[a0], [b0, a1]]


def test_repr_lists_call_indexes():
    """The repr shows which calls exist."""
    ledger = ToolLedger()
    ledger.fix_deltas([HEADER])
    assert repr(ledger) == "<ToolLedger calls=[0]>"
