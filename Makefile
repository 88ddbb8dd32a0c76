# tera-proxy: every target installs what it needs itself.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= config/default.toml

.PHONY: venv run run-sim test test-fast lint check-config clean system-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

## The proxy in front of its default pool: two real vLLM workers on CPU (see README).
run: venv vllm-venv tiny-models
	$(BIN)/tera-proxy serve --config $(CONFIG)

## The proxy in front of simulator workers only (no vLLM needed).
run-sim: venv
	$(BIN)/tera-proxy serve --config config/sim.toml

## Servers the tenancy tests start themselves: redis-server and PostgreSQL (Debian).
system-deps:
	@if command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; \
	then :; elif [ "$$(id -u)" = 0 ]; then \
		echo "installing redis-server and postgresql (Debian packages) for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			redis-server postgresql >/dev/null; \
	else echo "the tests need redis-server and postgresql: sudo apt-get install redis-server postgresql"; \
	fi

## The whole suite, the real-vLLM tier included. Without vLLM that tier skips and says how
## to enable it, except under CI=true, where it fails.
test: venv system-deps
	@$(MAKE) --no-print-directory vllm-venv tiny-models || \
		echo "make test: vLLM unavailable; the real-vLLM tier will skip (fail under CI=true)"
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: venv system-deps
	$(BIN)/pytest -q -p no:cacheprovider -m 'not vllm'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

check-config: venv
	$(BIN)/tera-proxy check-config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var

include mk/vllm.mk
include mk/bench.mk
