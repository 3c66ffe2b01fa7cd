# One-command setup: every target creates .venv and installs what it needs.
# TORCH selects the PyTorch build; the default is the CPU wheel. For CUDA, e.g.:
#   make test TORCH="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
DEMO_ARGS ?=
# make demo runs on the embedded default base on every machine (gpt2tune demo's own default,
# --base auto, would take a GPT-2 found in the local Hugging Face cache); DEMO_BASE=auto or a
# model directory overrides it
DEMO_BASE ?= embedded
# apt-get runs as root: directly in CI (root), through sudo elsewhere
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench mutants install browser export-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, explicitly, so nothing later pulls a multi-GB CUDA build as a dependency
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)" $(TORCH_PIP_ARGS)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[test,demo,tensorboard,serve,lint]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/gpt2tune demo --base $(DEMO_BASE) $(DEMO_ARGS)

# the playground test drives Debian's headless chromium (selenium itself never downloads a browser)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends chromium chromium-driver; }

# `gpt2tune export`'s tests load every GGUF file in llama.cpp itself (llama-cpp-python: a source
# distribution that pip builds with the machine's C++ compiler and CMake, about 10 minutes on 2
# cores the first time; pip keeps the built wheel in its cache) and render the Ollama template
# with Go's own text/template; Debian provides the compiler, CMake and Go
LLAMA_CPP ?= llama-cpp-python==0.3.36
export-tools:
	@command -v go >/dev/null && command -v cmake >/dev/null && command -v g++ >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends golang-go cmake g++; }

# built for any x86-64 with AVX2 (GGML_NATIVE=OFF), not for this CPU: pip reuses the built wheel
# from its cache on the next machine, and a native build's instructions (AMX, which a VM may
# advertise but not enable) stop the process with an illegal instruction elsewhere
$(VENV)/.llama: $(VENV)/.torch | export-tools
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet "$(LLAMA_CPP)"
	touch $@

# the linter, the formatter's check and the type checker (settings in pyproject.toml); part of
# make test, so CI enforces them. `ruff check --fix` and `ruff format` fix most of what they find
lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# two pytest-xdist workers of one torch thread each (tests/conftest.py): on 2 cores about half the
# time of one pytest process (README, Development)
test: $(VENV)/.installed browser $(VENV)/.llama lint
	$(BIN)/python -m pytest tests -n 2

bench: $(VENV)/.installed $(VENV)/.llama
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/gguf.py

# mutation testing (slow: not part of make test); PACKAGES=core limits it, e.g. make mutants PACKAGES="core serve"
PACKAGES ?=
mutants: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[mutation]"
	$(BIN)/python tools/mutation.py $(PACKAGES)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mutants
