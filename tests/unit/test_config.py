"""Config loading: typed, validated, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tera_proxy.cli import main
from tera_proxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict:
    return {
        "replicas": [{"name": "a", "url": "http://127.0.0.1:9001"}],
        "models": [
            {
                "id": "openai/gpt-oss-20b",
                "context_length": 131072,
                "max_output_tokens": 4096,
                "input_price_per_million": 0.07,
                "output_price_per_million": 0.25,
                "replicas": ["a"],
            }
        ],
    }


def test_minimal_config_parses_with_defaults() -> None:
    """A config with one replica and one model gets typed defaults."""
    config = parse_config(base())
    assert config.server.port == 8080
    assert config.models[0].replicas == ("a",)
    assert config.models[0].upstream_name == "openai/gpt-oss-20b"
    assert config.models[0].input_price_per_million == 0.07


def test_unknown_key_is_named() -> None:
    """A misspelt key is rejected with its full path."""
    raw = base()
    raw["models"][0]["max_output"] = 5
    with pytest.raises(ConfigError, match=r"models\[0\]\.max_output: unknown key"):
        parse_config(raw)


def test_wrong_type_is_named() -> None:
    """A value of the wrong type names the key and the type."""
    raw = base()
    raw["models"][0]["max_output_tokens"] = "4096"
    with pytest.raises(ConfigError, match=r"models\[0\]\.max_output_tokens: expected int"):
        parse_config(raw)


def test_unknown_replica_reference_is_named() -> None:
    """A model served by a replica that does not exist is rejected."""
    raw = base()
    raw["models"][0]["replicas"] = ["b"]
    with pytest.raises(ConfigError, match=r"models\[0\]\.replicas\[0\]: no replica"):
        parse_config(raw)


def test_missing_required_key_is_named() -> None:
    """A model without its context length is rejected."""
    raw = base()
    del raw["models"][0]["context_length"]
    with pytest.raises(ConfigError, match=r"models\[0\]\.context_length: required"):
        parse_config(raw)


def test_bad_literal_is_named() -> None:
    """A rewrite profile value outside its choices is rejected."""
    raw = base()
    raw["models"][0]["rewrite"] = {"reasoning_field": "thoughts"}
    with pytest.raises(ConfigError, match=r"models\[0\]\.rewrite\.reasoning_field"):
        parse_config(raw)


def test_workers_become_replicas() -> None:
    """A launched worker is also a replica a model can name."""
    raw = base()
    raw["workers"] = [{"name": "w", "kind": "sim", "port": 9100}]
    raw["models"][0]["replicas"] = ["a", "w"]
    config = parse_config(raw)
    assert [r.url for r in config.replica_configs()][-1] == "http://127.0.0.1:9100"


def test_bad_device_is_named() -> None:
    """A worker device that is neither cpu nor cuda:N is rejected."""
    raw = base()
    raw["workers"] = [{"name": "w", "kind": "vllm", "port": 9100, "model": "m", "device": "gpu"}]
    with pytest.raises(ConfigError, match=r"workers\[0\]\.device"):
        parse_config(raw)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.toml")))
def test_shipped_configs_are_valid(name: str) -> None:
    """Every config that ships in the repo passes check-config."""
    assert main(["check-config", str(ROOT / "config" / name)]) == 0


def test_check_config_reports_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config exits 1 and names the bad key."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'x'\n")
    assert main(["check-config", str(bad)]) == 1
    assert "server.port" in capsys.readouterr().err


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
