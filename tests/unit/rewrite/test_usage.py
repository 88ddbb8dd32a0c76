from tera_proxy.rewrite import Usage
from tera_proxy.rewrite.usage import normalise_usage_json, read_usage, settle_usage, usage_json


def test_total_is_prompt_plus_completion():
    """total_tokens is derived, never stored."""
    assert Usage(3, 4).total_tokens == 7


def test_reads_reasoning_tokens_from_details():
    """completion_tokens_details.reasoning_tokens is read when present."""
    value = {
        "prompt_tokens": 14,
        "total_tokens": 22,
        "completion_tokens": 8,
        "completion_tokens_details": {"reasoning_tokens": 8},
    }
    assert read_usage(value) == Usage(14, 8, 8)


def test_malformed_usage_is_none():
    """Missing or non-integer counts are not usage."""
    assert read_usage({"prompt_tokens": 1}) is None
    assert read_usage({"prompt_tokens": 1, "completion_tokens": True}) is None
    assert read_usage(None) is None


def test_normalise_adds_a_known_reasoning_count():
    """A count the proxy made is written into completion_tokens_details."""
    value = {
        "prompt_tokens": 1,
        "total_tokens": 3,
        "completion_tokens": 2,
        "completion_tokens_details": None,
    }
    assert normalise_usage_json(value, Usage(1, 2, 1))
    assert value["completion_tokens_details"] == {"reasoning_tokens": 1}


def test_normalise_leaves_consistent_usage_alone():
    """Nothing changes when the replica's object already says it all."""
    value = {"prompt_tokens": 1, "total_tokens": 3, "completion_tokens": 2}
    assert not normalise_usage_json(value, Usage(1, 2))


def test_settle_estimates_without_replica_usage():
    """No replica usage: the estimates, marked estimated."""
    usage = settle_usage(None, prompt_estimate=5, completion_estimate=7, reasoning_chars=None)
    assert usage == Usage(5, 7, None, estimated=True)


def test_settle_counts_split_reasoning_at_most_completion():
    """Proxy-split reasoning counts four characters a token, capped by completion_tokens."""
    usage = settle_usage(Usage(1, 3), prompt_estimate=0, completion_estimate=0, reasoning_chars=40)
    assert usage == Usage(1, 3, 3)


def test_settle_prefers_the_replica_reasoning_count():
    """A replica's own reasoning count is never replaced."""
    usage = settle_usage(
        Usage(1, 30, 2), prompt_estimate=0, completion_estimate=0, reasoning_chars=40
    )
    assert usage.reasoning_tokens == 2


def test_usage_json_has_details_only_when_known():
    """The proxy's usage object carries reasoning details only with a count."""
    assert "completion_tokens_details" not in usage_json(Usage(1, 2))
    assert usage_json(Usage(1, 2, 1))["completion_tokens_details"] == {"reasoning_tokens": 1}
