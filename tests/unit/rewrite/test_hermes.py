from tera_proxy.rewrite.hermes import ParsedCall, is_json_object, parse_block, repair_suffix


def test_arguments_are_dumped_like_vllm():
    """Arguments become json.dumps text, spaces included."""
    block = '{"name":"f","arguments":{"city":"Paris","n":1}}'
    assert parse_block(block, closed=True) == ParsedCall("f", '{"city": "Paris", "n": 1}')


def test_non_ascii_arguments_stay_readable():
    """No \\u escapes in the arguments."""
    block = '{"name": "f", "arguments": {"city": "Zürich"}}'
    assert parse_block(block, closed=True) == ParsedCall("f", '{"city": "Zürich"}')


def test_string_arguments_are_taken_as_written():
    """A model that writes arguments as a JSON string gets that string."""
    block = '{"name": "f", "arguments": "{\\"a\\": 1}"}'
    assert parse_block(block, closed=True) == ParsedCall("f", '{"a": 1}')


def test_missing_arguments_are_an_empty_object():
    """A call without arguments gets {}."""
    assert parse_block('{"name": "f"}', closed=True) == ParsedCall("f", "{}")


def test_parameters_key_is_accepted():
    """Some templates write "parameters" instead of "arguments"."""
    assert parse_block('{"name": "f", "parameters": {"a": 1}}', closed=True) == ParsedCall(
        "f", '{"a": 1}'
    )


def test_block_without_name_is_not_a_call():
    """JSON without a string name is no call."""
    assert parse_block('{"arguments": {}}', closed=True) is None
    assert parse_block("[1, 2]", closed=True) is None
    assert parse_block("garbage", closed=True) is None


def test_cut_block_is_salvaged():
    """A block cut mid-arguments keeps the name and the raw arguments."""
    block = '\n{"name": "get_weather", "arguments": {"city": "Pa'
    assert parse_block(block, closed=False) == ParsedCall("get_weather", '{"city": "Pa')


def test_malformed_closed_block_drops_its_own_brace():
    """In a closed but broken block, the block's closing brace is not part of the arguments."""
    block = '{"name": "f", "arguments": {"a": 1,}}'
    assert parse_block(block, closed=True) == ParsedCall("f", '{"a": 1,}')


def test_json_object_check():
    """Only the JSON text of an object is valid arguments."""
    assert is_json_object('{"a": 1}')
    assert not is_json_object("Infinity")
    assert not is_json_object("[1]")
    assert not is_json_object('{"a": ')


def test_empty_arguments_repair_to_empty_object():
    """Dropped {} of a parameterless tool (vLLM #28806) is restored."""
    assert repair_suffix("") == "{}"


def test_missing_closing_braces_are_repaired():
    """Dropped final braces (vLLM #32152) are appended."""
    assert repair_suffix('{"a": {"b": [1, 2') == "]}}"


def test_cut_string_is_not_repaired():
    """An argument cut inside a string is left alone."""
    assert repair_suffix('{"city": "Pa') is None


def test_missing_value_is_not_repaired():
    """Closing braces that would not make valid JSON are no repair."""
    assert repair_suffix('{"city": ') is None
    assert repair_suffix('{"a": 1]') is None
