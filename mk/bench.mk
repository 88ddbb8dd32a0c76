# Benchmarks (issue 7). Included from the root Makefile (PY, VENV, BIN come from there).
# Everything the bench installs lives under var/bench/ (gitignored): a tools venv with
# aiohttp/orjson/uvloop/psutil/matplotlib for the load generator and the plots, one venv
# per Python peer, the compiled mock upstream; nginx comes from Debian. tera-proxy (on
# hypercorn, uvicorn and granian: the [servers] extra) and the bare Starlette+aiohttp peer
# run from the project's own .venv (`make venv`).
BENCH_VAR     := var/bench
BENCH_PY      := $(BENCH_VAR)/venv/bin/python
BENCH_MOCK    := $(BENCH_VAR)/bin/mockllm
# Written once every peer has been tried; `make bench` installs only when it is missing or
# the install script changed. `make bench-peers-install` always re-checks (and skips what is
# installed already; BENCH_REINSTALL=1 redoes everything).
BENCH_STAMP   := $(BENCH_VAR)/.peers-installed
BENCH_STEPS   := tools mock nginx vllm-router sglang-router litellm
BENCH_OUT     ?= bench/results
# `make bench BENCH_ARGS='--rounds 5 --seconds 20 --tera-config FILE'`
BENCH_ARGS    ?=
BENCH_TARGETS ?= direct,nginx,vllm-router,sglang-router,litellm,bare-hypercorn,bare-uvicorn,tera-minimal,tera-minimal-uvicorn,tera-all,tera-all-uvicorn,tera-all-granian

.PHONY: bench bench-quick bench-smoke bench-peers-install bench-tools bench-mock bench-load clean-bench

$(BENCH_MOCK): bench/mock/mockllm.c
	$(MAKE) -s -C bench/mock

bench-mock: $(BENCH_MOCK)

$(BENCH_PY):
	bench/install_peers.sh $(PY) tools

bench-tools: $(BENCH_PY) $(BENCH_MOCK)

$(BENCH_STAMP): bench/install_peers.sh
	bench/install_peers.sh $(PY) $(BENCH_STEPS)
	@touch $@

## Install every peer (nginx from Debian; vllm-router, sglang-router, LiteLLM from PyPI, each
## into its own var/bench/peers/ venv). A peer that fails is recorded, not fatal.
bench-peers-install:
	bench/install_peers.sh $(PY) $(BENCH_STEPS)
	@touch $(BENCH_STAMP)
	@cat $(BENCH_VAR)/install.json

## The full comparison: 3 interleaved rounds, results into bench/results/.
bench: venv $(BENCH_STAMP) $(BENCH_MOCK)
	$(BENCH_PY) -m bench.peers --targets $(BENCH_TARGETS) --out $(BENCH_OUT) $(BENCH_ARGS)

## Every target once, briefly (2 rounds of 4 s, 200 open streams): proves each starts and
## produces numbers; the figures are too short to quote.
bench-smoke: venv $(BENCH_STAMP) $(BENCH_MOCK)
	$(BENCH_PY) -m bench.peers --targets $(BENCH_TARGETS) --rounds 2 --seconds 4 --rate-seconds 4 \
		--open-streams 200 --open-hold 4 --out $(BENCH_VAR)/smoke $(BENCH_ARGS)

## A short comparison that proves the harness: direct, nginx, bare Starlette, tera-proxy.
bench-quick: venv bench-tools
	$(BENCH_PY) -m bench.peers --targets direct,nginx,bare-hypercorn,tera-minimal,tera-all \
		--rounds 3 --seconds 5 --rate-seconds 10 --open-streams 300 --open-hold 4 --out $(BENCH_OUT) $(BENCH_ARGS)

## The load generator alone against any endpoint: make bench-load URL=http://127.0.0.1:8080/v1 MODEL=m
URL   ?= http://127.0.0.1:8080/v1
MODEL ?= openai/gpt-oss-20b
LOAD_ARGS ?= --concurrency 1,4,16,64 --requests 2000 --duration 20
bench-load: bench-tools
	$(BENCH_PY) -m bench.loadgen --url $(URL) --model $(MODEL) $(LOAD_ARGS) \
		--json $(BENCH_VAR)/load.json --markdown $(BENCH_VAR)/load.md --plots $(BENCH_VAR)/load-plots

clean-bench:
	rm -rf $(BENCH_VAR)
