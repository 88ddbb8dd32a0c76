# Benchmarks (issue 7). Included from the root Makefile (PY, VENV, BIN come from there).
# Everything the bench installs lives under var/bench/ (gitignored): a tools venv with
# aiohttp/orjson/uvloop/psutil/matplotlib for the load generator and the plots, one venv
# per Python peer, the compiled mock upstream; nginx comes from Debian. The project's own
# .venv only needs tera-proxy itself.
BENCH_VAR     := var/bench
BENCH_PY      := $(BENCH_VAR)/venv/bin/python
BENCH_MOCK    := $(BENCH_VAR)/bin/mockllm
BENCH_OUT     ?= bench/results
# `make bench BENCH_ARGS='--rounds 5 --seconds 20 --tera-config config/bench-all.toml'`
BENCH_ARGS    ?=
BENCH_TARGETS ?= direct,nginx,vllm-router,sglang-router,litellm,tera-minimal

.PHONY: bench bench-quick bench-peers-install bench-tools bench-mock bench-load clean-bench

$(BENCH_MOCK): bench/mock/mockllm.c
	$(MAKE) -s -C bench/mock

bench-mock: $(BENCH_MOCK)

$(BENCH_PY):
	bench/install_peers.sh $(PY) tools

bench-tools: $(BENCH_PY) $(BENCH_MOCK)

## Install every peer (nginx from Debian; vllm-router, sglang-router, LiteLLM from PyPI, each
## into its own var/bench/peers/ venv). A peer that fails is recorded, not fatal.
bench-peers-install:
	bench/install_peers.sh $(PY) tools mock nginx vllm-router sglang-router litellm
	@cat $(BENCH_VAR)/install.json

## The full comparison: 3 interleaved rounds, results into bench/results/.
bench: venv bench-tools
	$(BENCH_PY) -m bench.peers --targets $(BENCH_TARGETS) --out $(BENCH_OUT) $(BENCH_ARGS)

## A short comparison that proves the harness: direct, nginx, tera-proxy minimal.
bench-quick: venv bench-tools
	$(BENCH_PY) -m bench.peers --targets direct,nginx,tera-minimal --rounds 3 --seconds 5 \
		--open-streams 300 --open-hold 4 --out $(BENCH_OUT) $(BENCH_ARGS)

## The load generator alone against any endpoint: make bench-load URL=http://127.0.0.1:8080/v1 MODEL=m
URL   ?= http://127.0.0.1:8080/v1
MODEL ?= openai/gpt-oss-20b
LOAD_ARGS ?= --concurrency 1,4,16,64 --requests 2000 --duration 20
bench-load: bench-tools
	$(BENCH_PY) -m bench.loadgen --url $(URL) --model $(MODEL) $(LOAD_ARGS) \
		--json $(BENCH_VAR)/load.json --markdown $(BENCH_VAR)/load.md --plots $(BENCH_VAR)/load-plots

clean-bench:
	rm -rf $(BENCH_VAR)
