# One entry point: every target builds .venv from nothing when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-all torch-cpu jax-cpu reproduce derivations bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,scale]'
	touch $(STAMP)

test: $(STAMP)          ## fast tests (slow and GPU tests are deselected)
	$(BIN)/python -m pytest -q

# The optional torch extra for the torch tests, pinned to a CPU build (never the CUDA wheel, which
# carries several GB of CUDA libraries); where no CPU build is at hand the torch tests skip.
TORCH_CPU ?= torch==2.13.0+cpu
torch-cpu: $(STAMP)
	$(BIN)/python -m pip install --quiet '$(TORCH_CPU)' \
	  || echo "no CPU build of torch ($(TORCH_CPU)) found: the torch tests will skip"

# The optional jax extra for the compiled theory engine (sp.theory(..., engine="jax")); jax's
# PyPI wheels are the CPU build. Where it cannot be installed tests/test_compiled.py skips.
jax-cpu: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[jax]' \
	  || echo "jax could not be installed: the compiled-engine tests will skip"

test-all: $(STAMP)      ## every test, slow ones included (GPU tests skip without a GPU)
	$(BIN)/python -m pytest -q -m ''

reproduce: $(STAMP)     ## every sim -> every figure -> paper PDF (quick profile, CPU)
	$(BIN)/sigprop reproduce --profile quick

derivations: $(STAMP)   ## run every symbolic derivation script
	$(BIN)/sigprop derive

bench: $(STAMP)
	$(BIN)/sigprop bench --out benchmarks/RESULTS.md

lint: $(STAMP)
	$(BIN)/ruff check sigprop tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .sigprop-cache paper/generated paper/figures
